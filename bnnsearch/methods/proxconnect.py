"""ProxConnect++ (seed 003; methods.md §5): latent weights w, forward F^{mu_t}(w), backward
multiplier b^{mu_t}(w), for the pairs BC, BNN, BNN+, BNN++ and PC (see ``nn/prox.py``).

mu moves from mu_0 to mu_T by ``mu_schedule``: ``linear``, ``exponential`` (geometric), or, on
the inverse slope 1/mu, ``cosine`` or ``sigmoid`` (PARQ's two annealings, methods.md §5.1 [RECON]:
``sigmoid`` is PARQ's normalized mirror sigmoid with steepness ``mu_steepness``, default 10 as in
PARQ, almost linear below 1). With ``pair: pc``, ``pc_jump`` rho >= 0 selects the PC prox map of
Dockhorn's family with a jump at 0, clip(mu w + rho sign(w), -1, 1) ([RECON] variant; rho = 0 is
the binary PARQ/AProx map, the default). An optional final hard phase
(``hard_phase``: fraction of training) uses F = sign. Evaluation is always hard sign, so
``val/acc`` and ``test/acc`` are hard-sign accuracies; ``train/acc`` is measured with the soft
forward, and ``prox/soft_fraction`` shows how much of the network is still soft; ``val/acc_soft``
(``test/acc_soft``) evaluates the soft network itself, and ``prox/quant_gap`` is
||F(w) - sign(w)|| / sqrt(n) over every binary weight (methods.md §5.4).
Latent weights use Adam (or SGD) at ``lr``; with ``pair: bnn`` and ``clip`` they are clipped to
[-1, 1] after each step (original BNN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..nn import binary_layers, weight_quantizer
from ..nn.binarize import stored_weight
from ..nn.prox import ProxConnect
from ..schedules import decay, interpolate
from .base import ActQuantizer, Decay, FpOptimizer, Method, Scheduled, Setup, check_partition, make_fp_optimizer, quantizer_flag, register_method, set_lr, split_params


@dataclass(frozen=True)
class ProxHparams:
    pair: Literal["bc", "bnn", "bnn+", "bnn++", "pc"] = "bnn++"
    mu0: float = 1.0
    muT: float = 100.0
    mu_schedule: Literal["linear", "exponential", "cosine", "sigmoid"] = "exponential"
    mu_steepness: float = 10.0  # ``sigmoid`` only: PARQ's steepness s of the annealing of 1/mu
    pc_jump: float = 0.0  # ``pair: pc`` only: rho, the jump of the prox map at 0 [RECON]
    hard_phase: float = 0.0
    beta: float = 5.0
    clip: bool = True
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    lr_decay: Decay = "cosine"
    fp_optimizer: FpOptimizer = "adam"
    fp_lr: float = 1e-3
    act: ActQuantizer = "ste_clip"

    def validate(self):
        if self.mu0 <= 0 or self.muT <= 0 or self.beta <= 0 or self.lr <= 0 or self.fp_lr <= 0:
            raise ValueError("mu0, muT, beta, lr and fp_lr must be positive")
        if not 0 <= self.hard_phase < 1:
            raise ValueError("hard_phase must lie in [0, 1)")
        if self.mu_steepness <= 0:
            raise ValueError("mu_steepness must be positive")
        if self.pc_jump < 0:
            raise ValueError("pc_jump must be >= 0")


def mirror_sigmoid(p: float, s: float) -> float:
    """PARQ's normalized mirror sigmoid: 1 at p = 0 falling to 0 at p = 1, steepness s (almost
    linear for s < 1): (σ(-s(p - ½)) - σ(-s/2)) / (σ(s/2) - σ(-s/2))."""
    p = min(max(p, 0.0), 1.0)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    lo, hi = sig(-0.5 * s), sig(0.5 * s)
    return (sig(-s * (p - 0.5)) - lo) / (hi - lo)


def mu_at(hp: ProxHparams, p: float) -> float:
    inv0, inv1 = 1.0 / hp.mu0, 1.0 / hp.muT
    if hp.mu_schedule == "cosine":
        return 1.0 / interpolate("cosine", inv0, inv1, p)
    if hp.mu_schedule == "sigmoid":
        return 1.0 / (inv1 + (inv0 - inv1) * mirror_sigmoid(p, hp.mu_steepness))
    return interpolate(hp.mu_schedule, hp.mu0, hp.muT, p)


class _ClipLatent(torch.optim.Optimizer):
    """Clamps the latent weights to [-1, 1] after the wrapped optimizer's step (original BNN)."""

    def __init__(self, inner: torch.optim.Optimizer):
        self.inner = inner
        self.param_groups = inner.param_groups
        self.defaults = inner.defaults
        self.state = inner.state

    def zero_grad(self, set_to_none: bool = True):
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        self.inner.step()
        for g in self.param_groups:
            for p in g["params"]:
                p.clamp_(-1.0, 1.0)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, sd):
        self.inner.load_state_dict(sd)


