"""Epoch time of `local_binary` with its reinforcement events drawn sparsely (`gaps`, the default:
Geometric gaps between hits, ~N p random numbers per layer and step) against the reference
(`dense`: one uniform per hidden weight per step), in one process, same data and seed.
Printed per batch size: median epoch seconds (first epoch dropped), the ratio dense / gaps
(> 1: gaps is faster), and each run's final test accuracy (the two draws are equally
distributed, not the same stream, so the accuracies differ by run-to-run noise).

    python benchmarks/local_binary_draw.py                      # mnist5k, batch sizes 10 and 100
    python benchmarks/local_binary_draw.py --batch-sizes 10 --epochs 4 --data digits
"""
from __future__ import annotations

import argparse

from _common import median_tail

from bnnsearch.config import resolve
from bnnsearch.engine import fit


def run(draw: str, bs: int, args):
    cfg = resolve(dict(method="local_binary", arch="local_mlp", data=args.data, epochs=args.epochs, batch_size=bs,
                       device="cpu", data_root="./data", hparams={"reinforce_draw": draw}))
    res = fit(cfg)
    return median_tail([m["time/epoch_s"] for m in res.history]), res.history[-1]["test/acc"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-sizes", default="10,100")
    args = ap.parse_args()
    for bs in map(int, args.batch_sizes.split(",")):
        t_dense, a_dense = run("dense", bs, args)
        t_gaps, a_gaps = run("gaps", bs, args)
        print(f"local_binary local_mlp {args.data} bs{bs:<4} gaps {t_gaps:7.3f}s/epoch   dense {t_dense:7.3f}s/epoch   "
              f"ratio {t_dense / t_gaps:5.2f}x   test acc gaps {a_gaps:.4f} dense {a_dense:.4f}", flush=True)


if __name__ == "__main__":
    main()
