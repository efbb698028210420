"""The training random stream.

Every random draw made *during training* (CycleBNN's stochastic gradient rounding, ``sign0:
random`` ties, ...) comes from one ``torch.Generator`` that ``engine.fit`` owns: seeded from the
run seed, installed with :func:`use` around the training loop, and saved in every checkpoint. A
resumed run therefore continues the exact stream of the uninterrupted run; torch's global
generator, which no checkpoint holds, is never drawn from while training.

Outside ``engine.fit`` (unit tests, one-off use of a quantizer) no stream is installed and the
draws fall back to torch's global generator.

The stream is a module global, not thread-local: autograd may run a backward pass (where the
gradient rounding draws) on a device thread of its own.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

_current: torch.Generator | None = None


@contextmanager
def use(gen: torch.Generator):
    """Make ``gen`` the training stream inside the block."""
    global _current
    prev, _current = _current, gen
    try:
        yield gen
    finally:
        _current = prev


def generator(device: torch.device) -> torch.Generator | None:
    """The installed stream if it lives on ``device``'s type, else None (torch's global one)."""
    g = _current
    if g is not None and g.device.type == torch.device(device).type:
        return g
    return None


def rand_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.rand_like(x)`` drawn from the training stream."""
    return torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator(x.device))
