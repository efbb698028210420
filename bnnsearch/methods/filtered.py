"""The filtered-gradient optimizer of seed 002 (Quist et al. 2023, Eqs. 10-13; the official
``CEMA_Optimizer``).

Binary weights are stored directly as ±1 (initial signs: the shared random ``sign_init``). Per
weight a momentum EMA m and a second EMA g filter the gradient w.r.t. the binary weight:

    m <- (1 - gamma) m + gamma * grad
    g <- (1 - alpha_t) g + alpha_t * m           alpha_t = alpha * decay(alpha_decay, progress)
    flip theta where g * theta > 0  (theta = -sign(g) wherever g != 0; kept where g == 0)

Three hyperparameters: alpha, gamma, alpha-decay (per iteration, methods.md §4.5.3). Reported:
``sched/alpha`` and the percentiles of |g| (``filtered/g_abs_q10``, ``_q50``, ``_q90``).
Full-precision parameters use their own optimizer (Adam by default, its lr decayed with the
same shape).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nn import binary_layers, weight_quantizer
from ..nn.quantizers import StoredSign
from ..schedules import decay
from .base import ActQuantizer, Decay, FpOptimizer, Method, Scheduled, Setup, check_partition, make_fp_optimizer, percentiles, register_method, set_lr, split_params


@dataclass(frozen=True)
class FilteredHparams:
    alpha: float = 1e-3
    gamma: float = 0.1
    alpha_decay: Decay = "cosine"
    fp_optimizer: FpOptimizer = "adam"
    fp_lr: float = 1e-3
    fp_weight_decay: float = 0.0
    act: ActQuantizer = "ste_clip"

    def validate(self):
        if not 0 < self.alpha <= 1 or not 0 < self.gamma <= 1:
            raise ValueError("alpha and gamma must lie in (0, 1]")
        if self.fp_lr <= 0:
            raise ValueError("fp_lr must be positive")


class FilteredOptimizer(torch.optim.Optimizer):
    """Second-order gradient filter that flips ±1 weights (seed 002, Eq. 17)."""

    def __init__(self, params, alpha: float, gamma: float):
        super().__init__(params, dict(alpha=alpha, gamma=gamma))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            alpha, gamma = group["alpha"], group["gamma"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "m" not in st:
                    st["m"], st["g"] = torch.zeros_like(p), torch.zeros_like(p)
                m, g = st["m"], st["g"]
                m.mul_(1.0 - gamma).add_(p.grad, alpha=gamma)
                g.mul_(1.0 - alpha).add_(m, alpha=alpha)
                p.copy_(torch.where(g * p > 0, -p, p))


@register_method("filtered")
class Filtered(Method):
    Hparams = FilteredHparams

    def weight_quantizer(self, hp, sign0: str):
        return lambda layer: StoredSign(sign0=sign0)

    def init_binary(self, model, hp):
        with torch.no_grad():
            for _, layer in binary_layers(model):
                layer.parametrizations.weight.original.copy_(weight_quantizer(layer).sign_init)

    def setup(self, model, hp: FilteredHparams, total_steps: int, info=None) -> Setup:
        binary, fp = split_params(model)
        opt_b = FilteredOptimizer(binary, hp.alpha, hp.gamma)
        opts = [opt_b]
        if fp:
            opts.append(make_fp_optimizer(hp.fp_optimizer, fp, hp.fp_lr, hp.fp_weight_decay))
        check_partition(model, opts)
        sched = [Scheduled("alpha", lambda p: hp.alpha * decay(hp.alpha_decay, p), set_lr(opt_b, "alpha"))]
        if fp:
            sched.append(Scheduled("fp_lr", lambda p: hp.fp_lr * decay(hp.alpha_decay, p), set_lr(opts[1])))

        def filter_state():
            """methods.md §4.4: the distribution of |g| (its distance from the flip threshold 0),
            as the 10th, 50th and 90th percentiles over every binary weight (lower: the nearest
            order statistic), on the device (the epoch's one host read takes them)."""
            gs = [st["g"].reshape(-1) for st in opt_b.state.values() if "g" in st]
            return percentiles(torch.cat(gs).abs(), "filtered/g_abs") if gs else {}

        return Setup(opts, sched, epoch_metrics=[filter_state])
