#!/bin/bash
# Ends a session's part of the six1d study: Ctrl-C (SIGINT) to the running comparison, wait until it
# has written its record and exited, then add the session's chunk to state/ (state.py save checks
# that the chunks rebuild the live store exactly). Commit state/ afterwards.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
WORK=${SIX1D_WORK:-$(dirname "$REPO")/six1d}
pid=$(pgrep -f "bnnsearch compare spaces/" | head -1 || true)
if [ -n "$pid" ]; then
    kill -INT "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then echo "the comparison (pid $pid) did not stop in 300 s" >&2; exit 1; fi
fi
python3 "$HERE/state.py" save --work "$WORK"
