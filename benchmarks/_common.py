"""Helpers the benchmark scripts share (run them as scripts: `python benchmarks/NAME.py`)."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np


def median_tail(ts: list[float]) -> float:
    """Median of the timings after the first (the first pays warm-up: allocator, kernels)."""
    return statistics.median(ts[1:] if len(ts) > 1 else ts)


def cifar_shaped_npz(folder: str | Path, n_train: int, n_test: int = 2000) -> Path:
    """Random CIFAR-shaped data (3x32x32, 10 classes, seed 0) in the `npz` dataset's format:
    throughput does not depend on the pixel values, and no download is needed."""
    p = Path(folder) / "cifar_shaped.npz"
    g = np.random.default_rng(0)
    np.savez(p, x=g.normal(size=(n_train, 3, 32, 32)).astype(np.float32), y=g.integers(0, 10, n_train),
             x_test=g.normal(size=(n_test, 3, 32, 32)).astype(np.float32), y_test=g.integers(0, 10, n_test))
    return p
