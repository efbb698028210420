#!/usr/bin/env bash
# Figure 8 revisited (issue #12): the base protocol at 20 repeats and five ablations at
# 10 repeats each, every one 25 BoTorch trials per study with the same seeds. Resumable: rerun the
# same script after an interrupt (Ctrl-C, a killed session) and finished studies are skipped.
#   STORE=/path/to/store bash docs/results/fig8r/run.sh [base|e30|val4k|ax|wide|mi ...]
# Costs on the 2-core CPU of the development machine: see README.md here.
set -euo pipefail
repo=$(realpath "$(dirname "$0")/../../..")
STORE=$(realpath -m "${STORE:-$repo/runs/fig8r}")  # a relative STORE: from where the script is run
cd "$repo"
S=docs/results/fig8r/spaces
BNN=${BNN:-.venv/bin/bnnsearch}
mkdir -p "$STORE"
common=(--trials 25 --sampler botorch --target-gap 0.9 --tracking-uri "sqlite:///$STORE/mlflow.db"
        --storage "$STORE/ray" --resume)
run() {  # name repeats latent-space filtered-space [extra flags]
  local name=$1 reps=$2 lat=$3 fil=$4; shift 4
  "$BNN" compare "$S/$lat" "$S/$fil" --repeats "$reps" --name "$name" --out "$STORE/out/$name" "${common[@]}" "$@"
}
for what in "${@:-base e30 val4k ax wide mi}"; do
  for w in $what; do
    case $w in
      base)  run fig8r       20 latent.yaml       filtered.yaml       --startup-trials 5 --noise-seeds 5 ;;
      e30)   run fig8r-e30   10 latent_e30.yaml   filtered_e30.yaml   --startup-trials 5 ;;
      val4k) run fig8r-val4k 10 latent_val4k.yaml filtered_val4k.yaml --startup-trials 5 ;;
      ax)    run fig8r-ax    10 latent.yaml       filtered.yaml       --startup-trials ax ;;
      wide)  run fig8r-wide  10 latent_wide.yaml  filtered.yaml       --startup-trials 5 ;;
      mi)    run fig8r-mi    10 latent_mi.yaml    filtered.yaml       --startup-trials 5 ;;
      *) echo "unknown condition $w (base, e30, val4k, ax, wide, mi)" >&2; exit 2 ;;
    esac
  done
done
