import os

import pytest
import torch

# Tests run on 2 cores: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg(tmp_path):
    """A fast config: a small MLP on sklearn digits."""
    def make(**over):
        from bnnsearch.config import resolve

        raw = dict(method="latent", arch="mlp", data="digits", epochs=2, batch_size=64, seed=0,
                   device="cpu", data_root=str(tmp_path / "data"), arch_args={"widths": [32, 32, 32]})
        raw.update(over)
        return resolve(raw)
    return make


def small_arch_args(method):
    """Small architectures per method for fast tests."""
    if method == "local_binary":
        return "local_mlp", {"widths": [30, 30]}
    return "mlp", {"widths": [32, 32, 32]}
