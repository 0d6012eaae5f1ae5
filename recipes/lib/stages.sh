# Stages shared by the speakertrip recipes: options, resumable steps, train/average/embed/score/report.
#
# Sourced by recipes/<corpus>/run.sh after it has set its option defaults and listed them in
# `options`; not run by itself. Every step is a `speakertrip` command. A step records the command
# it ran in a stamp file; a re-run skips it while the stamp holds the same command and none of the
# step's inputs is newer, so a changed config, override or upstream product redoes what depends
# on it, and nothing else. Stamps live with what the step made: <out>/.done, <exp>/.done/<step>.

# ---------------------------------------------------------------------------------------- messages
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 2; }
# as_arguments ARG ...: " ARG ARG" as a shell reads them back, quoted only where needed
as_arguments() {
  local argument
  for argument in "$@"; do
    if [[ $argument =~ ^[A-Za-z0-9_./=+:,@%-]+$ ]]; then
      printf ' %s' "$argument"
    else
      printf " '%s'" "${argument//\'/\'\\\'\'}"
    fi
  done
}
quoted() { local text; text=$(as_arguments "$@"); printf '%s' "${text# }"; }

# usage: the comment block at the top of the recipe's run.sh
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }

# ----------------------------------------------------------------------------------------- options
# parse_options "$@": --name VALUE or --name=VALUE sets the recipe variable `name` (dashes become
# underscores; only those listed in `options`). Any other --section.key=value, --section=null or
# --path+={...} is a config override handed to `speakertrip train` as it is.
overrides=()
parse_options() {
  local argument name value variable
  while (( $# )); do
    argument=$1
    case $argument in
      -h | --help) usage; exit 0 ;;
      --*=*) name=${argument%%=*}; value=${argument#*=}; shift ;;
      --*) name=$argument; (( $# >= 2 )) || die "$argument needs a value"; value=$2; shift 2 ;;
      *) die "unexpected argument '$argument' (see --help)" ;;
    esac
    variable=${name#--}
    variable=${variable//-/_}
    if [[ " $options " == *" $variable "* ]]; then
      printf -v "$variable" '%s' "$value"
    elif [[ $argument == --*=* ]]; then
      overrides+=("$argument")
    else
      local listed=${options//_/-}
      die "unknown option $name; recipe options: --${listed// / --}; config overrides are --section.key=value"
    fi
  done
  [[ $stage =~ ^[0-9]+$ && $stop_stage =~ ^[0-9]+$ ]] || die "--stage and --stop-stage take stage numbers"
  [[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus takes a number of GPUs (1 or more), got '$gpus'"
  [[ -z $average || $average =~ ^[1-9][0-9]*$ ]] || die "--average takes a number of snapshots, got '$average'"
  # the command a results row names: what decides its numbers
  invocation="recipes/${recipe_dir##*/}/run.sh --config $(quoted "$config")${exp:+ --exp $(quoted "$exp")}"
  invocation+=${average:+ --average $average}
  if [[ $top_n != 300 ]]; then invocation+=" --top-n $top_n"; fi
  invocation+=$(as_arguments "${overrides[@]}")
  if [[ ! -f $config && -f $recipe_dir/$config ]]; then config=$recipe_dir/$config; fi
  [[ -f $config ]] || die "--config $config: no such file"
  exp=${exp:-exp/$(basename "$config" .yaml)}
  local override
  for override in "${overrides[@]}"; do  # speakertrip train takes the last exp_dir; so do we
    if [[ $override == --train.exp_dir=* ]]; then exp=${override#*=}; fi
  done
}

# selected N NAME: whether stage N lies in --stage .. --stop-stage (and if so, say it starts)
selected() {
  (( stage <= $1 && $1 <= stop_stage )) || return 1
  log "stage $1: $2"
}

# ------------------------------------------------------------------------------------------- steps
# is_done STAMP [INPUT ...] -- COMMAND ...: STAMP holds COMMAND and no INPUT that exists is newer.
is_done() {
  local stamp=$1 input
  shift
  [[ -f $stamp ]] || return 1
  while [[ $1 != -- ]]; do
    input=$1
    shift
    if [[ $input -nt $stamp ]]; then return 1; fi
  done
  shift
  [[ $(<"$stamp") == "$(quoted "$@")" ]]
}

# mark_done STAMP COMMAND ...
mark_done() {
  local stamp=$1
  shift
  mkdir -p "$(dirname "$stamp")"
  quoted "$@" > "$stamp"
}

# step STAMP [INPUT ...] -- COMMAND ...: run COMMAND unless is_done says it already ran.
step() {
  local stamp=$1 inputs=()
  shift
  while [[ $1 != -- ]]; do inputs+=("$1"); shift; done
  shift
  if is_done "$stamp" "${inputs[@]}" -- "$@"; then
    log "done before, skipped: $(quoted "$@")"
    return 0
  fi
  log "\$ $(quoted "$@")"
  "$@"
  mark_done "$stamp" "$@"
}

# launch COMMAND ...: `speakertrip COMMAND ...`, one process per GPU under torchrun when --gpus > 1
launch() {
  if (( gpus > 1 )); then
    command -v torchrun > /dev/null || die "--gpus $gpus runs torchrun, which is not on PATH (it comes with PyTorch)"
    torchrun --standalone --nproc_per_node "$gpus" -m speakertrip "$@"
  else
    speakertrip "$@"
  fi
}

# ------------------------------------------------------------------------------------------ stages
# train_stage: `speakertrip train CONFIG OVERRIDES`; a stopped run (checkpoints/last.pt) continues
# with --resume, a finished one with the same config and overrides is skipped, and a finished one
# with other settings is left alone (an error says what to do).
train_stage() {
  local command=(launch train "$config" "--train.exp_dir=$exp" "${overrides[@]}")
  local stamp=$exp/.done/train
  if is_done "$stamp" "$config" -- "${command[@]}"; then
    log "done before, skipped: training of $exp"
    return 0
  fi
  if [[ -f $stamp ]]; then
    die "$exp holds a finished run made by other settings (see $stamp, or the config is newer); choose another" \
      "--exp, or delete $stamp to continue that run with these settings"
  fi
  local resume=()
  if [[ -f $exp/checkpoints/last.pt ]]; then
    log "continuing the run in $exp from checkpoints/last.pt"
    resume=(--resume)
  fi
  log "\$ $(quoted "${command[@]}" "${resume[@]}")"
  "${command[@]}" "${resume[@]}"
  mark_done "$stamp" "${command[@]}"
}

# average_stage: average the last --average snapshots (default: the config's train.average_last)
# into EXP/model, validate it on the config's dev trials and record its thresholds.
average_stage() {
  step "$exp/.done/average" "$exp/checkpoints/last.pt" -- \
    speakertrip average "$exp" ${average:+--last "$average"}
}

# embed_stage NAME MANIFEST: EXP/embeddings/NAME.npz from the averaged model
embed_stage() {
  step "$exp/.done/embed_$1" "$exp/model" "$2" -- \
    launch embed --model "$exp/model" --data "$2" --out "$exp/embeddings/$1.npz"
}

# score_stage NAME TRIALS STORE [SCORE OPTION ...]: EXP/scores/NAME.txt (and its metrics table)
score_stage() {
  local name=$1 trials=$2 store=$3
  shift 3
  local inputs=("$trials" "$store")
  local option
  for option in "$@"; do if [[ -e $option ]]; then inputs+=("$option"); fi; done  # cohorts, maps
  step "$exp/.done/score_$name" "${inputs[@]}" -- \
    speakertrip score --trials "$trials" --embeddings "$store" --out "$exp/scores/$name.txt" "$@"
}

# metric JSON SYSTEM KEY: the EER ("eer") or minDCF at P_target 0.01 ("min_dcf") of SYSTEM (a score
# file) in the output of `speakertrip metrics SYSTEM ... --json` for two or more systems
metric() {
  awk -v start="  \"$2\": {" -v key="$3" '
    $0 == start { inside = 1; next }
    inside && /^  }/ { exit }
    inside && key == "eer" && /^    "eer": / { print $2 + 0; exit }
    inside && key == "min_dcf" && /^    "min_dcf": [{]/ { dcf = 1; next }
    inside && dcf && /^      "0.01": / { print $2 + 0; exit }' "$1"
}

# result_cells JSON SCORES ...: "EER | minDCF" of each score file, from `speakertrip metrics --json`
result_cells() {
  local json=$1 scores eer dcf cells=
  shift
  for scores in "$@"; do
    eer=$(metric "$json" "$scores" eer)
    dcf=$(metric "$json" "$scores" min_dcf)
    [[ -n $eer && -n $dcf ]] || die "$json: no EER or minDCF(0.01) of $scores"
    cells+=${cells:+ | }$(awk -v eer="$eer" -v dcf="$dcf" 'BEGIN { printf "%.2f | %.4f", 100 * eer, dcf }')
  done
  printf '%s' "$cells"
}

# report_stage LABEL:COSINE:ASNORM ...: one results-table row per LABEL in EXP/results.md, from the
# score files EXP/scores/{COSINE,ASNORM}.txt, ending with the recipe command that made it. Also
# writes the metrics of every score file (EXP/metrics.json) and their DET curves (EXP/det.png).
report_stage() {
  local row label cosine asnorm cells systems=() rows=()
  for row in "$@"; do
    IFS=: read -r label cosine asnorm <<< "$row"
    systems+=("$exp/scores/$cosine.txt" "$exp/scores/$asnorm.txt")
  done
  if ! is_done "$exp/.done/report" "${systems[@]}" -- report "$invocation" "$@"; then
    log "\$ speakertrip metrics $(quoted "${systems[@]}") --json --det $exp/det.png > $exp/metrics.json"
    speakertrip metrics "${systems[@]}" --json --det "$exp/det.png" > "$exp/metrics.json"
    for row in "$@"; do
      IFS=: read -r label cosine asnorm <<< "$row"
      cells=$(result_cells "$exp/metrics.json" "$exp/scores/$cosine.txt" "$exp/scores/$asnorm.txt")
      rows+=("| $label | $cells | \`$invocation\` |")
    done
    {
      echo "| config | EER (%) | minDCF(0.01) | EER (%) + AS-norm | minDCF(0.01) + AS-norm | command |"
      echo "|---|---|---|---|---|---|"
      printf '%s\n' "${rows[@]}"
    } > "$exp/results.md"
    mark_done "$exp/.done/report" report "$invocation" "$@"
  fi
  log "results, $exp/results.md:"
  cat "$exp/results.md"
}
