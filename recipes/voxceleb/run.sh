#!/usr/bin/env bash
# VoxCeleb recipe: train on VoxCeleb2 dev, test on VoxCeleb1-O (cleaned), cosine and AS-norm scoring.
#
# usage: recipes/voxceleb/run.sh --vox1 DIR --vox2 DIR [options] [--section.key=value ...]
#
# Stages (run from the folder that is to hold data/ and exp/):
#   1 prepare  VoxCeleb1 -> data/vox1 (manifests, Vox1-O/E/H lists); VoxCeleb2 dev m4a -> wav (--vox2-wav)
#              -> data/vox2
#   2 train    speakertrip train CONFIG (torchrun when --gpus > 1); a stopped run continues (--resume)
#   3 average  the last snapshots into EXP/model, validated on Vox1-O, thresholds recorded
#   4 embed    Vox1 test speakers and the VoxCeleb2 cohort into EXP/embeddings/
#   5 score    cosine, and AS-norm against the means of the VoxCeleb2 speakers (--top-n)
#   6 report   EER and minDCF(0.01) as a results-table row in EXP/results.md, DET curves in EXP/det.png
# A re-run skips every step already done with the same command; see recipes/lib/stages.sh.
#
# Options:
#   --stage N --stop-stage M   run stages N..M (default 1..6)
#   --config FILE              training config (default conf/ecapa_triplet.yaml, next to this script)
#   --exp DIR                  experiment folder (default exp/<config name>; --train.exp_dir=DIR also sets it)
#   --gpus N                   GPUs to train and embed on (default 1; N > 1 runs torchrun)
#   --vox1 DIR                 VoxCeleb1 (wav/idNNNNN/..., with veri_test2.txt) for stage 1
#   --vox2 DIR                 VoxCeleb2 dev (dev/aac/idNNNNN/.../*.m4a, or already wav) for stage 1
#   --vox2-wav DIR             where the converted VoxCeleb2 wav go (default data/vox2_wav; ~300 GB)
#   --trials "NAME ..."        Vox1 lists to score (default veri_test2; also list_test_all2 list_test_hard2)
#   --average N                snapshots to average in stage 3 (default: the config's train.average_last)
#   --top-n K                  AS-norm cohort scores per side (default 300)
#   --section.key=value        any other option is a config override for `speakertrip train`, e.g.
#                              --augment=null (no MUSAN/RIRS_NOISES), --optim.lr=1e-3; see `speakertrip train -h`
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/stages.sh
. "$recipe_dir/../lib/stages.sh"

stage=1 stop_stage=6 config=conf/ecapa_triplet.yaml exp= gpus=1 average= top_n=300
vox1= vox2= vox2_wav=data/vox2_wav trials=veri_test2
options="stage stop_stage config exp gpus vox1 vox2 vox2_wav trials average top_n"
parse_options "$@"
# shellcheck source=path.sh
. "$recipe_dir/path.sh"
config_name=$(basename "$config" .yaml)

if selected 1 "prepare VoxCeleb1 and VoxCeleb2"; then
  [[ -n $vox1 && -n $vox2 ]] || die "stage 1 needs --vox1 DIR and --vox2 DIR (the corpus folders)"
  step data/vox1/.done -- speakertrip prepare voxceleb --root "$vox1" --out data/vox1
  vox2_root=$vox2
  if [[ -n $(find "$vox2" -name '*.m4a' -print -quit) ]]; then  # VoxCeleb2 as released: AAC in m4a
    step "$vox2_wav/.done" -- speakertrip convert "$vox2" --out "$vox2_wav"
    vox2_root=$vox2_wav
  fi
  step data/vox2/.done -- speakertrip prepare voxceleb --root "$vox2_root" --out data/vox2
fi

if selected 2 "train $exp"; then
  train_stage
fi

if selected 3 "average the last snapshots into $exp/model"; then
  average_stage
fi

# Vox1-E/H span all of VoxCeleb1: their embeddings come from every Vox1 utterance
vox1_set=test
if [[ $trials == *list_test* ]]; then vox1_set=utts; fi

if selected 4 "embed Vox1 ($vox1_set) and the VoxCeleb2 cohort"; then
  embed_stage "vox1_$vox1_set" "data/vox1/$vox1_set.jsonl"
  embed_stage vox2_dev data/vox2/utts.jsonl
fi

if selected 5 "score $trials (cosine, AS-norm top $top_n)"; then
  for name in $trials; do
    list=data/vox1/trials/$name.txt
    store=$exp/embeddings/vox1_$vox1_set.npz
    score_stage "$name.cosine" "$list" "$store"
    score_stage "$name.asnorm" "$list" "$store" --norm asnorm --cohort "$exp/embeddings/vox2_dev.npz" \
      --cohort-speaker-means --top-n "$top_n"
  done
fi

if selected 6 "report"; then
  rows=()
  for name in $trials; do rows+=("$config_name, $name:$name.cosine:$name.asnorm"); done
  report_stage "${rows[@]}"
fi
