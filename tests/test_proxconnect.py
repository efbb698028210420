import pytest
import torch

from bnnsearch.methods.proxconnect import ProxHparams, mu_at
from bnnsearch.nn.prox import PAIRS, ProxConnect, signswish, signswish_grad

W = torch.tensor([-2.0, -1.0, -0.7, -0.2, -0.01, 0.0, 0.05, 0.4, 1.0, 1.3, 3.0], dtype=torch.float64)


def fwd_bwd(pair, w, mu=3.0, beta=5.0, jump=0.0):
    q = ProxConnect(pair=pair, mu=mu, beta=beta, jump=jump).double()
    w = w.clone().requires_grad_(True)
    out = q(w)
    out.sum().backward()
    return out.detach(), w.grad


def test_signswish_closed_form_derivative_matches_numeric():
    x = torch.linspace(-3, 3, 121, dtype=torch.float64)
    for beta in (0.5, 2.0, 7.0):
        h = 1e-6
        numeric = (signswish(x + h, beta) - signswish(x - h, beta)) / (2 * h)
        assert torch.allclose(signswish_grad(x, beta), numeric, atol=1e-6)
    assert signswish(torch.tensor(0.0), 3.0) == 0 and signswish_grad(torch.tensor(0.0), 3.0) == 3.0


def test_pairs_forward_and_backward_closed_forms():
    sign = torch.where(W >= 0, 1.0, -1.0).double()
    out, g = fwd_bwd("bc", W)
    assert torch.equal(out, sign) and torch.equal(g, torch.ones_like(W))
    out, g = fwd_bwd("bnn", W)
    assert torch.equal(out, sign) and torch.equal(g, (W.abs() <= 1).double())
    out, g = fwd_bwd("bnn+", W, beta=5.0)
    assert torch.equal(out, sign) and torch.allclose(g, signswish_grad(W, 5.0))
    out, g = fwd_bwd("bnn++", W, mu=3.0)
    assert torch.allclose(out, signswish(W, 3.0)) and torch.allclose(g, signswish_grad(W, 3.0))
    out, g = fwd_bwd("pc", W, mu=3.0)
    assert torch.equal(out, (3.0 * W).clamp(-1, 1)) and torch.equal(g, torch.ones_like(W))
    # Dockhorn's family with a jump rho at 0: clip(mu w + rho sign(w), -1, 1), multiplier still 1
    out, g = fwd_bwd("pc", W, mu=3.0, jump=0.5)
    hand = torch.tensor([-1, -1, -1, -1, -0.53, 0, 0.65, 1, 1, 1, 1], dtype=torch.float64)  # -0.2: -1.1, clipped
    assert torch.allclose(out, hand) and torch.equal(g, torch.ones_like(W))
    q = ProxConnect(pair="pc", mu=4.0, jump=0.5).double()
    w = torch.tensor([-0.2, -0.1, 0.05, 0.12, 0.2], dtype=torch.float64)  # soft where |w| < (1 - 0.5) / 4
    assert q.soft_fraction(w) == pytest.approx(3 / 5)
    assert torch.equal(ProxConnect(pair="pc", mu=0.1, jump=1.0).double()(W[W != 0]), torch.sign(W[W != 0]))


def test_bnnpp_backward_is_numerical_derivative_of_forward():
    q = ProxConnect(pair="bnn++", mu=2.5).double()
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(q, (x,))


def test_signswish_is_non_monotone_and_not_clamped():
    _, g = fwd_bwd("bnn++", torch.tensor([1.5], dtype=torch.float64), mu=3.0)
    assert g.item() < 0  # beyond the overshoot the multiplier is negative (pulls weights back)


@pytest.mark.parametrize("pair", PAIRS)
def test_mu_to_infinity_recovers_sign_and_eval_is_hard(pair):
    w = W[W.abs() > 1e-3]
    q = ProxConnect(pair=pair, mu=1e6).double()
    assert torch.allclose(q(w), torch.where(w >= 0, 1.0, -1.0).double(), atol=1e-6)
    q = ProxConnect(pair=pair, mu=0.5).double().eval()
    assert torch.equal(q(W), torch.where(W >= 0, 1.0, -1.0).double())


