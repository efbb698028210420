import math

import pytest
import torch

from bnnsearch.methods.cyclebnn import CycleHparams, cr, cyclic_bits
from bnnsearch.nn.cyclic import CyclicWeight, minmax_quant, quantize_grad


def test_cosine_schedule_hand_computed():
    hp = CycleHparams(b_min=2, b_max=6, cycles=2)
    seq = [cyclic_bits(t, 16, hp) for t in range(16)]
    # P = 8; b = round(2 + 2 (1 - cos(pi k / 8))), k = 0..7, twice
    assert seq == [2, 2, 3, 3, 4, 5, 5, 6] * 2
    assert sum(seq) / len(seq) == 3.75


def test_other_shapes():
    assert [cyclic_bits(t, 8, CycleHparams(b_min=1, b_max=5, cycles=1, shape="triangular")) for t in range(8)] == \
        [1, 2, 3, 4, 5, 4, 3, 2]
    assert [cyclic_bits(t, 4, CycleHparams(b_min=2, b_max=6, cycles=1, shape="linear")) for t in range(4)] == [2, 3, 4, 5]
    assert {cyclic_bits(t, 10, CycleHparams(shape="static", b_max=7)) for t in range(10)} == {7}


def test_minmax_quantizer_levels():
    x = torch.linspace(-1.0, 3.0, 101)
    q = minmax_quant(x, 2, x.min(), x.max())
    levels = sorted(set(q.tolist()))
    assert len(levels) == 4
    assert levels == pytest.approx([-1.0, -1 + 4 / 3, -1 + 8 / 3, 3.0])
    x.requires_grad_(True)
    minmax_quant(x, 3, x.min().detach(), x.max().detach()).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # STE


def test_weight_forward_is_binary_times_alpha():
    q = CyclicWeight(bits=4, out_channels=3)
    w = torch.randn(3, 5, 2, 2)
    out = q(w)
    ratio = out / q.alpha.view(-1, 1, 1, 1)
    assert set(ratio.detach().round().unique().tolist()) <= {-1.0, 1.0}
    assert q.bits == 1
    assert CyclicWeight(bits=4, precision_mode="true_kbit_forward", out_channels=3).bits == 4


def test_gradient_quantized_to_g_bits():
    x = torch.randn(500, requires_grad=True)
    y = quantize_grad(x, 3)
    y.backward(torch.randn(500))
    assert len(x.grad.unique()) <= 2**3


def test_cost_for_constant_schedule_hand_computed(tiny_cfg):
    from bnnsearch.data import load_dataset
    from bnnsearch.engine import fit

    cfg = tiny_cfg(method="cyclebnn", epochs=1, hparams={"b_min": 4, "b_max": 4, "shape": "static", "grad_bits": 8})
    res = fit(cfg)
    last = res.final
    assert last["cost/train_rel"] == pytest.approx((16 + 2 * 4 * 8) / (3 * 32 * 32))
    data = load_dataset("digits", cfg.data_root, cfg.data_obj())
    steps = len(data.x_train) // cfg.batch_size
    # mlp widths [32, 32, 32] on 64 inputs, 10 classes: FP 64x32 and 32x10, binary 32x32 twice
    mac_bin, mac_fp = 2 * 32 * 32, 64 * 32 + 32 * 10
    per_step = cfg.batch_size * (mac_bin * (4 * 4 + 2 * 4 * 8) + mac_fp * 3 * 32 * 32)
    assert last["cost/train_bitops"] == steps * per_step
    assert last["sched/bits"] == 4
    assert math.isclose(cr(32, 32), 1.0)


def test_schedule_reported_and_resume_keeps_cost(tiny_cfg, tmp_path):
    from bnnsearch.engine import fit

    cfg = tiny_cfg(method="cyclebnn", epochs=3, data_args={"augment": False})
    full = fit(cfg).history
    fit(cfg, lambda m: m["epoch"] == 1, checkpoint_dir=tmp_path)
    resumed = fit(cfg, checkpoint_dir=tmp_path).history
    for k in ("cost/train_bitops", "cost/train_rel", "val/acc", "sched/bits"):
        assert resumed[-1][k] == full[-1][k]
