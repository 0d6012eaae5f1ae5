#!/usr/bin/env bash
# CN-Celeb recipe: train on CN-Celeb1 dev + CN-Celeb2, test on CN-Celeb1 eval (CNC-Eval), cosine and AS-norm.
#
# usage: recipes/cnceleb/run.sh --cnceleb1 DIR [--cnceleb2 DIR] [options] [--section.key=value ...]
#
# Stages (run from the folder that is to hold data/ and exp/):
#   1 prepare  CN-Celeb1 (+ CN-Celeb2 as training data) -> data/cnceleb: train.jsonl, eval.jsonl,
#              trials/CNC-Eval.lst (keyed by enrolment id) and the enrolment maps enroll_{concat,avg}.map
#   2 train    speakertrip train CONFIG (torchrun when --gpus > 1); a stopped run continues (--resume)
#   3 average  the last snapshots into EXP/model
#   4 embed    the evaluation files and the training set (the cohort) into EXP/embeddings/
#   5 score    per enrolment protocol (concat: the released enrolment files; avg: the utterances
#              they were cut from, when eval/lists/enroll.map exists), cosine and AS-norm against
#              the means of the training speakers; an enrolment scores with the mean of its files
#   6 report   EER and minDCF(0.01) rows in EXP/results.md, DET curves in EXP/det.png
# A re-run skips every step already done with the same command; see recipes/lib/stages.sh.
#
# Options:
#   --stage N --stop-stage M   run stages N..M (default 1..6)
#   --config FILE              training config (default conf/ecapa_triplet.yaml, next to this script)
#   --exp DIR                  experiment folder (default exp/<config name>; --train.exp_dir=DIR also sets it)
#   --gpus N                   GPUs to train and embed on (default 1; N > 1 runs torchrun)
#   --cnceleb1 DIR             CN-Celeb1 (data/, dev/dev.lst, eval/) for stage 1
#   --cnceleb2 DIR             CN-Celeb2 (data/<spk>/), extra training data (optional)
#   --average N                snapshots to average in stage 3 (default: the config's train.average_last)
#   --top-n K                  AS-norm cohort scores per side (default 300)
#   --section.key=value        any other option is a config override for `speakertrip train`, e.g.
#                              --augment=null (no MUSAN/RIRS_NOISES), --optim.lr=1e-3; see `speakertrip train -h`
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/stages.sh
. "$recipe_dir/../lib/stages.sh"

stage=1 stop_stage=6 config=conf/ecapa_triplet.yaml exp= gpus=1 average= top_n=300
cnceleb1= cnceleb2=
options="stage stop_stage config exp gpus cnceleb1 cnceleb2 average top_n"
parse_options "$@"
# shellcheck source=path.sh
. "$recipe_dir/path.sh"
config_name=$(basename "$config" .yaml)
data=data/cnceleb

if selected 1 "prepare CN-Celeb"; then
  [[ -n $cnceleb1 ]] || die "stage 1 needs --cnceleb1 DIR (the CN-Celeb1 folder)"
  step "$data/.done" -- speakertrip prepare cnceleb --root "$cnceleb1" ${cnceleb2:+--cnceleb2 "$cnceleb2"} \
    --out "$data"
fi

if selected 2 "train $exp"; then
  train_stage
fi

if selected 3 "average the last snapshots into $exp/model"; then
  average_stage
fi

if selected 4 "embed the evaluation set and the training cohort"; then
  embed_stage cnceleb_eval "$data/eval.jsonl"
  embed_stage cnceleb_train "$data/train.jsonl"
fi

protocols=concat
if [[ -f $data/enroll_avg.map ]]; then protocols+=" avg"; fi

if selected 5 "score CNC-Eval, enrolment by $protocols (cosine, AS-norm top $top_n)"; then
  for protocol in $protocols; do
    name=CNC-Eval-$protocol
    enrolment=(--enroll-map "$data/enroll_$protocol.map")
    score_stage "$name.cosine" "$data/trials/CNC-Eval.lst" "$exp/embeddings/cnceleb_eval.npz" "${enrolment[@]}"
    score_stage "$name.asnorm" "$data/trials/CNC-Eval.lst" "$exp/embeddings/cnceleb_eval.npz" "${enrolment[@]}" \
      --norm asnorm --cohort "$exp/embeddings/cnceleb_train.npz" --cohort-speaker-means --top-n "$top_n"
  done
fi

if selected 6 "report"; then
  rows=()
  for protocol in $protocols; do rows+=("$config_name, CNC-Eval $protocol:CNC-Eval-$protocol.cosine:CNC-Eval-$protocol.asnorm"); done
  report_stage "${rows[@]}"
fi
