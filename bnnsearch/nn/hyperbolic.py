"""Hyperbolic weight parametrization for HBNN (seed 000; methods.md §2).

Poincare ball of curvature -c, radius r = 1/sqrt(c) (geoopt / Ganea et al. 2018 conventions),
numerically safe: norms clamped at 1e-15, artanh arguments at 1 - 1e-5, points projected into
the ball of radius (1 - 1e-5) / sqrt(c). The sphere S_r (SBNN) is the ablation variant.

The exponential parametrization cluster (EPC) [RECON: the paper's Eqs. 9 and 12 were not
available; this is methods.md's recommended reading, with the alternatives selectable]:
per binarized layer a cluster F = {p_1..p_t} of learnable base points; output filter j
(v_j = w_tilde[j].flatten()) is mapped by exp_{p_a(j)}(v_j) and binarized by sign. exp at the
origin is a positive rescaling (it can never change a sign); a moved base point can.
Assignment a(j): ``roundrobin`` (j mod t, fixed), ``nearest`` (the point closest to
exp_0(v_j)) or ``loss``: the paper's "find the optimal phi_F_i" read per layer [RECON] — every
cluster step, each layer in turn takes the one point (for all its vectors) whose map gives the
lowest minibatch loss, the other layers as they are (``HBNN.choose_points``; the choice is the
buffer ``choice``, checkpointed).
A cluster of no points (``cluster_size`` 0) is HBNN without EPC: exp at the origin (on the
sphere, the cheap parametrization r v / |v|), which changes the gradient geometry and never a
sign — the control that shows what the cluster adds. ``granularity`` chooses the vectors the
map acts on (methods.md §2.5 pitfall 3): each output ``filter`` (the default), the whole
``layer`` as one vector, or each ``element`` (where exp_0 is a scalar tanh).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .quantizers import Quantizer, _clip_surrogate, _straight, recu_clamp, register_quantizer

MIN_NORM = 1e-15
BALL_EPS = 1e-5


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)


def project(x: torch.Tensor, c: float) -> torch.Tensor:
    maxnorm = (1 - BALL_EPS) / math.sqrt(c)
    n = _norm(x)
    return torch.where(n > maxnorm, x / n * maxnorm, x)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    xy = (x * y).sum(-1, keepdim=True)
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    den = 1 + 2 * c * xy + c * c * x2 * y2
    return num / den.clamp_min(MIN_NORM)


def expmap0(v: torch.Tensor, c: float) -> torch.Tensor:
    sc = math.sqrt(c)
    n = _norm(v)
    return project(torch.tanh(sc * n) * v / (sc * n), c)


def logmap0(y: torch.Tensor, c: float) -> torch.Tensor:
    sc = math.sqrt(c)
    n = _norm(y)
    return torch.atanh((sc * n).clamp(max=1 - BALL_EPS)) * y / (sc * n)


def expmap(x: torch.Tensor, v: torch.Tensor, c: float) -> torch.Tensor:
    """exp_x(v) = project(x (+)_c tanh(sqrt(c) lam_x |v| / 2) v / (sqrt(c) |v|)), lam_x = 2 / (1 - c|x|^2).

    The Moebius sum and the projection are linear in x and v with per-row coefficients built from
    three row reductions (|x|^2, |v|^2, x.v): out = (a x + b v) f, with the norm of a x + b v that
    the projection needs expanded from the same reductions. That is the formula of ``mobius_add``
    then ``project`` (equal to 1e-15 in float64, gradients too: tests/test_hbnn.py) with 6 instead
    of ~25 operations on the full weight; it runs for every binary layer in every forward pass.
    (Small networks on a CPU pay mostly per-operation overhead: an HBNN epoch of mlp 256x3 on
    mnist1d took ~12 % less CPU time than with the direct formula, 1 thread, 2026-12-04.)"""
    sc = math.sqrt(c)
    x2 = (x * x).sum(-1, keepdim=True)
    v2 = (v * v).sum(-1, keepdim=True)
    xv = (x * v).sum(-1, keepdim=True)
    n = v2.sqrt().clamp_min(MIN_NORM)
    lam = 2 / (1 - c * x2).clamp_min(MIN_NORM)
    s = torch.tanh(sc * lam * n / 2) / (sc * n)  # the Moebius sum's second term is s v
    xy, y2 = s * xv, s * s * v2
    den = (1 + 2 * c * xy + c * c * x2 * y2).clamp_min(MIN_NORM)
    a = (1 + 2 * c * xy + c * y2) / den
    b = (1 - c * x2) * s / den
    norm = (a * a * x2 + 2 * a * b * xv + b * b * v2).clamp_min(0).sqrt().clamp_min(MIN_NORM)
    maxnorm = (1 - BALL_EPS) / sc
    f = torch.where(norm > maxnorm, maxnorm / norm, torch.ones_like(norm))  # project into the ball
    return (a * f) * x + (b * f) * v


def sphere_exp(p: torch.Tensor, v: torch.Tensor, r: float) -> torch.Tensor:
    """exp on the sphere of radius r at p (|p| = r), of v projected onto the tangent space:
    cos(n/r) p + r sin(n/r) vt / n, vt = v - (v.p / r^2) p, n = |vt| = sqrt(|v|^2 - (v.p)^2 / r^2),
    as (coefficient) p + (coefficient) v from two row reductions. The gradient in p's tangent
    space (all that RiemannianSGD uses) equals the direct formula's; its radial part differs."""
    vp = (v * p).sum(-1, keepdim=True)
    v2 = (v * v).sum(-1, keepdim=True)
    n = (v2 - vp * vp / (r * r)).clamp_min(0).sqrt().clamp_min(MIN_NORM)
    k = r * torch.sin(n / r) / n
    return (torch.cos(n / r) - k * vp / (r * r)) * p + k * v


