"""GPU checks, skipped where torch sees no GPU (CI has none); ``benchmarks/device_check.sh``
runs them, with the CUDA cases of ``test_pack.py`` (a packed member equals its configuration
trained alone, for every method; a pack resumes from its checkpoint; bf16 trains like float32
within the seed spread), then the GPU benchmarks, on a lent GPU machine.

- no host synchronisation per training step: the number of synchronising CUDA calls of a run
  does not grow with its number of steps (CUDA's sync debug mode counts them), for every method
  alone and packed (local_binary's pack is its stacked step on a GPU);
- ``compile: true`` trains an MLP to the float32 eager run's accuracy within the seed-to-seed
  spread measured in the same test; a ResNet-20 pack learns with bf16 and channels_last.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from bnnsearch.engine import fit_pack
from test_pack import CASES, _cfgs, val_accs, within_seed_noise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _syncs(cfgs, reports=None) -> int:
    """Synchronising CUDA calls made while training these configurations (one pack)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit_pack(cfgs, reports)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.parametrize("method", sorted(CASES))
@pytest.mark.parametrize("k", [1, 2])
def test_no_host_sync_per_training_step(method, k):
    extra, hps = CASES[method]
    # batch 16 makes four times the steps of batch 64 over the same epochs; the evaluation and
    # the epoch's record (which may synchronise) are the same in both. A first run pays what a
    # process does once (the CUDA context, library handles, the data cache) and is not counted.
    counts = {b: _syncs(_cfgs(method, extra, hps[:k], device="cuda", dtype="float32", epochs=2, batch_size=b))
              for b in (64, 64, 16)}
    assert counts[16] == counts[64], f"{method} K={k}: {counts} synchronising calls (batch: count)"


@pytest.mark.parametrize("method", ["latent", "local_binary"])
def test_no_host_sync_per_step_once_a_member_stopped(method):
    """The live members' loss sum and the fused steps' hyperparameter columns after a member of
    the pack stopped (ASHA) used host lists on the device at every step; local_binary's stacked
    step masks a stopped member's updates."""
    extra, hps = CASES[method]
    stop_first = [lambda m: m["epoch"] >= 1, None, None]
    counts = {b: _syncs(_cfgs(method, extra, hps, device="cuda", dtype="float32", epochs=3, batch_size=b), stop_first)
              for b in (64, 64, 16)}  # the first run is not counted (see above)
    assert counts[16] == counts[64], counts


def test_compile_trains_like_float32_eager_on_cuda():
    within_seed_noise("cuda", compile=True)


def test_conv_pack_trains_with_bf16_and_channels_last():
    """ResNet-20 on 8x8 digits: the seed-to-seed spread after 12 epochs is large (0.51-0.85 on
    CPU in float32, lr 10 and 30), so this checks that a bf16 channels_last pack learns, not how well."""
    accs = val_accs({"arch": "resnet20", "arch_args": {"width": 0.25}}, epochs=12, lrs=(10.0, 30.0), device="cuda",
                    amp="bf16", channels_last=True)
    assert min(accs) > 0.3, accs


def test_peak_device_memory_is_reported_and_grows_with_the_pack():
    """mem/peak_device_mb: the allocator's peak since the run started (its data included); a
    pack of 4 holds more than one member alone; CPU runs report none (tests/test_engine.py)."""
    _, hps = CASES["latent"]
    # 4 MB of binary weights per member, 12 MB with their gradient and momentum
    wide = {"arch": "mlp", "arch_args": {"widths": [1024, 1024]}}
    one = fit_pack(_cfgs("latent", wide, hps[:1], device="cuda", dtype="float32", epochs=1))[0].final
    four = fit_pack(_cfgs("latent", wide, (hps * 2)[:4], device="cuda", dtype="float32", epochs=1))[0].final
    assert 8 < one["mem/peak_device_mb"] and one["mem/peak_device_mb"] + 3 * 8 < four["mem/peak_device_mb"]
