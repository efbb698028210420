"""ProxConnect++ forward/backward quantizer pairs (seed 003, methods.md §5).

A pair is a forward map F and a backward *multiplier* b (pitfall 5.5.1: the multiplier reading
is unambiguous): the latent update is w <- w - eta * b(w) * dL/dF. Written with the detach
trick: value F(w), gradient b(w) = S'(w) for a surrogate S.

| pair    | F (forward)                          | b (backward multiplier)                     |
|---------|--------------------------------------|---------------------------------------------|
| bc      | sign(w)                              | 1                                           |
| bnn     | sign(w)                              | 1{|w| <= 1} (+ optional latent clip)        |
| bnn+    | sign(w)                              | SS'_beta(w)                                  |
| bnn++   | SS_mu(w) = 2s(mu w)[1 + mu w (1 - s(mu w))] - 1 | SS'_mu(w), its exact derivative  |
| pc      | clip(mu w, -1, 1) (binary PARQ/AProx prox map [RECON]) | 1                         |

``jump`` rho > 0 (pc only) gives the generic piecewise-linear member of Dockhorn's family with a
jump at 0, clip(mu w + rho sign(w), -1, 1) [RECON]: rho = 0 is the map above, rho >= 1 is sign.

mu is a buffer moved by the method's schedule. In eval mode (and during an optional final hard
phase, ``hard=True``) the forward is sign(w); the backward multiplier stays the pair's.
``eval_soft`` (set only around an evaluation, ``ProxConnectMethod.eval_variants``) evaluates
with the training forward F instead: the soft network that was trained, next to the binary one.
SignSwish is non-monotone (b < 0 beyond its overshoot) and is implemented exactly, unclamped.
"""
from __future__ import annotations

import torch

from .quantizers import Quantizer, _clip_surrogate, _straight, register_quantizer

PAIRS = ("bc", "bnn", "bnn+", "bnn++", "pc")


def signswish(x: torch.Tensor, mu) -> torch.Tensor:
    """SS_mu(x) = 2 sigma(mu x) [1 + mu x (1 - sigma(mu x))] - 1 = 2 d/dx[x sigma(mu x)] - 1."""
    s = torch.sigmoid(mu * x)
    return 2 * s * (1 + mu * x * (1 - s)) - 1


def signswish_grad(x: torch.Tensor, beta) -> torch.Tensor:
    """SS'_beta(x) = beta [2 - beta x tanh(beta x / 2)] / (1 + cosh(beta x)) (BNN+, bitorch)."""
    bx = beta * x
    return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))


@register_quantizer("proxconnect")
class ProxConnect(Quantizer):
    def __init__(self, sign0: str = "plus", pair: str = "bnn++", mu: float = 1.0, beta: float = 5.0,
                 jump: float = 0.0):
        super().__init__(sign0)
        if pair not in PAIRS:
            raise ValueError(f"unknown ProxConnect pair {pair!r}; choose one of {PAIRS}")
        self.pair, self.beta, self.jump = pair, beta, float(jump)
        self.register_buffer("mu", torch.tensor(float(mu)), persistent=True)
        self.hard_phase = False
        self.eval_soft = False

    def surrogate(self, w: torch.Tensor) -> torch.Tensor:
        """S with S' = b (the backward multiplier)."""
        if self.pair in ("bc", "pc"):
            return w
        if self.pair == "bnn":
            return _clip_surrogate(w)
        if self.pair == "bnn+":
            return signswish(w, self.beta)
        return signswish(w, self.mu)  # bnn++

    def soft(self, w: torch.Tensor) -> torch.Tensor:
        """The training forward map F."""
        if self.pair == "bnn++":
            return signswish(w, self.mu)
        if self.pair == "pc":
            if self.jump:
                return (self.mu * w + self.jump * torch.sign(w)).clamp(-1.0, 1.0)
            return (self.mu * w).clamp(-1.0, 1.0)
        return self.hard(w)

    def train_forward(self, w: torch.Tensor) -> torch.Tensor:
        """The value of the training forward (no gradient): F(w), or sign(w) in the hard phase."""
        return self.hard(w) if self.hard_phase else self.soft(w)

    def forward(self, w):
        if not self.training:
            return self.train_forward(w) if self.eval_soft else self.hard(w)
        if self.hard_phase:
            return _straight(self.surrogate(w), self.hard(w))
        if self.pair == "bnn++":
            return self.soft(w)  # exact derivative
        return _straight(self.surrogate(w), self.soft(w))

    def soft_fraction(self, w: torch.Tensor) -> torch.Tensor:
        """Share of weights still in the soft regime (0 for hard-forward pairs)."""
        w = w.detach()
        if self.hard_phase or self.pair not in ("pc", "bnn++"):
            return torch.zeros((), device=w.device)
        bound = max(0.0, 1.0 - self.jump) / self.mu if self.pair == "pc" else 2.4 / self.mu
        return (w.abs() < bound).float().mean()

    def extra_repr(self):
        return f"{super().extra_repr()}, pair={self.pair}, beta={self.beta}" + (f", jump={self.jump}" if self.jump else "")