def rbnn_surrogate(x: torch.Tensor, t: float) -> torch.Tensor:
    """S with S'(x) = k max(0, sqrt2 t - t^2 |x|), k = max(1/t, 1) (RBNN's training-aware sign)."""
    k = max(1.0 / t, 1.0)
    b = math.sqrt(2) / t
    xc = x.clamp(-b, b)
    return k * (math.sqrt(2) * t * xc - t * t * xc * xc.abs() / 2)


@register_quantizer("hbnn")
class HyperbolicSign(Quantizer):
    def __init__(self, sign0="plus", out_channels=1, n=1, manifold="ball", radius=0.05, cluster_size=1,
                 cluster_init=0.5, assign="roundrobin", ste="identity", scale=True, generator=None,
                 granularity="filter"):
        super().__init__(sign0)
        if manifold not in ("ball", "sphere") or assign not in ("roundrobin", "nearest", "loss") or \
                ste not in ("identity", "clip", "approx", "rbnn") or granularity not in ("filter", "layer", "element"):
            raise ValueError("bad HBNN option")
        self.manifold, self.r, self.c = manifold, radius, 1.0 / radius**2
        self.assign, self.ste, self.ste_t = assign, ste, 1e-2
        self.granularity = granularity
        self.tau = 1.0  # ReCU's τ clamp of u (1 = off); a host value set by the method's schedule
        # the vectors phi acts on: [rows, dim] (n: one filter's size)
        rows, dim = {"filter": (out_channels, n), "layer": (1, out_channels * n), "element": (out_channels * n, 1)}[granularity]
        d = torch.randn(cluster_size, dim, generator=generator)
        d = d / d.norm(dim=1, keepdim=True)
        # Base points: on the sphere, on S_r; in the ball, at cluster_init * r in random directions.
        pts = d * radius * (1.0 if manifold == "sphere" else cluster_init)
        self.cluster = nn.Parameter(pts)  # [0, dim] without EPC: exp at the origin
        self.cluster._bnn_cluster = True
        self.register_buffer("rr_index", torch.arange(rows) % max(cluster_size, 1))
        # assign: loss, this layer's point (in the state dict only then: older files load as they are)
        self.register_buffer("choice", torch.zeros((), dtype=torch.long), persistent=assign == "loss")
        self.alpha = nn.Parameter(torch.ones(out_channels)) if scale else None

    def rows(self, w: torch.Tensor) -> torch.Tensor:
        """The vectors the exponential map acts on, ``[rows, dim]`` (``granularity``)."""
        if self.granularity == "filter":
            return w.flatten(1)
        return w.reshape(1, -1) if self.granularity == "layer" else w.reshape(-1, 1)

    def assignment(self, v: torch.Tensor) -> torch.Tensor:
        """Each vector's cluster point index (v: the latent vectors, ``rows(w)``); all 0 with no
        cluster (no point to index: the origin)."""
        if self.assign == "roundrobin" or self.cluster.shape[0] <= 1:
            return self.rr_index
        if self.assign == "loss":
            return self.choice.expand(v.shape[0])
        with torch.no_grad():
            anchor = expmap0(v, self.c) if self.manifold == "ball" else v / _norm(v) * self.r
            return torch.cdist(anchor, self.cluster.detach()).argmin(dim=1)

    def points(self, v: torch.Tensor) -> torch.Tensor:
        return self.cluster[self.assignment(v)]

    def phi(self, w: torch.Tensor) -> torch.Tensor:
        """The hyperbolic weight phi_F(w_tilde), shaped like w."""
        v = self.rows(w)
        if self.cluster.shape[0] == 0:  # no EPC: exp at the origin
            out = expmap0(v, self.c) if self.manifold == "ball" else v / _norm(v) * self.r
        else:
            p = self.points(v)
            out = expmap(p, v, self.c) if self.manifold == "ball" else sphere_exp(p, v, self.r)
        return out.view_as(w)

    def surrogate(self, h):
        """S with S'(h) = the STE's derivative at u = h / s, s = each filter's RMS coordinate
        (detached) [RECON]: the hyperbolic coordinates are tiny (|h_j| < r, r = 0.05), so the
        surrogates' unit-scale bounds (clip at |u| <= 1, 2 - 2|u|, RBNN's sqrt2/t) are measured
        in units of the filter's own spread, like ReCU's standardized weights — applied to h
        itself, clip would equal identity and approx 2 x identity. S(h) = s * f(h / s).

        With ReCU's τ clamp on (``tau`` < 1) u is first clamped to ±Q_τ, Q_τ = -E|u| log(2 - 2τ)
        (``recu_clamp``; [RECON]: whether HBNN uses the clamp, and on which coordinates, is not
        known — this puts it on the standardized coordinates, where ReCU puts it, so clamped
        weights get no gradient; the sign is unchanged)."""
        if self.ste == "identity" and self.tau >= 1.0:
            return h
        s = h.detach().pow(2).mean(dim=tuple(range(1, h.ndim)), keepdim=True).sqrt().clamp_min(MIN_NORM)
        u = recu_clamp(h / s, self.tau)
        if self.ste == "identity":
            f = u
        elif self.ste == "clip":
            f = _clip_surrogate(u)
        elif self.ste == "approx":
            uc = u.clamp(-1.0, 1.0)
            f = 2 * uc - uc * uc.abs()
        else:
            f = rbnn_surrogate(u, self.ste_t)
        return s * f

    def forward(self, w):
        h = self.phi(w)
        out = _straight(self.surrogate(h), self.hard(h)) if self.training else self.hard(h)
        if self.alpha is not None:
            out = out * self.alpha.view(-1, *([1] * (w.ndim - 1)))
        return out

    def hard_sign(self, w):
        with torch.no_grad():
            return self.phi(w.detach()) > 0

    def boundary(self) -> torch.Tensor:
        """Largest sqrt(c) * |p_i| (1 = the ball's boundary; always 1 on the sphere; 0 without points)."""
        if self.cluster.shape[0] == 0:
            return self.cluster.new_zeros(())
        return self.cluster.detach().norm(dim=1).max() * math.sqrt(self.c)

    def inference_params(self) -> int:
        return self.alpha.numel() if self.alpha is not None else 0


class RiemannianSGD(torch.optim.Optimizer):
    """RSGD for cluster points: ball: p <- proj(p - lr * ((1 - c|p|^2)^2 / 4) grad) (retraction);
    sphere: tangent projection, step, renormalisation to radius r."""

    def __init__(self, params, lr: float, c: float, manifold: str):
        super().__init__(params, dict(lr=lr, c=c, manifold=manifold))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            c, lr = g["c"], g["lr"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                if g["manifold"] == "ball":
                    factor = (1 - c * (p * p).sum(-1, keepdim=True)) ** 2 / 4
                    p.copy_(project(p - lr * factor * p.grad, c))
                else:
                    r = 1 / math.sqrt(c)
                    gt = p.grad - (p.grad * p).sum(-1, keepdim=True) / (r * r) * p
                    q = p - lr * gt
                    p.copy_(q / _norm(q) * r)
