"""Per-trial overhead of a study (Ray Tune + Optuna + MLflow) against running the same trainable
in-process, in one run. Tiny trials (a small MLP on digits, 1 epoch) make the fixed cost visible.

    python benchmarks/study_overhead.py [--trials 12]

Two studies of different sizes (trials/3 and trials) give the marginal cost of one more trial
(the per-trial overhead) apart from the fixed cost of a study (MLflow store, searcher, parent
run); ray.init is timed separately. Prints seconds per trial for both paths and the ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--checkpoint-s", type=float, default=30.0, help="as bnnsearch sweep --checkpoint-s")
    args = ap.parse_args()
    import optuna
    import ray

    from bnnsearch.engine import fit
    from bnnsearch.spaces import load_space
    from bnnsearch.sweep import SweepArgs, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "space.yaml"
        p.write_text(yaml.safe_dump({
            "method": "filtered", "objective": {"metric": "val/acc", "mode": "max"},
            "fixed": {"arch": "mlp", "arch_args": {"widths": [32, 32, 32]}, "data": "digits", "epochs": args.epochs,
                      "batch_size": 64, "device": "cpu", "data_root": tmp, "threads": 1},
            "params": {"alpha": {"float": [1e-4, 1e-1], "log": True}, "gamma": {"float": [0.01, 1.0], "log": True}}}))
        space = load_space(p)
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        fit(space.config({"alpha": 1e-3, "gamma": 0.1}))  # warm caches (dataset, imports) for a fair in-process time
        t0 = time.perf_counter()
        for _ in range(args.trials):
            t = study.ask(space.distributions())
            study.tell(t, fit(space.config(t.params)).final["val/acc"])
        inproc = (time.perf_counter() - t0) / args.trials
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        init_s = time.perf_counter() - t0
        walls = {}
        small = max(3, args.trials // 3)
        for n in (2, small, args.trials):  # the first (2 trials) only warms up: DB schema, worker imports
            t0 = time.perf_counter()
            run_sweep(SweepArgs(space=space, trials=n, sampler="random", concurrency=1, quiet=True, name=f"n{n}-{len(walls)}",
                                checkpoint_s=args.checkpoint_s,
                                storage=f"{tmp}/runs", tracking_uri=f"sqlite:///{tmp}/mlflow.db"))
            walls[n] = time.perf_counter() - t0
        ray.shutdown()
    study_s = (walls[args.trials] - walls[small]) / (args.trials - small)
    fixed = walls[small] - small * study_s
    print(f"trials of {args.epochs} epoch(s) on digits, 1 CPU per trial, one at a time, checkpoint every "
          f"{args.checkpoint_s:g} s")
    print(f"in-process (engine.fit + Optuna):      {inproc:6.3f} s/trial")
    print(f"study (Ray Tune + Optuna + MLflow):    {study_s:6.3f} s/trial   (marginal, from {small} and {args.trials} trials)")
    print(f"ratio study / in-process:              {study_s / inproc:6.2f}x   overhead {study_s - inproc:.3f} s/trial")
    print(f"fixed cost per study: {fixed:.1f} s;  ray.init once per process: {init_s:.1f} s")


if __name__ == "__main__":
    main()
