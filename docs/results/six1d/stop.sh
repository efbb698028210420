#!/bin/bash
# Ends a session's part of the six1d study: Ctrl-C (SIGINT) to the running comparison, wait until it
# has written its record and exited, then add the session's chunk to state/ (state.py save checks
# that the chunks rebuild the live store exactly). Commit state/ afterwards.
#
# With SIX1D_BOUNDARY_WAIT=S (seconds) it first waits, up to S, for the next study to start (a
# new folder in the work folder's runs/) and stops right then: the study just finished needs no
# Ray files in the chunk, and the one just started has no checkpoints yet, so the chunk carries
# rows only instead of the running trials' checkpoints (2-4 MB). Studies start every 2-15 minutes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
WORK=${SIX1D_WORK:-$(dirname "$REPO")/six1d}
pid=$(pgrep -f "bnnsearch compare spaces/" | head -1 || true)
if [ -n "$pid" ]; then
    wait_s=${SIX1D_BOUNDARY_WAIT:-0}
    if [ "$wait_s" -gt 0 ]; then
        before=$(ls "$WORK/runs" 2>/dev/null | sort)
        for _ in $(seq $((wait_s / 5))); do
            [ "$(ls "$WORK/runs" 2>/dev/null | sort)" != "$before" ] && { echo "a new study started: stopping"; break; }
            sleep 5
        done
    fi
    kill -INT "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then echo "the comparison (pid $pid) did not stop in 300 s" >&2; exit 1; fi
fi
python3 "$HERE/state.py" save --work "$WORK"
