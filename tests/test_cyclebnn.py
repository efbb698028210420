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


def test_weight_forward_is_binary_and_alpha_scales_the_output():
    q = CyclicWeight(bits=4, out_channels=3)
    w = torch.randn(3, 5, 2, 2)
    assert set(q(w).detach().unique().tolist()) <= {-1.0, 1.0}
    assert q.bits == 1
    assert CyclicWeight(bits=4, precision_mode="true_kbit_forward", out_channels=3).bits == 4


def _cyclic_linear(grad_bits):
    from bnnsearch.methods import get_method
    from bnnsearch.nn import binary_layers

    m = get_method("cyclebnn")
    hp = CycleHparams(grad_bits=grad_bits)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 5, bias=False), torch.nn.Linear(5, 2))
    from bnnsearch.nn import binarize

    binarize(net, m.weight_quantizer(hp, "plus"), m.act_quantizer(hp), seed=0)
    m.init_binary(net, hp)
    (_, layer), = binary_layers(net)
    return layer


def test_output_is_alpha_times_binary_product():
    layer = _cyclic_linear(0)
    with torch.no_grad():
        layer.parametrizations.weight[0].alpha.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0]))
    layer.eval()
    x = torch.randn(4, 8)
    wb = layer.parametrizations.weight[0](layer.parametrizations.weight.original)
    a = layer.input_quantizer(x)
    expect = (a @ wb.T) * layer.parametrizations.weight[0].alpha
    assert torch.allclose(layer(x), expect)


def test_gradient_is_quantized_before_alpha():
    """methods.md §3.1 step 6: y = conv(A_b, W_b); quantize dL/dy to g bits; then y <- alpha * y.
    The gradient reaching the binary product therefore has at most 2^g levels over the whole
    tensor (quantized after alpha it would be alpha_j times 2^g levels per channel)."""
    from bnnsearch.nn.cyclic import scale_output

    layer = _cyclic_linear(3)
    with torch.no_grad():
        layer.parametrizations.weight[0].alpha.copy_(torch.tensor([0.3, 1.0, 1.7, 2.9, 4.1]))
    y = torch.randn(64, 5, requires_grad=True)
    out = scale_output(layer, y, 3)
    assert torch.allclose(out, y * layer.parametrizations.weight[0].alpha)
    out.backward(torch.randn(64, 5))
    assert len(y.grad.unique()) <= 2**3


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


def test_epoch_unit_with_too_many_cycles_is_rejected(tiny_cfg):
    from bnnsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="precision would stay at b_min"):
        tiny_cfg(method="cyclebnn", epochs=10, hparams={"schedule_unit": "epoch", "cycles": 8})
    cfg = tiny_cfg(method="cyclebnn", epochs=10, hparams={"schedule_unit": "epoch", "cycles": 5})
    hp = cfg.hp()
    # P = 2: b = round(2 + 4 (1 - cos(pi k / 2)) / 2), k = 0, 1 -> 2, 4
    assert [cyclic_bits(t, 10, hp) for t in range(10)] == [2, 4] * 5


@pytest.mark.parametrize("shape,dims", [((64, 32), (1,)), ((16, 8, 3, 3), (1, 2, 3)), ((32, 8, 5, 5), (1, 2, 3))])
def test_two_pass_variance_equals_torch_var(shape, dims):
    """The standardizations' variance (two passes, for speed) is torch.var's, value and
    gradient, to float64 precision in float64 and to rounding in float32."""
    from bnnsearch.nn.cyclic import _var

    x = (torch.randn(*shape, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    g = torch.randn(*[1 if i in dims else s for i, s in enumerate(shape)], dtype=torch.float64)
    ref = x.var(dim=dims, keepdim=True)
    (gref,) = torch.autograd.grad((ref * g).sum(), x)
    got = _var(x, dims)
    (ggot,) = torch.autograd.grad((got * g).sum(), x)
    assert torch.allclose(got, ref, rtol=1e-12, atol=0) and torch.allclose(ggot, gref, rtol=1e-10, atol=1e-12)
    x32 = x.detach().float()
    assert torch.allclose(_var(x32, dims), x32.var(dim=dims, keepdim=True), rtol=1e-5, atol=0)
