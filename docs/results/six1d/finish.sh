#!/bin/bash
# After the study has ended — run.sh (the frozen code) finished every study, trained the noise
# floor and wrote its summary in <work>/out — this writes the summary again with main's compare
# from the same store (every pairwise test, the picks compared by repeat, the modelled training
# cost to target and efficiency_cost.png, which main added after the code was frozen), copies
# what the write-up reports into this folder, and prints the per-method table.
#
# Nothing trains: every study is finished, and every noise-floor re-training is in the frozen
# run's cache (out/noise_floor_runs.json), checked below before main's compare starts (a missing
# one would be trained by main's code, not the study's). The frozen run's own summary is kept in
# <work>/out-frozen. Afterwards: `stop.sh` is not needed (nothing runs); `state.py save` adds the
# last chunk (the comparison run main's compare records), then commit state/ and these files.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
WORK=${SIX1D_WORK:-$(dirname "$REPO")/six1d}
cd "$WORK"
[ -f out/summary.json ] || { echo "$WORK/out/summary.json is missing: run run.sh until the comparison ends (every study, the noise floor, its summary)" >&2; exit 2; }
"$REPO/.venv/bin/python" - <<'EOF'
import hashlib, json, sys
s = json.load(open("out/summary.json"))
cache = json.load(open("out/noise_floor_runs.json"))
missing = []
for arm, st in s["methods"].items():
    text = st["best_config"]
    sha = hashlib.sha256(text.encode()).hexdigest()[:16]
    base = int(next((l.split(":", 1)[1] for l in text.splitlines() if l.startswith("seed:")), "0"))
    missing += [f"{arm} seed {base + 1000 * k}" for k in range(1, 6) if f"{sha}:{base + 1000 * k}:{s['metric']}" not in cache]
if missing:
    sys.exit("noise-floor re-trainings missing from out/noise_floor_runs.json (main's compare would train them): "
             + ", ".join(missing))
print(f"every arm's 5 noise-floor re-trainings are cached ({len(s['methods'])} arms)")
EOF
[ -d out-frozen ] || cp -r out out-frozen
PYTHONPATH= "$REPO/.venv/bin/bnnsearch" compare spaces/{latent,filtered,hbnn,cyclebnn,proxconnect,local_binary}.yaml \
    --repeats 10 --trials 25 --sampler tpe --startup-trials 5 --random-arm --target-gap 0.9 --noise-seeds 5 \
    --concurrency 2 --out out --tracking-uri sqlite:///six1d.db --storage runs --name six1d --resume
for f in summary.md summary.json curves.csv efficiency.png efficiency_cost.png trials_to_target.png dashboard.html; do
    cp "out/$f" "$HERE/$f"
done
"$REPO/.venv/bin/python" "$REPO/docs/results/method_table.py" "$HERE"
