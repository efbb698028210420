"""GPU checks, skipped where torch sees no GPU (CI has none); ``benchmarks/device_check.sh``
runs them, with the CUDA cases of ``test_pack.py`` (a packed member equals its configuration
trained alone, for every method; a pack resumes from its checkpoint), then the GPU benchmark,
on a lent GPU machine.

- no host synchronisation per training step: the number of synchronising CUDA calls of a run
  does not grow with its number of steps (CUDA's sync debug mode counts them);
- bf16 autocast and ``compile: true`` train an MLP to the float32 eager run's accuracy within
  the seed-to-seed spread measured in the same test; a ResNet-20 pack learns with bf16 and
  channels_last.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from bnnsearch.engine import fit_pack
from test_pack import CASES, _cfgs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _syncs(cfgs) -> int:
    """Synchronising CUDA calls made while training these configurations (one pack)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit_pack(cfgs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.parametrize("method", sorted(CASES))
@pytest.mark.parametrize("k", [1, 2])
def test_no_host_sync_per_training_step(method, k):
    extra, hps = CASES[method]
    # batch 16 makes four times the steps of batch 64 over the same epochs; the evaluation and
    # the epoch's record (which may synchronise) are the same in both
    counts = {b: _syncs(_cfgs(method, extra, hps[:k], device="cuda", dtype="float32", epochs=2, batch_size=b))
              for b in (64, 16)}
    assert counts[16] == counts[64], f"{method} K={k}: {counts} synchronising calls (batch: count)"


WIDE = {"arch": "mlp", "arch_args": {"widths": [128, 128]}}  # learns digits to ~97 % in 8 epochs


def _val_acc(extra=WIDE, epochs=8, lrs=(1.0, 10.0), **kw) -> list[float]:
    cfgs = _cfgs("latent", extra, [{"lr": lr} for lr in lrs], dtype="float32", epochs=epochs, **kw)
    return [r.history[-1]["val/acc"] for r in fit_pack(cfgs)]


def test_bf16_and_compile_train_like_float32_eager():
    ref = _val_acc(device="cuda")
    assert min(ref) > 0.8  # the reference learns (10 classes: chance is 0.1; ~0.97 on CPU)
    # the seed-to-seed spread of the reference, plus one validation sample (0.014 on CPU)
    noise = max(abs(a - b) for a, b in zip(ref, _val_acc(device="cuda", seed=11))) + 1 / 144
    bf16 = _val_acc(device="cuda", amp="bf16")
    assert max(abs(a - b) for a, b in zip(ref, bf16)) <= noise, (ref, bf16, noise)
    compiled = _val_acc(device="cuda", compile=True)
    assert max(abs(a - b) for a, b in zip(ref, compiled)) <= noise, (ref, compiled, noise)


def test_conv_pack_trains_with_bf16_and_channels_last():
    """ResNet-20 on 8x8 digits: the seed-to-seed spread after 12 epochs is large (0.51-0.85 on
    CPU in float32, lr 10 and 30), so this checks that a bf16 channels_last pack learns, not how well."""
    accs = _val_acc({"arch": "resnet20", "arch_args": {"width": 0.25}}, epochs=12, lrs=(10.0, 30.0), device="cuda",
                    amp="bf16", channels_last=True)
    assert min(accs) > 0.3, accs
