"""Quantizers: a forward map, a backward map and a ``bits`` attribute.

Every quantizer is an ``nn.Module`` registered by name. Weight quantizers are used as
``torch.nn.utils.parametrize`` parametrizations of conv/linear weights (see ``binarize``);
activation quantizers are applied to the input of binary layers. The cost model and the
optimizer routing read ``bits``; nothing is guessed from layer names.

Backward maps are written with the detach trick ``(surrogate - surrogate.detach()) + forward``:
the value is the forward map and the gradient is the surrogate's derivative. This keeps every
quantizer a plain differentiable expression (compile-friendly, no custom autograd state).

sign(0) policy (methods.md §1): ``plus`` (default) maps 0 to +1, ``random`` draws ±1,
``zero`` keeps torch.sign's 0 (code-faithful to some releases; not binary). The ``random``
coins come from the training stream (``nn/rng.py``), which checkpoints restore.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import Registry
from . import rng

QUANTIZERS: Registry[type] = Registry("quantizer")
register_quantizer = QUANTIZERS.register
SIGN0_POLICIES = ("plus", "random", "zero")


def _pm1(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """+1 where ``mask``, else -1: ``torch.where(mask, 1.0, -1.0)`` without its scalar operands,
    which make where about 3x slower per element on the CPU (torch 2.14)."""
    return mask.to(dtype).mul_(2).sub_(1)


def sign0(x: torch.Tensor, policy: str = "plus") -> torch.Tensor:
    """sign with an explicit policy for exact zeros."""
    if policy == "plus":
        return _pm1(x >= 0, x.dtype)  # NaN -> -1, as where(x >= 0, 1, -1)
    if policy == "zero":
        return torch.sign(x)
    if policy == "random":
        coin = _pm1(rng.rand_like(x) >= 0.5, x.dtype)
        return torch.where(x == 0, coin, torch.sign(x))
    raise ValueError(f"unknown sign0 policy {policy!r}; choose one of {SIGN0_POLICIES}")


class _ClipGrad(torch.autograd.Function):
    """Value x, gradient ``where(|x| <= 1, g, 0)``: what ``torch.where(|x| <= 1, x, x.detach())``
    computes, without its forward where and with a masked fill for its backward one (a where
    with a scalar operand, about 3x slower per element on the CPU)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(~(x.abs() <= 1.0))  # a mask, as the where kept (NaN x: dropped, as there)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        (drop,) = ctx.saved_tensors
        return g.masked_fill(drop, 0.0)


def _clip_surrogate(x: torch.Tensor) -> torch.Tensor:
    """Value x, gradient 1{|x| <= 1} (boundary included, unlike clamp's gradient)."""
    return _ClipGrad.apply(x)