def test_mu_schedules_hit_endpoints():
    for shape in ("linear", "exponential", "cosine", "sigmoid"):
        hp = ProxHparams(mu0=2.0, muT=200.0, mu_schedule=shape)
        assert mu_at(hp, 0.0) == pytest.approx(2.0) and mu_at(hp, 1.0) == pytest.approx(200.0)
    assert mu_at(ProxHparams(mu0=1, muT=100, mu_schedule="exponential"), 0.5) == pytest.approx(10.0)
    # cosine on the inverse slope: 1/mu moves along a half cosine from 1/mu0 to 1/muT
    inv_mid = 0.5 * (1 / 2.0 + 1 / 200.0)
    assert mu_at(ProxHparams(mu0=2.0, muT=200.0, mu_schedule="cosine"), 0.5) == pytest.approx(1 / inv_mid)
    # sigmoid on the inverse slope (PARQ's normalized mirror sigmoid, steepness 10): symmetric
    # about the midpoint, and at p = 1/4, by hand: (σ(2.5) - σ(-5)) / (σ(5) - σ(-5)) = 0.92990
    assert mu_at(ProxHparams(mu0=2.0, muT=200.0, mu_schedule="sigmoid"), 0.5) == pytest.approx(1 / inv_mid)
    frac = (0.9241418199787566 - 0.0066928509242848554) / (0.9933071490757153 - 0.0066928509242848554)
    assert frac == pytest.approx(0.92990, abs=1e-5)
    for p, f in ((0.25, frac), (0.75, 1 - frac)):
        assert mu_at(ProxHparams(mu0=2.0, muT=200.0, mu_schedule="sigmoid"), p) == pytest.approx(
            1 / (1 / 200.0 + (1 / 2.0 - 1 / 200.0) * f))
    # a gentle steepness is almost linear in 1/mu; a steep one holds 1/mu near 1/mu0 longer
    gentle = mu_at(ProxHparams(mu0=2.0, muT=200.0, mu_schedule="sigmoid", mu_steepness=0.1), 0.25)
    assert gentle == pytest.approx(1 / (1 / 200.0 + (1 / 2.0 - 1 / 200.0) * 0.75), rel=1e-3)
    assert mu_at(ProxHparams(mu0=2.0, muT=200.0, mu_schedule="sigmoid", mu_steepness=30), 0.25) < 2.01


def test_the_pc_jump_and_the_sigmoid_schedule_change_training(tiny_cfg):
    """Selectable variants must act: training differs from the default for each (pc only)."""
    from bnnsearch.engine import fit

    base = {"pair": "pc", "mu0": 0.5, "muT": 100.0}
    runs = [fit(tiny_cfg(method="proxconnect", epochs=2, hparams={**base, **extra})).history[-1]
            for extra in ({}, {"pc_jump": 0.3}, {"mu_schedule": "sigmoid"})]
    assert runs[0]["train/loss"] != runs[1]["train/loss"] and runs[0]["train/loss"] != runs[2]["train/loss"]
    assert 50 < runs[0]["sched/mu"] != runs[2]["sched/mu"] > 50  # both near muT = 100 at the last step


def test_soft_fraction_and_training_run(tiny_cfg):
    from bnnsearch.engine import fit

    res = fit(tiny_cfg(method="proxconnect", epochs=3, hparams={"pair": "pc", "mu0": 0.5, "muT": 1e4}))
    h = res.history
    assert h[0]["prox/soft_fraction"] > h[-1]["prox/soft_fraction"]
    assert h[-1]["sched/mu"] > 1000 and h[-1]["val/acc"] > 0.3
    res = fit(tiny_cfg(method="proxconnect", epochs=2, hparams={"pair": "bnn", "clip": True}))
    from bnnsearch.nn import binary_layers

    for _, layer in binary_layers(res.model):
        assert layer.parametrizations.weight.original.abs().max() <= 1.0  # latent clip held


def test_hard_phase_switches_forward_to_sign(tiny_cfg):
    from bnnsearch.engine import fit

    h = fit(tiny_cfg(method="proxconnect", epochs=4, hparams={"pair": "bnn++", "hard_phase": 0.5})).history
    assert h[0]["prox/hard_phase"] == 0.0 and h[-1]["prox/hard_phase"] == 1.0
    assert h[-1]["prox/soft_fraction"] == 0.0


@pytest.mark.parametrize("pair", ["pc", "bnn"])
def test_the_soft_network_and_the_quantization_gap_are_reported(tiny_cfg, pair):
    """methods.md §5.4: val/acc_soft (the network with its training forward F) next to the
    hard-sign val/acc, and ||F(w) - sign(w)|| / sqrt(n), both checked against the trained model;
    for a hard-forward pair (bnn) F is sign: the two accuracies agree and the gap is 0."""
    from bnnsearch.data import load_dataset
    from bnnsearch.engine import fit
    from bnnsearch.nn import binary_layers, weight_quantizer
    from bnnsearch.nn.binarize import stored_weight

    cfg = tiny_cfg(method="proxconnect", epochs=2, hparams={"pair": pair, "mu0": 0.5, "muT": 2.0})
    res = fit(cfg)
    last = res.final
    data = load_dataset(cfg.data, cfg.data_root, cfg.data_obj())
    model = res.model.eval()
    layers = [(weight_quantizer(layer), stored_weight(layer).detach()) for _, layer in binary_layers(model)]
    with torch.no_grad():
        mu = float(layers[0][0].mu)
        soft = [(q.hard(w) if pair == "bnn" else (mu * w).clamp(-1, 1)) for q, w in layers]
        gap = (sum((f - q.hard(w)).pow(2).sum() for f, (q, w) in zip(soft, layers)) / sum(w.numel() for _, w in layers)).sqrt()
        for q, _ in layers:
            q.eval_soft = True
        acc_soft = [(model(x).argmax(1) == y).double().mean().item() for x, y in ((data.x_val, data.y_val), (data.x_test, data.y_test))]
    assert [last["val/acc_soft"], last["test/acc_soft"]] == pytest.approx(acc_soft, abs=1e-6)
    assert last["prox/quant_gap"] == pytest.approx(gap.item(), rel=1e-5)
    if pair == "bnn":
        assert last["prox/quant_gap"] == 0 and last["val/acc_soft"] == last["val/acc"]
    else:
        assert last["prox/quant_gap"] > 0.05 and last["val/acc_soft"] != last["val/acc"]
