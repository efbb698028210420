"""Epoch time of `local_binary` on the CPU: what the CPU path does now against the reference it
replaced, in one process, same data and seed.

- `reference`: the dense update (the whole increment matrix added to H every step, sign(H)
  rebuilt every step) with one uniform per hidden weight for the reinforcement (`dense` draw);
- `sparse+dense`: the CPU's sparse update (only the selected units' columns, the reinforced
  weights and sign(H) for those) with the `dense` draw: the same random stream, so the same run
  bit for bit as the reference (the accuracies printed must be equal);
- `sparse+gaps` (the default): the sparse update with the reinforcement drawn as Geometric gaps
  between hits: equally distributed, a different stream (its accuracy differs by run-to-run noise).

Printed per batch size: median epoch seconds (first epoch dropped), the ratio of the reference
to each (> 1: faster than the reference), and the final test accuracies.

    python benchmarks/local_binary_draw.py                      # mnist5k, batch sizes 10 and 100
    python benchmarks/local_binary_draw.py --batch-sizes 10 --epochs 4 --data digits
"""
from __future__ import annotations

import argparse

from _common import median_tail

from bnnsearch.config import resolve
from bnnsearch.engine import fit
from bnnsearch.methods import local_binary


def run(sparse: bool, draw: str, bs: int, args):
    local_binary.SPARSE_ON_CPU = sparse
    try:
        cfg = resolve(dict(method="local_binary", arch="local_mlp", data=args.data, epochs=args.epochs, batch_size=bs,
                           device="cpu", data_root="./data", hparams={"reinforce_draw": draw}))
        res = fit(cfg)
    finally:
        local_binary.SPARSE_ON_CPU = True
    return median_tail([m["time/epoch_s"] for m in res.history]), res.history[-1]["test/acc"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-sizes", default="10,100")
    args = ap.parse_args()
    for bs in map(int, args.batch_sizes.split(",")):
        t_ref, a_ref = run(False, "dense", bs, args)
        t_sd, a_sd = run(True, "dense", bs, args)
        t_sg, a_sg = run(True, "gaps", bs, args)
        print(f"local_binary local_mlp {args.data} bs{bs:<4} reference {t_ref:7.3f}s/epoch   "
              f"sparse+dense {t_sd:7.3f}s ({t_ref / t_sd:4.2f}x)   sparse+gaps {t_sg:7.3f}s ({t_ref / t_sg:4.2f}x)   "
              f"test acc {a_ref:.4f} / {a_sd:.4f} / {a_sg:.4f}", flush=True)


if __name__ == "__main__":
    main()
