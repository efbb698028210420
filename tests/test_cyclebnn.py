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
    layer.parametrizations.weight[0].g = 3
    out = scale_output(layer, y)
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


def test_lr_annealing_follows_torchs_cosine_annealing_past_t_max(tiny_cfg):
    """lr_annealing is the released code's num_cyclic_annealing n (1 or N_c): CosineAnnealingLR with
    T_max = T / n, stepped every iteration (past T_max it follows the cosine back up)."""
    from bnnsearch.methods.cyclebnn import lr_factor

    T = 48
    for n in (1, 2, 8):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T // n)
        for t in range(T):
            assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(t / T, n), rel=1e-9, abs=1e-15)
            opt.step()
            sched.step()
    assert lr_factor(1.0, 8) == pytest.approx(1.0) and lr_factor(1 / 8, 8) == pytest.approx(0.0, abs=1e-15)
    from bnnsearch.engine import build, run_info

    for annealing, n in (("once", 1), ("per_cycle", 4)):
        cfg = tiny_cfg(method="cyclebnn", hparams={"cycles": 4, "lr": 2e-3, "lr_annealing": annealing})
        data, method, hp, model = build(cfg, "cpu")
        info = run_info(cfg, data)
        (lr,) = [s for s in method.setup(model, hp, info.total_steps, info).scheduled if s.name == "lr"]
        assert [lr.value(p) for p in (0.25, 0.5, 0.7)] == pytest.approx([2e-3 * lr_factor(p, n) for p in (0.25, 0.5, 0.7)])


def test_recu_tau_schedule_and_clamp_hand_computed():
    from bnnsearch.nn.quantizers import recu_clamp, recu_tau

    assert recu_tau(0, 10, 0.85, 0.99) == pytest.approx(0.85)
    assert recu_tau(10, 10, 0.85, 0.99) == pytest.approx(0.99)
    # ReCU cpt_tau: A e^(5/10) + B, A = 0.14 / (e - 1), B = 0.85 - A
    assert recu_tau(5, 10, 0.85, 0.99) == pytest.approx(0.14 / (math.e - 1) * (math.exp(0.5) - 1) + 0.85)
    w = torch.tensor([-3.0, -0.5, 0.25, 1.0, 4.0], requires_grad=True)
    bound = -math.log(2 - 2 * 0.9) * (8.75 / 5)  # -E|w| log(2 - 2 tau)
    out = recu_clamp(w, 0.9)
    assert out.tolist() == pytest.approx([-bound, -0.5, 0.25, 1.0, bound])
    out.sum().backward()
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # clamped weights get no gradient
    assert recu_clamp(w, 1.0) is w


def test_tau_clamp_moves_the_prequantization_grid():
    """With the clamp, the k-bit grid spans ±Q_tau instead of the extreme weights: the effective
    signs can change (the clamp acts in CycleBNN's forward, not only on its gradient)."""
    torch.manual_seed(0)
    q = CyclicWeight(bits=2, out_channels=4)
    w = torch.randn(4, 50)
    w[:, 0] = 20.0  # an outlier stretches the unclamped grid
    free = q.hard_sign(w)
    q.tau = 0.85
    assert not torch.equal(q.hard_sign(w), free)


def test_cyclic_gradient_bits_follow_the_schedule_and_the_cost(tiny_cfg):
    """grad_bits_min: g_t cycles between grad_bits_min and grad_bits on the precision schedule
    (CPT's cyclic_num_grad_bits_schedule); the quantizers and the modelled cost use g_t."""
    from bnnsearch.engine import build, run_info
    from bnnsearch.nn import binary_layers, weight_quantizer

    cfg = tiny_cfg(method="cyclebnn", epochs=1, hparams={"b_min": 4, "b_max": 4, "grad_bits": 8, "grad_bits_min": 2,
                                                          "cycles": 1, "shape": "linear"})
    data, method, hp, model = build(cfg, "cpu")
    info = run_info(cfg, data)
    setup = method.setup(model, hp, info.total_steps, info)
    wq = [weight_quantizer(layer) for _, layer in binary_layers(model)]
    T = info.total_steps
    seen = []
    for step in range(T):
        for s in setup.scheduled:
            s.apply(s.value(step / T))
        for hook in setup.on_step:
            hook(step, step / T)
        g = round(2 + 6 * step / T)
        assert {q.g for q in wq} == {g}
        seen.append(g)
    assert seen[0] == 2 and seen[-1] >= 7
    (rel,) = [fn()["cost/train_rel"] for fn in setup.epoch_metrics]
    assert rel == pytest.approx(sum(cr(4, g) for g in seen) / T)


@pytest.mark.parametrize("hps,match", [({"grad_bits": 8, "grad_bits_min": 9}, "grad_bits_min"),
                                       ({"grad_bits": 0, "grad_bits_min": 4}, "grad_bits_min"),
                                       ({"lr_annealing": "twice"}, "lr_annealing"),
                                       ({"lr_annealing": "per_cycle", "shape": "static"}, "lr_annealing"),
                                       ({"grad_bits_min": 4, "shape": "static"}, "grad_bits_min"), ({"tau_min": 0.9, "tau_max": 0.8}, "tau_min")])
def test_new_hyperparameters_are_validated(tiny_cfg, hps, match):
    from bnnsearch.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        tiny_cfg(method="cyclebnn", hparams=hps)


@pytest.mark.parametrize("mode", ["prequant_then_sign", "true_kbit_forward"])
def test_pure_sign_evaluation_is_reported_next_to_the_code_faithful_one(tiny_cfg, mode):
    """methods.md §3.5 pitfall 3: val/acc is the released code's evaluation (current b_t,
    activation range EMAs); val/acc_sign / test/acc_sign the same network with pure sign (no
    pre-quantization), checked against the trained model evaluated by hand."""
    from bnnsearch.data import load_dataset
    from bnnsearch.engine import fit
    from bnnsearch.nn import binary_layers, weight_quantizer

    cfg = tiny_cfg(method="cyclebnn", epochs=2, hparams={"b_min": 2, "b_max": 2, "shape": "static",
                                                          "precision_mode": mode})
    res = fit(cfg)
    last = res.final
    data = load_dataset(cfg.data, cfg.data_root, cfg.data_obj())
    model = res.model.eval()
    with torch.no_grad():
        faithful = (model(data.x_val).argmax(1) == data.y_val).double().mean().item()
        for _, layer in binary_layers(model):
            weight_quantizer(layer).pure_sign = layer.input_quantizer.pure_sign = True
        sign = [(model(x).argmax(1) == y).double().mean().item() for x, y in ((data.x_val, data.y_val), (data.x_test, data.y_test))]
    assert last["val/acc"] == pytest.approx(faithful, abs=1e-6)  # float32 ratio; one sample is 1/144
    assert [last["val/acc_sign"], last["test/acc_sign"]] == pytest.approx(sign, abs=1e-6)
    if mode == "true_kbit_forward":  # 2-bit forward vs sign: different networks
        assert last["val/acc_sign"] != last["val/acc"]


def test_extra_evaluations_run_after_the_last_epoch_only(tiny_cfg):
    from bnnsearch.engine import fit

    h = fit(tiny_cfg(method="cyclebnn", epochs=2)).history
    assert "val/acc_sign" not in h[0] and {"val/acc_sign", "test/acc_sign"} <= set(h[1])
