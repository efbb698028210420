import pytest
import torch

from bnnsearch.methods.proxconnect import ProxHparams, mu_at
from bnnsearch.nn.prox import PAIRS, ProxConnect, signswish, signswish_grad

W = torch.tensor([-2.0, -1.0, -0.7, -0.2, -0.01, 0.0, 0.05, 0.4, 1.0, 1.3, 3.0], dtype=torch.float64)


def fwd_bwd(pair, w, mu=3.0, beta=5.0):
    q = ProxConnect(pair=pair, mu=mu, beta=beta).double()
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
    for shape in ("linear", "exponential", "cosine"):
        hp = ProxHparams(mu0=2.0, muT=200.0, mu_schedule=shape)
        assert mu_at(hp, 0.0) == pytest.approx(2.0) and mu_at(hp, 1.0) == pytest.approx(200.0)
    assert mu_at(ProxHparams(mu0=1, muT=100, mu_schedule="exponential"), 0.5) == pytest.approx(10.0)
    # cosine on the inverse slope: 1/mu moves along a half cosine from 1/mu0 to 1/muT
    inv_mid = 0.5 * (1 / 2.0 + 1 / 200.0)
    assert mu_at(ProxHparams(mu0=2.0, muT=200.0, mu_schedule="cosine"), 0.5) == pytest.approx(1 / inv_mid)


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
