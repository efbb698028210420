"""Packed trials against the same configurations trained one after another, in one process.

For each setting, K configurations of one method (log-spaced learning rates or alphas, so the
members really differ) are trained (a) one after another with ``engine.fit``, (b) as one pack
with ``engine.fit_pack``, in the same warm process, for the same epochs. Printed: the summed
median epoch seconds of the K lone runs, the median epoch seconds of the pack, and their ratio
(> 1: the pack is faster). The first epoch is dropped as warm-up. The last line is the
headline: ``packed speedup at K=8 (mlp 64x3, digits, cpu)``. Before it, local_binary's own net
(local_mlp 525x2 on mnist5k, batch 10 and 100, K=8): its CPU pack (members one after another)
and its stacked step forced on the CPU (``STACK_ON_CPU``), the measurement behind training its
CPU packs one after another (``LocalBinary.pack_model``).

    python benchmarks/packed.py                  # CPU settings (a few minutes on 2 cores)
    python benchmarks/packed.py --gpu            # + vgg_small and resnet20, CIFAR-shaped tensors, bf16
    python benchmarks/packed.py --gpu-only       # those alone, K up to 32 (benchmarks/device_check.sh)
    python benchmarks/packed.py --quick          # K in {1, 8}, one method: a smoke run
    python benchmarks/packed.py --study          # + a 32-trial study, --pack 8 against --pack 1

``--study`` runs pairs of real studies (Ray Tune local, random sampler, MLflow on SQLite; mlp 64x3 on
digits with 10 and with 40 epochs, mlp 128x3 on mnist1d with 20) with the same seed, one packed by 8
and one not, and prints the wall-clock ratio: everything a study pays per trial (Ray actors, MLflow runs, cost tables) included. A
2-trial warm-up study on the same store runs first, untimed: what a process pays once (imports,
opening the MLflow store, Ray's worker pool) would otherwise fall on whichever study runs first.
The wall clock of such short studies varies by ~15 % run to run on 2 cores: ``--study-repeats``
pairs (default 3, the order within a pair alternating) and their median ratio are printed, with
the driver's own CPU seconds per study.

``--study-long`` runs the digits pairs with 160-epoch trials: where the per-study start-up
(Ray's worker processes importing Ray and torch, about 5 CPU s each) has been paid off and the
driver's per-epoch MLflow record is what remains beside training.

``--study-bound`` then runs the 40-epoch digits pairs again with the trials' per-epoch metrics
not written to MLflow (everything else recorded as usual): a counterfactual that bounds what
the per-epoch record costs the ratio, not a mode of bnnsearch.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
from pathlib import Path

import torch

from _common import cifar_shaped_npz, median_tail

from bnnsearch.config import resolve
from bnnsearch.engine import fit, fit_pack

# The hyperparameter each method's members differ in, and its range (log-spaced over K).
VARY = {"latent": ("lr", 0.3, 30.0), "filtered": ("alpha", 1e-4, 1e-1), "proxconnect": ("lr", 1e-4, 1e-2),
        "cyclebnn": ("lr", 1e-4, 1e-2), "hbnn": ("lr", 0.01, 1.0), "local_binary": ("p_r", 0.05, 0.9)}


def member_cfgs(base: dict, method: str, k: int):
    key, lo, hi = VARY[method]
    vals = [lo * (hi / lo) ** (i / max(k - 1, 1)) for i in range(k)]
    return [resolve({**base, "method": method, "hparams": {key: v}}) for v in vals]



def bench(label: str, base: dict, method: str, k: int, lone: int | None = None) -> float:
    """With ``lone``, only that many members (spread over the K) are trained alone and the one-
    after-another time is K times their mean (a member's cost does not depend on its learning
    rate); the line says so."""
    cfgs = member_cfgs(base, method, k)
    fit_pack(cfgs[:2] if k > 1 else cfgs)  # warm-up: allocator, kernels, data cache
    sample = cfgs if lone is None or lone >= k else [cfgs[round(i * (k - 1) / max(lone - 1, 1))] for i in range(lone)]
    times = [median_tail([m["time/epoch_s"] for m in fit(c).history]) for c in sample]
    alone = sum(times) * k / len(sample)
    if len(sample) < k:
        label = f"{label} (alone: {k} x mean of {len(sample)})"
    res = fit_pack(cfgs)
    key = "pack/epoch_s" if k > 1 else "time/epoch_s"
    packed = median_tail([m[key] for m in res[0].history])
    ratio = alone / packed
    print(f"{label:<40} {method:<12} K={k:<3} one after another {alone:8.3f}s/epoch   packed {packed:8.3f}s/epoch"
          f"   ratio {ratio:5.2f}x", flush=True)
    return ratio


@contextlib.contextmanager
def no_epoch_record():
    """The driver writes no per-epoch trial metrics to MLflow (a trial's epoch rows carry
    ``train/loss``); the parent's record, tags and runs are written as usual."""
    from bnnsearch.tracking import Tracker

    write = Tracker.log_metric_steps

    def without_epochs(self, run_id, entries, tags=None):
        return write(self, run_id, [e for e in entries if "train/loss" not in e[0]], tags=tags)

    Tracker.log_metric_steps = without_epochs
    try:
        yield
    finally:
        Tracker.log_metric_steps = write


