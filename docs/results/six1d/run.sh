#!/bin/bash
# The six-method MNIST-1D study (issue #12). Resumable: rerun this script; Ctrl-C stops it cleanly.
#
# The study lives in a work folder outside the repository (default: six1d beside the checkout;
# SIX1D_WORK overrides). On a fresh machine this script rebuilds it from what the repository holds:
#  - ./code, a git worktree of the frozen training code (commit CODE below), put first on PYTHONPATH
#    so that later work on the repository does not change the study's trials mid-way;
#  - the store (MLflow SQLite + artifacts, the interrupted study's Ray state, the noise-floor
#    cache) from the chunks in state/, which `state.py save --work <work folder>` adds at the end
#    of each session (after Ctrl-C; the machine's disk does not outlive a session).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
WORK=${SIX1D_WORK:-$(dirname "$REPO")/six1d}
CODE=784fcf524a8a374ebdbacc59602019b5c3ed8e4a
mkdir -p "$WORK"
cd "$WORK"
if [ ! -d code ]; then
    git -C "$REPO" worktree prune  # a worktree registered here before but gone (a moved work folder)
    git -C "$REPO" worktree add --detach "$WORK/code" "$CODE"
fi
[ "$(git -C code rev-parse HEAD)" = "$CODE" ] || { echo "$WORK/code is not at $CODE" >&2; exit 2; }
rm -rf spaces && cp -r "$HERE/spaces" spaces
if [ ! -e six1d.db ] && compgen -G "$HERE/state/chunk-*.tar.xz" > /dev/null; then
    echo "restoring the store from $HERE/state/"
    python3 "$HERE/state.py" restore --work "$WORK"
fi
export PYTHONPATH=$WORK/code
exec "$REPO/.venv/bin/bnnsearch" compare spaces/{latent,filtered,hbnn,cyclebnn,proxconnect,local_binary}.yaml \
    --repeats 10 --trials 25 --sampler tpe --startup-trials 5 --random-arm --target-gap 0.9 --noise-seeds 5 \
    --concurrency 2 --out out --tracking-uri sqlite:///six1d.db --storage runs --name six1d --resume "$@"
