import pytest
import torch

from bnnsearch.nn import list_quantizers, make_quantizer, sign0
from bnnsearch.nn.quantizers import LatentSign

X = torch.tensor([-2.0, -1.0, -0.6, -0.1, 0.0, 0.3, 0.9, 1.0, 1.5], dtype=torch.float64)


def _grad(q, x):
    x = x.clone().requires_grad_(True)
    q(x).sum().backward()
    return x.grad


def test_sign0_policies():
    x = torch.tensor([-1.0, 0.0, 2.0])
    assert sign0(x, "plus").tolist() == [-1.0, 1.0, 1.0]
    # a negative zero is a zero (+1); NaN is not >= 0 (-1); the dtype is the input's
    edge = sign0(torch.tensor([-0.0, float("nan")], dtype=torch.float64), "plus")
    assert edge.tolist() == [1.0, -1.0] and edge.dtype == torch.float64
    assert sign0(x, "zero").tolist() == [-1.0, 0.0, 1.0]
    torch.manual_seed(0)
    r = sign0(torch.zeros(1000), "random")
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    assert 400 < (r > 0).sum() < 600


@pytest.mark.parametrize("name", ["ste_sign", "ste_clip", "approx_sign"])
def test_forward_is_sign_in_train_and_eval(name):
    q = make_quantizer(name).double()
    expected = torch.where(X >= 0, 1.0, -1.0).double()
    assert torch.equal(q(X), expected)
    q.eval()
    assert torch.equal(q(X), expected)
    assert q.bits == 1


def test_backward_closed_forms():
    assert torch.equal(_grad(make_quantizer("ste_sign"), X), torch.ones_like(X))
    assert torch.equal(_grad(make_quantizer("ste_clip"), X), (X.abs() <= 1).double())
    nan = torch.tensor([float("nan"), 0.5], dtype=torch.float64)
    assert _grad(make_quantizer("ste_clip"), nan).tolist() == [0.0, 1.0]  # NaN is not within the clip
    approx = torch.clamp(2 - 2 * X.abs(), min=0)
    assert torch.allclose(_grad(make_quantizer("approx_sign"), X), approx)


def test_approx_sign_backward_is_derivative_of_its_surrogate():
    # The surrogate of ApproxSign is the piecewise polynomial of Bi-Real; compare its numerical
    # derivative with the quantizer's backward away from the kinks.
    def poly(x):
        xc = x.clamp(-1, 1)
        return 2 * xc - xc * xc.abs()

    x = torch.linspace(-1.5, 1.5, 61, dtype=torch.float64)
    x = x[(x.abs() - 1).abs() > 1e-3]
    h = 1e-6
    numeric = (poly(x + h) - poly(x - h)) / (2 * h)
    assert torch.allclose(_grad(make_quantizer("approx_sign"), x), numeric, atol=1e-6)


def test_identity_is_full_precision():
    q = make_quantizer("identity")
    assert q.bits == 32 and torch.equal(q(X), X)


def test_latent_sign_ties_use_sign_init_and_scaling():
    q = LatentSign(scaling=True)
    q.register_buffer("sign_init", torch.tensor([[1.0, -1.0, 1.0]]))
    w = torch.tensor([[0.0, 0.0, -0.5]])
    out = q(w)
    scale = w.abs().mean()
    assert torch.allclose(out, torch.tensor([[1.0, -1.0, -1.0]]) * scale)
    assert q.hard_sign(w).tolist() == [[True, False, False]]


def test_latent_sign_scaling_of_zero_weights_is_dead():
    """Why LatentHparams rejects scaling with init_scale 0: the scale mean|w| of an all-zero row
    is 0, so the output is 0 and no gradient reaches w (d|w|/dw = 0 at 0) — it never moves."""
    q = LatentSign(scaling=True)
    q.register_buffer("sign_init", torch.tensor([[1.0, -1.0, 1.0]]))
    w = torch.zeros(1, 3, requires_grad=True)
    out = q(w)
    (out * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert out.abs().sum() == 0 and w.grad.abs().sum() == 0
    from bnnsearch.methods.latent import LatentHparams

    with pytest.raises(ValueError, match="never train"):
        LatentHparams(init_scale=0.0, scaling=True).validate()
    LatentHparams(init_scale=0.0, scaling=False).validate()  # the magnitude-independent setting is fine
    LatentHparams(init_scale=1e-4, scaling=True).validate()


def test_latent_sign_clip_grad():
    q = LatentSign(clip_grad=True)
    w = torch.tensor([[-2.0, 0.5, 1.5]], requires_grad=True)
    q(w).sum().backward()
    assert w.grad.tolist() == [[0.0, 1.0, 0.0]]


def test_registry_lists_and_errors():
    assert {"ste_sign", "ste_clip", "approx_sign", "identity", "latent_sign", "stored_sign"} <= set(list_quantizers())
    from bnnsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="known: .*ste_clip"):
        make_quantizer("nope")


@pytest.mark.parametrize("name", ["ste_sign", "ste_clip", "approx_sign"])
def test_binary_values_are_exactly_pm1_in_training(name):
    q = make_quantizer(name)
    x = torch.randn(10000) * 0.3
    out = q(x.requires_grad_(True))
    assert set(out.detach().unique().tolist()) == {-1.0, 1.0}