def study_ratio(trials: int = 32, pack: int = 8, data: str = "digits", width: int = 64, epochs: int = 10,
                repeats: int = 1, record: bool = True) -> float:
    """Wall-clock ratio of a ``trials``-trial study unpacked against ``--pack pack``: the median
    over ``repeats`` pairs (the order within a pair alternates, so neither arm always runs
    second in a warmer process), each pair's figures printed. ``record=False``: without the
    per-epoch MLflow record (see ``no_epoch_record``)."""
    import statistics
    import time

    import ray
    import yaml

    from bnnsearch.spaces import load_space
    from bnnsearch.sweep import SweepArgs, run_sweep

    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        sp = Path(tmp) / "space.yaml"
        sp.write_text(yaml.safe_dump({
            "method": "latent", "objective": {"metric": "val/acc", "mode": "max"},
            "fixed": {"arch": "mlp", "arch_args": {"widths": [width] * 3}, "data": data, "epochs": epochs,
                      "batch_size": 128, "device": "cpu", "data_root": str(Path("data").resolve())},
            "params": {"lr": {"float": [0.1, 100.0], "log": True}, "weight_decay": {"float": [1e-5, 1e-1], "log": True},
                       "momentum": {"float": [0.0, 0.99]}}}))
        order = [("warm-up", 2)]  # the warm-up is not timed
        for r in range(repeats):
            order += [(pack, trials), (1, trials)] if r % 2 == 0 else [(1, trials), (pack, trials)]
        secs: dict = {}
        for i, (k, n) in enumerate(order):
            t0, c0 = time.perf_counter(), time.process_time()
            with contextlib.nullcontext() if record else no_epoch_record():
                run_sweep(SweepArgs(space=load_space(sp), trials=n, sampler="random", seed=0,
                                    pack=1 if k == "warm-up" else k, quiet=True, storage=f"{tmp}/runs",
                                    tracking_uri=f"sqlite:///{tmp}/mlflow.db", name=f"pack{k}-{data}-{width}-{i}"))
            secs[k], cpu = time.perf_counter() - t0, time.process_time() - c0
            # The driver's own CPU seconds (Ray's controller, the searcher, MLflow records) beside
            # the wall clock: on 2 cores the driver competes with the 2 training workers.
            print(f"study of {n} trials, --pack {k}: {secs[k]:7.1f}s  (driver CPU {cpu:5.1f}s)" if k != "warm-up" else
                  f"(warm-up study of {n} trials, not counted: {secs[k]:.1f}s)", flush=True)
            if k != "warm-up" and i % 2 == 0:  # a pair is done
                ratios.append(secs[1] / secs[pack])
    ratio = statistics.median(ratios)
    spread = f", {repeats} pairs: {min(ratios):.2f}-{max(ratios):.2f}x" if repeats > 1 else ""
    print(f"study speedup, --pack {pack} vs --pack 1 ({trials} trials of {epochs} epochs, mlp {width}x3, {data}, "
          f"2 CPU workers{'' if record else ', no per-epoch MLflow record (a bound)'}): {ratio:.2f}x{' (median' + spread + ')' if spread else ''}", flush=True)
    return ratio


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--gpu", action="store_true", help="also vgg_small and resnet20 on CUDA (bf16, channels_last)")
    ap.add_argument("--gpu-only", action="store_true",
                    help="only the CUDA settings, K in {1, 8, 16, 32}, 4 epochs, 2 members timed alone "
                         "(benchmarks/device_check.sh on a lent GPU machine)")
    ap.add_argument("--quick", action="store_true", help="K in {1, 8} and latent only")
    ap.add_argument("--study", action="store_true", help="also a 32-trial study, --pack 8 against --pack 1")
    ap.add_argument("--study-long", action="store_true",
                    help="also 32-trial studies of 160-epoch trials (mlp 64x3, digits): about 4 minutes a pair")
    ap.add_argument("--study-repeats", type=int, default=3, help="pairs of studies per setting (median ratio printed)")
    ap.add_argument("--study-bound", action="store_true",
                    help="also the 40-epoch digits pairs without the per-epoch MLflow record (a bound, not a mode)")
    args = ap.parse_args()
    if args.gpu_only:
        args.gpu = True
        if args.epochs == ap.get_default("epochs"):
            args.epochs = 4
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: torch sees no CUDA device on this machine")
    ks = [1, 8] if args.quick else [1, 4, 8, 16]
    methods = ["latent"] if args.quick else ["latent", "filtered", "proxconnect"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if args.gpu else ""), flush=True)
    common = dict(epochs=args.epochs, batch_size=128, device="cpu", data_root="./data", seed=0)
    settings = [("mlp 128x3, mnist1d, cpu", dict(common, arch="mlp", data="mnist1d", arch_args={"widths": [128] * 3})),
                ("mlp 64x3, digits, cpu", dict(common, arch="mlp", data="digits", arch_args={"widths": [64] * 3}))]
    headline = math.nan
    for label, base in [] if args.gpu_only else settings[1:] if args.quick else settings:
        for method in methods:
            for k in ks:
                r = bench(label, base, method, k)
                if k == 8 and method == "latent" and label.startswith("mlp 64x3"):
                    headline = r
    if not (args.quick or args.gpu_only):
        # local_binary's own net (its search space's), a small and a large batch: its pack on the
        # CPU trains one after another (LocalBinary.pack_model); the stacked step, forced, is what
        # that choice is measured against
        from bnnsearch.methods import local_binary

        for bs in (10, 100):
            base = dict(common, arch="local_mlp", data="mnist5k", arch_args={"widths": [525, 525]}, batch_size=bs,
                        epochs=min(args.epochs, 3))
            bench(f"local_mlp 525x2, mnist5k, batch {bs}, cpu", base, "local_binary", 8)
            local_binary.STACK_ON_CPU = True
            try:
                bench(f"local_mlp 525x2, mnist5k, batch {bs}, cpu, stacked", base, "local_binary", 8)
            finally:
                local_binary.STACK_ON_CPU = False
    if args.gpu:
        with tempfile.TemporaryDirectory() as tmp:
            p = cifar_shaped_npz(tmp, 10000)
            for arch in ("vgg_small", "resnet20"):
                base = dict(common, arch=arch, data="npz", data_root=str(p), device="cuda", amp="bf16",
                            channels_last=True, batch_size=256)
                for k in (1, 8, 16, 32) if args.gpu_only else (1, 8, 32):
                    bench(f"{arch}, CIFAR-shaped, bf16, cuda", base, "latent", k, lone=2 if args.gpu_only else None)
            base = dict(common, arch="local_mlp", data="npz", data_root=str(p), device="cuda", batch_size=100,
                        arch_args={"widths": [525, 525]})  # integer arithmetic: no bf16
            for k in (1, 8, 32):
                bench("local_mlp 525x2, CIFAR-shaped, batch 100, cuda", base, "local_binary", k, lone=2)
    if args.study:  # short trials (the per-study start-up weighs), the same net trained 4x longer, a wider net
        study_ratio(data="digits", width=64, epochs=10, repeats=args.study_repeats)
        study_ratio(data="digits", width=64, epochs=40, repeats=args.study_repeats)
        study_ratio(data="mnist1d", width=128, epochs=20, repeats=args.study_repeats)
    if args.study_long:  # the same net and data, trials 16x longer than the first pair's: the ratio as trials grow
        study_ratio(data="digits", width=64, epochs=160, repeats=args.study_repeats)
    if args.study_bound:
        study_ratio(data="digits", width=64, epochs=40, repeats=args.study_repeats)
        study_ratio(data="digits", width=64, epochs=40, repeats=args.study_repeats, record=False)
    if not args.gpu_only:
        print(f"packed speedup at K=8 (mlp 64x3, digits, cpu): {headline:.2f}x")


if __name__ == "__main__":
    main()
