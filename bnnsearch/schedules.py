"""Closed-form schedules: pure functions of training progress p in [0, 1].

The engine evaluates them once per step on the host (no device sync) and reports the value
under ``sched/<name>``.
"""
from __future__ import annotations

import math

DECAYS = ("none", "cosine", "linear")
INTERPOLATIONS = ("linear", "exponential", "cosine")


def decay(shape: str, p: float) -> float:
    """Multiplicative decay factor: 1 at p=0 falling to 0 at p=1 (``none``: constant 1)."""
    p = min(max(p, 0.0), 1.0)
    if shape == "none":
        return 1.0
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "linear":
        return 1.0 - p
    raise ValueError(f"unknown decay {shape!r}; choose one of {DECAYS}")


def interpolate(shape: str, v0: float, v1: float, p: float) -> float:
    """Move from v0 (p=0) to v1 (p=1): linearly, geometrically, or along a half cosine."""
    p = min(max(p, 0.0), 1.0)
    if shape == "linear":
        return v0 + (v1 - v0) * p
    if shape == "exponential":
        return v0 * (v1 / v0) ** p
    if shape == "cosine":
        return v1 + (v0 - v1) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown interpolation {shape!r}; choose one of {INTERPOLATIONS}")