@register_method("proxconnect")
class ProxConnectMethod(Method):
    Hparams = ProxHparams

    def eval_variants(self):
        """``val/acc_soft``, ``test/acc_soft`` (after the last epoch): the network evaluated with the training forward F
        (methods.md §5.4's train/eval gap; ``val/acc`` is the hard-sign network, pitfall 5.5.2).
        The same as ``val/acc`` for the hard-forward pairs (bc, bnn, bnn+) and in the hard phase."""
        return {"soft": lambda model: quantizer_flag(model, "eval_soft")}

    def weight_quantizer(self, hp: ProxHparams, sign0: str):
        return lambda layer: ProxConnect(sign0=sign0, pair=hp.pair, mu=hp.mu0, beta=hp.beta, jump=hp.pc_jump)

    def setup(self, model, hp: ProxHparams, total_steps: int, info=None) -> Setup:
        binary, fp = split_params(model)
        if hp.optimizer == "adam":
            opt_b = torch.optim.Adam(binary, lr=hp.lr)
        else:
            opt_b = torch.optim.SGD(binary, lr=hp.lr, momentum=0.9)
        if hp.pair == "bnn" and hp.clip:
            opt_b = _ClipLatent(opt_b)
        opts = [opt_b] + ([make_fp_optimizer(hp.fp_optimizer, fp, hp.fp_lr)] if fp else [])
        check_partition(model, opts)
        qs = [(weight_quantizer(l), stored_weight(l)) for _, l in binary_layers(model)]

        def set_mu(v: float):
            for q, _ in qs:
                q.mu.fill_(v)

        def set_hard(v: float):
            for q, _ in qs:
                q.hard_phase = v > 0

        sched = [
            Scheduled("mu", lambda p: mu_at(hp, p), set_mu),
            Scheduled("hard_phase", lambda p: float(hp.hard_phase > 0 and p >= 1.0 - hp.hard_phase), set_hard),
            Scheduled("lr", lambda p: hp.lr * decay(hp.lr_decay, p), set_lr(opt_b)),
        ]
        if fp:
            sched.append(Scheduled("fp_lr", lambda p: hp.fp_lr * decay(hp.lr_decay, p), set_lr(opts[-1])))

        def soft_fraction():
            n = sum(w.numel() for _, w in qs)
            with torch.no_grad():  # methods.md §5.4: ||F(w) - sign(w)|| / sqrt(n) over every binary weight
                gap = torch.sqrt(sum((q.train_forward(w) - q.hard(w)).pow(2).sum() for q, w in qs) / n)
            return {"prox/soft_fraction": sum(q.soft_fraction(w) * w.numel() for q, w in qs) / n,
                    "prox/quant_gap": gap, "prox/hard_phase": float(qs[0][0].hard_phase)}

        return Setup(opts, sched, epoch_metrics=[soft_fraction])
