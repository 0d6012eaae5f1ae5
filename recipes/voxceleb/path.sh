# The environment of the recipe, sourced by run.sh: make `speakertrip` (and `torchrun`) reachable.
# Edit to suit, e.g.:  . /opt/venvs/speakertrip/bin/activate
command -v speakertrip > /dev/null ||
  die "speakertrip is not on PATH: pip install speakertrip, or activate its environment in ${BASH_SOURCE[0]}"