def _straight(surrogate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Exactly the value of ``value``, the gradient of ``surrogate``. (The usual
    ``s + (v - s).detach()`` is off by rounding: 'binary' values like 0.99999994.)"""
    return (surrogate - surrogate.detach()) + value.detach()


def recu_tau(epoch: int, epochs: int, tau_min: float, tau_max: float) -> float:
    """ReCU's τ at the start of ``epoch`` (0-based) of ``epochs``: A e^(epoch/epochs) + B with
    τ(0) = tau_min and τ(epochs) = tau_max (ReCU ``cpt_tau``)."""
    a = (tau_max - tau_min) / (math.e - 1)
    return a * math.exp(epoch / max(epochs, 1)) + tau_min - a


def recu_clamp(w: torch.Tensor, tau: float) -> torch.Tensor:
    """ReCU's clamp of standardized weights to ±Q_τ, Q_τ = -E|w| log(2 - 2τ) (detached; no host
    sync: the bound stays a tensor). τ >= 1 is no clamp."""
    if tau >= 1.0:
        return w
    q = (-math.log(2.0 - 2.0 * tau)) * w.detach().abs().mean()
    return torch.minimum(torch.maximum(w, -q), q)


class Quantizer(nn.Module):
    """Base class. Subclasses define ``forward`` (training map) and ``hard`` (evaluation map).

    ``bits`` is the precision of the values this quantizer emits at inference.
    In eval mode every quantizer returns its hard map (binary networks are always evaluated
    with hard sign weights and activations, methods.md §1).
    """

    bits: int = 1

    def __init__(self, sign0: str = "plus"):
        super().__init__()
        if sign0 not in SIGN0_POLICIES:
            raise ValueError(f"unknown sign0 policy {sign0!r}")
        self.sign0 = sign0

    def hard(self, x: torch.Tensor) -> torch.Tensor:
        return sign0(x, self.sign0)

    def hard_sign(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean 'is +1' of the binary value ``x`` maps to (for flip statistics)."""
        return self.hard(x.detach()) > 0

    def pack_key(self):
        """Packed trials (nn/pack.py): a key equal for quantizers that may be applied once to
        all members' activations together, or None (applied to each member's slice). Only
        stateless element-wise maps that draw no random numbers return a key."""
        return None

    def stack_key(self):
        """Packed trials: a key equal for weight quantizers whose ``forward_stacked`` maps all
        members' stacked weights at once (None: each member's slice separately)."""
        return None

    def hard_sign_stacked(self, w: torch.Tensor, init_pos: torch.Tensor | None) -> torch.Tensor | None:
        """Packed trials: ``hard_sign`` of all members' stacked weights ``[K, ...]`` in one call
        (``init_pos``: their stacked ``sign_init > 0``, or None), for quantizers with a
        ``stack_key``; None where only each member's own ``hard_sign`` can say it (the engine
        then asks the members one by one: the same values, K times the calls)."""
        return None

    def forward_stacked(self, w: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
        """``forward`` of every member at once on stacked weights ``[K, out, ...]`` (``init``:
        the members' stacked ``sign_init``). Only quantizers with a ``stack_key``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"bits={self.bits}, sign0={self.sign0}"


@register_quantizer("identity")
class Identity(Quantizer):
    """Full precision: forward and backward are the identity (bits=32)."""

    bits = 32

    def pack_key(self):
        return (type(self).__name__, self.sign0) if self.sign0 != "random" else None

    def forward(self, x):
        return x

    def hard(self, x):
        return x


@register_quantizer("ste_sign")
class SteSign(Quantizer):
    """F = sign, B = identity (the plain straight-through estimator, BinaryConnect's pair)."""

    def pack_key(self):
        return (type(self).__name__, self.sign0) if self.sign0 != "random" else None

    def forward(self, x):
        if not self.training:
            return self.hard(x)
        return _straight(x, self.hard(x))


@register_quantizer("ste_clip")
class SteClipSign(Quantizer):
    """F = sign, B = 1{|x| <= 1} (the BNN/Hubara STE with gradient cancelling)."""

    def pack_key(self):
        return (type(self).__name__, self.sign0) if self.sign0 != "random" else None

    def forward(self, x):
        if not self.training:
            return self.hard(x)
        return _straight(_clip_surrogate(x), self.hard(x))


@register_quantizer("approx_sign")
class ApproxSign(Quantizer):
    """F = sign, B = max(0, 2 - 2|x|) (Bi-Real's ApproxSign; ReCU's activation surrogate)."""

    def pack_key(self):
        return (type(self).__name__, self.sign0) if self.sign0 != "random" else None

    def forward(self, x):
        if not self.training:
            return self.hard(x)
        xc = x.clamp(-1.0, 1.0)
        poly = 2 * xc - xc * xc.abs()  # 2x - x|x| on [-1, 1]: derivative 2 - 2|x|
        return _straight(poly, self.hard(x))


def get_quantizer(name: str, where: str | None = None) -> type:
    return QUANTIZERS.get(name, where)


def list_quantizers() -> list[str]:
    return QUANTIZERS.names()


def make_quantizer(name: str, **kwargs) -> Quantizer:
    return QUANTIZERS.get(name)(**kwargs)


# --------------------------------------------------------------------------- weight storages


class _TieBreak(Quantizer):
    """Weight quantizers whose exact zeros take the layer's shared ``sign_init`` (set by
    ``binarize``) instead of the sign0 policy: zero-initialised latent weights then start from
    the same random signs as the filtered optimizer (seed 002, Eq. 5)."""

    def signs(self, w: torch.Tensor) -> torch.Tensor:
        init = getattr(self, "sign_init", None)
        if init is None:
            return sign0(w, self.sign0)
        return torch.where(w == 0, init, torch.sign(w))

    def hard(self, w):
        return self.signs(w)

    def hard_sign(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach()
        init = getattr(self, "sign_init", None)
        if init is None:
            return super().hard_sign(w)
        pos = getattr(self, "_init_pos", None)
        if pos is None or pos.device != w.device:
            pos = self._init_pos = init > 0  # cached: sign_init never changes
        return self.hard_sign_stacked(w, pos)

    def hard_sign_stacked(self, w, init_pos):  # element-wise: one member's weight or K stacked
        if init_pos is None:
            return None
        w = w.detach()
        return torch.where(w == 0, init_pos, w > 0)


@register_quantizer("latent_sign")
class LatentSign(_TieBreak):
    """Latent-weight binarization (seed 002 §3): F = sign(w), optionally times the per-output-
    channel mean |w| (``scaling``, XNOR-style; the gradient reaches the scale too);
    B = identity, or 1{|w| <= 1} with ``clip_grad`` (gradient clipping of the standard recipe)."""

    def __init__(self, sign0: str = "plus", scaling: bool = False, clip_grad: bool = False):
        super().__init__(sign0)
        self.scaling, self.clip_grad = scaling, clip_grad

    def forward(self, w):
        s = self.signs(w)
        out = _straight(_clip_surrogate(w) if self.clip_grad else w, s) if self.training else s
        if self.scaling:
            out = out * w.abs().mean(dim=tuple(range(1, w.ndim)), keepdim=True)
        return out

    def stack_key(self):
        return ("latent_sign", self.scaling, self.clip_grad) if getattr(self, "sign_init", None) is not None else None

    def forward_stacked(self, w, init):
        s = torch.where(w == 0, init, torch.sign(w))
        out = _straight(_clip_surrogate(w) if self.clip_grad else w, s) if self.training else s
        if self.scaling:  # per member and output channel
            out = out * w.abs().mean(dim=tuple(range(2, w.ndim)), keepdim=True)
        return out

    def extra_repr(self):
        return f"{super().extra_repr()}, scaling={self.scaling}, clip_grad={self.clip_grad}"


@register_quantizer("stored_sign")
class StoredSign(_TieBreak):
    """The parameter itself holds ±1 (the filtered optimizer flips it): F = identity on the
    stored signs, B = identity (the gradient w.r.t. the binary weight)."""

    def forward(self, w):
        return w

    def stack_key(self):
        return ("stored_sign",)

    def forward_stacked(self, w, init):
        return w

    def hard_sign(self, w):
        return w.detach() > 0

    def hard_sign_stacked(self, w, init_pos):
        return self.hard_sign(w)
