"""Latent-weight SGD in the paper's form of seed 002 (Quist et al. 2023, Eqs. 1-5).

    m_i = (1 - gamma) m_{i-1} + gamma * grad_theta        (gamma = 1 - momentum)
    w_i = w_{i-1} - eps * (m_i + lambda * w_{i-1})          (written (1 - eps*lambda) w - eps m)
    theta_i = sign(w_i)

Seven hyperparameters (the paper's Table 1): lr (eps), lr decay schedule, init scale (0 is the
magnitude-independent zero init), momentum, weight decay (lambda), scaling on/off, clipping
on/off. With zero init, no scaling and no clipping this is sign-equivalent to the filtered
optimizer with alpha = eps * lambda (methods.md §4.1, equivalence 1); the update is written so
the equivalence is bitwise when lambda is a power of two (see tests/test_equivalence.py).

Clipping [RECON]: the paper's "clipping" covers two practices; ``clip_mode`` selects
``grad`` (default: the STE passes gradient only where |w| <= 1), ``latent`` (clamp w to
[-1, 1] after each step, Courbariaux et al.) or ``both``.
Full-precision parameters (first/last layer, BN) use their own optimizer (Adam by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..nn.quantizers import LatentSign
from ..schedules import decay
from .base import ActQuantizer, Decay, FpOptimizer, Method, Scheduled, Setup, check_partition, make_fp_optimizer, register_method, set_lr, split_params



@dataclass(frozen=True)
class LatentHparams:
    lr: float = 10.0  # with zero-mean kaiming init ~0.04 and weight_decay 1e-3 (alpha = 1e-2); chosen by a scan on mnist5k
    lr_decay: Decay = "cosine"
    init_scale: float = 1.0  # times the arch's default init; 0 = zero init (ties -> shared random signs)
    momentum: float = 0.9
    weight_decay: float = 1e-3
    scaling: bool = False
    clipping: bool = False
    clip_mode: Literal["grad", "latent", "both"] = "grad"
    fp_optimizer: FpOptimizer = "adam"
    fp_lr: float = 1e-3
    fp_weight_decay: float = 0.0
    act: ActQuantizer = "ste_clip"

    def validate(self):
        if self.lr <= 0 or self.fp_lr <= 0:
            raise ValueError("lr and fp_lr must be positive")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must lie in [0, 1)")
        if self.weight_decay < 0 or self.init_scale < 0:
            raise ValueError("weight_decay and init_scale must be >= 0")
        if self.scaling and self.init_scale == 0:  # not a slow start: nothing ever trains
            raise ValueError("scaling with init_scale 0: the per-channel scale mean|w| is 0, so the binary "
                             "layers output 0, their weights get no gradient and never train")


class LatentSGD(torch.optim.Optimizer):
    """Seed 002's latent update (EMA momentum, decoupled weight decay inside the lr)."""

    def __init__(self, params, lr: float, gamma: float, weight_decay: float, clip_latent: bool = False):
        super().__init__(params, dict(lr=lr, gamma=gamma, weight_decay=weight_decay, clip_latent=clip_latent))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, gamma, wd = group["lr"], group["gamma"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "m" not in st:
                    st["m"] = torch.zeros_like(p)
                m = st["m"]
                m.mul_(1.0 - gamma).add_(p.grad, alpha=gamma)
                p.mul_(1.0 - lr * wd).add_(m, alpha=-lr)
                if group["clip_latent"]:
                    p.clamp_(-1.0, 1.0)


@register_method("latent")
class Latent(Method):
    Hparams = LatentHparams

    def weight_quantizer(self, hp: LatentHparams, sign0: str):
        clip_grad = hp.clipping and hp.clip_mode in ("grad", "both")
        return lambda layer: LatentSign(sign0=sign0, scaling=hp.scaling, clip_grad=clip_grad)

    def init_binary(self, model, hp: LatentHparams):
        binary, _ = split_params(model)
        with torch.no_grad():
            for p in binary:
                p.mul_(hp.init_scale)

    def setup(self, model, hp: LatentHparams, total_steps: int, info=None) -> Setup:
        binary, fp = split_params(model)
        clip_latent = hp.clipping and hp.clip_mode in ("latent", "both")
        opt_b = LatentSGD(binary, hp.lr, 1.0 - hp.momentum, hp.weight_decay, clip_latent)
        opts = [opt_b]
        if fp:
            opts.append(make_fp_optimizer(hp.fp_optimizer, fp, hp.fp_lr, hp.fp_weight_decay))
        check_partition(model, opts)
        sched = [Scheduled("lr", lambda p: hp.lr * decay(hp.lr_decay, p), set_lr(opt_b))]
        if fp:
            sched.append(Scheduled("fp_lr", lambda p: hp.fp_lr * decay(hp.lr_decay, p), set_lr(opts[1])))

        def magnitudes():  # methods.md §4.4: the share of latent weights in the clipping region, and |w|
            n = sum(p.numel() for p in binary)
            out = sum((p.detach().abs() > 1).sum() for p in binary) / n
            return {"latent/clip_fraction": out, "latent/mean_abs": sum(p.detach().abs().sum() for p in binary) / n}

        return Setup(opts, sched, epoch_metrics=[magnitudes])
