#!/bin/bash
# The six-method MNIST-1D study (issue #12). Resumable: rerun this script; Ctrl-C stops it cleanly.
# Runs the code frozen in ./code (a git worktree of /work/main at a fixed commit), so that work on
# /work/main does not change the study's training mid-way: PYTHONPATH puts it before the editable install.
cd "$(dirname "$0")"
export PYTHONPATH=$PWD/code
exec /work/main/.venv/bin/bnnsearch compare spaces/{latent,filtered,hbnn,cyclebnn,proxconnect,local_binary}.yaml \
    --repeats 10 --trials 25 --sampler tpe --startup-trials 5 --random-arm --target-gap 0.9 --noise-seeds 5 \
    --concurrency 2 --out out --tracking-uri sqlite:///six1d.db --storage runs --name six1d --resume
