"""CycleBNN quantizers (seed 001, methods.md §3; code-faithful to fedeloper/CycleBNN).

Weights: W_hat_j = W_j * 2*sqrt(2) / sqrt(Var(W_j) + 1e-5) per output channel (std only: the
released code does not subtract the mean; ``weight_std: meanstd`` is ReCU's variant, ``none``
skips it); then k-bit min-max pre-quantization Q_k per output channel (round to nearest,
identity backward); then sign (identity backward, no clipping); times a learnable per-channel
alpha ~ U(0, 1) (equivalent to scaling the conv output).

Activations: per-sample standardization a / sqrt(Var_{C,H,W}(a) + 1e-5) in training only; Q_k
with a per-tensor range (batch min/max in training, an EMA with momentum 0.9 at evaluation);
sign with ApproxSign's backward max(0, 2 - 2|x|).

Layer output (``scale_output``, a forward hook): y = conv(A_b, W_b); the gradient of y is
quantized to g bits (stochastic rounding), *then* y <- alpha * y, as in the spec's step 6, so the
quantizer sees the gradient before the scale (alpha is not folded into the weight).

ReCU's τ clamp (off in the released CycleBNN configuration, ``--clamping_tau no``; selectable):
the standardized weights are clamped to ±Q_τ, Q_τ = -E|W_hat| log(2 - 2τ) (the τ-quantile of a
Laplace distribution with W_hat's mean absolute value; E over the whole weight tensor, as ReCU's
code computes it), before the k-bit pre-quantization; clamped weights get no gradient. τ = 1
means no clamp (Q = +inf). ``quantizers.recu_clamp`` / ``recu_tau`` (ReCU's exponential
schedule of τ over the epochs).

``precision_mode``: ``prequant_then_sign`` (default, code-faithful: the forward is always
binary, k only moves which side of zero values fall) or ``true_kbit_forward`` (the variant: the
k-bit values themselves are used, no sign). ``bits`` is a buffer set every step by the
schedule; the inference ``bits`` reported to the cost model is 1 in the faithful mode.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import rng
from .quantizers import Quantizer, _straight, recu_clamp, register_quantizer


def minmax_quant(x: torch.Tensor, k: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Q_k(x) = z + s * clamp(round((x - z) / s), 0, 2^k - 1), z = lo, s = max((hi - lo)/(2^k - 1), 1e-8).
    Identity backward (STE)."""
    levels = 2.0**k - 1
    s = torch.clamp((hi - lo) / levels, min=1e-8)
    q = lo + s * torch.clamp(torch.round((x - lo) / s), 0, levels)
    return _straight(x, q.detach())


class _CyclicBase(Quantizer):
    def __init__(self, sign0: str = "plus", precision_mode: str = "prequant_then_sign", bits: int = 8):
        super().__init__(sign0)
        if precision_mode not in ("prequant_then_sign", "true_kbit_forward"):
            raise ValueError(f"unknown precision_mode {precision_mode!r}")
        self.precision_mode = precision_mode
        self.k = int(bits)  # a host int set by the schedule every step (no device sync to read it)
        # The pure-sign evaluation (methods.md §3.5 pitfall 3; ``CycleBNN.eval_variants``): no
        # k-bit pre-quantization, sign in either precision mode. Set only around an evaluation.
        self.pure_sign = False

    @property
    def bits(self) -> int:  # inference precision (cost model)
        return 1 if self.precision_mode == "prequant_then_sign" else self.k


def _var(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Unbiased variance over ``dims`` (kept), in two passes: the mean, then the squared
    deviations. The same value as ``x.var(dim=dims, keepdim=True)`` up to rounding (a relative
    1e-7), and about 10x faster on the CPU for weight- and activation-sized tensors, where
    torch's Welford kernel was a fifth of a CycleBNN step."""
    n = math.prod(x.shape[d] for d in dims)
    d = x - x.mean(dim=dims, keepdim=True)
    return (d * d).sum(dim=dims, keepdim=True) / (n - 1)


@register_quantizer("cyclebnn_weight")
class CyclicWeight(_CyclicBase):
    def __init__(self, sign0="plus", precision_mode="prequant_then_sign", bits=8, weight_std="std", out_channels=None,
                 grad_bits: int = 0):
        super().__init__(sign0, precision_mode, bits)
        if weight_std not in ("std", "meanstd", "none"):
            raise ValueError(f"unknown weight_std {weight_std!r}")
        self.weight_std = weight_std
        self.alpha = nn.Parameter(torch.rand(out_channels or 1))
        # host values set by the method's schedules every step (read by ``scale_output``, ``_binary``)
        self.g = int(grad_bits)  # the layer output's gradient precision (0 = not quantized)
        self.tau = 1.0  # ReCU's clamp (1 = off)

    def standardize(self, w):
        dims = tuple(range(1, w.ndim))
        if self.weight_std == "none":
            return w
        if self.weight_std == "meanstd":
            w = w - w.mean(dim=dims, keepdim=True)
        return w * (2 * math.sqrt(2)) / torch.sqrt(_var(w, dims) + 1e-5)

    def _binary(self, w, hard: bool):
        dims = tuple(range(1, w.ndim))
        wh = recu_clamp(self.standardize(w), self.tau)
        if self.pure_sign:
            return self.hard(wh)
        if self.k > 0:
            wh = minmax_quant(wh, self.k, wh.amin(dim=dims, keepdim=True).detach(), wh.amax(dim=dims, keepdim=True).detach())
        if self.precision_mode == "true_kbit_forward":
            return wh
        return self.hard(wh) if hard else _straight(wh, self.hard(wh))

    def forward(self, w):
        # alpha is applied to the layer's output by ``scale_output`` (after the gradient of the
        # binary conv's output is quantized, methods.md §3.1 step 6), not folded into the weight.
        return self._binary(w, hard=not self.training)

    def hard_sign(self, w):
        with torch.no_grad():
            return self._binary(w.detach(), hard=True) > 0  # the effective sign(Q_k(W_hat)), before alpha

    def inference_params(self) -> int:
        return self.alpha.numel()


@register_quantizer("cyclebnn_act")
class CyclicAct(_CyclicBase):
    def __init__(self, sign0="plus", precision_mode="prequant_then_sign", bits=8, momentum=0.9):
        super().__init__(sign0, precision_mode, bits)
        self.momentum = momentum
        self.register_buffer("run_lo", torch.tensor(0.0))
        self.register_buffer("run_hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, a):
        if self.training:
            dims = tuple(range(1, a.ndim))
            a = a / torch.sqrt(_var(a, dims) + 1e-5)
            lo, hi = a.detach().amin(), a.detach().amax()
            with torch.no_grad():  # EMA of the range for evaluation (no host sync: torch.where)
                m = self.momentum
                self.run_lo.copy_(torch.where(self.seen, m * self.run_lo + (1 - m) * lo, lo))
                self.run_hi.copy_(torch.where(self.seen, m * self.run_hi + (1 - m) * hi, hi))
                self.seen.fill_(True)
        else:
            lo, hi = self.run_lo, self.run_hi
            if self.pure_sign:
                return self.hard(a)
        if self.k > 0:
            a = minmax_quant(a, self.k, lo, hi)
        if self.precision_mode == "true_kbit_forward":
            return a
        if not self.training:
            return self.hard(a)
        xc = a.clamp(-1.0, 1.0)
        return _straight(2 * xc - xc * xc.abs(), self.hard(a))


class _GradQuant(torch.autograd.Function):
    """Identity forward; the backward quantizes the gradient to g bits with stochastic rounding
    over its per-tensor range (CPT ``quantize_grad``); the rounding noise comes from the
    training stream (``nn/rng.py``), so a resumed run rounds exactly as the uninterrupted one."""

    @staticmethod
    def forward(ctx, x, g_bits):
        ctx.g = g_bits
        # The stream installed when the forward ran: a packed member's backward then draws
        # from its own stream, whatever order autograd runs the members' nodes in.
        ctx.gen = rng.generator(x.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        levels = 2.0 ** ctx.g - 1
        lo, hi = grad.amin(), grad.amax()
        s = torch.clamp((hi - lo) / levels, min=1e-12)
        noise = torch.rand(grad.shape, dtype=grad.dtype, device=grad.device, generator=ctx.gen)
        q = torch.floor((grad - lo) / s + noise)
        return lo + s * q.clamp(0, levels), None


def quantize_grad(x: torch.Tensor, g_bits: int) -> torch.Tensor:
    return _GradQuant.apply(x, g_bits) if g_bits > 0 else x


def scale_output(layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """y = alpha * Q_g(conv(A_b, W_b)) (+ bias, unscaled): the gradient reaching Q_g is the one of
    the unscaled binary product, at the layer's current gradient precision g (the weight
    quantizer's ``g``, set by the schedule). Applied as a forward hook of every binarized layer."""
    q = layer.parametrizations.weight[0]
    g_bits = q.g
    alpha = q.alpha.view(1, -1, *([1] * (out.ndim - 2)))
    bias = layer.bias
    if bias is None:
        return quantize_grad(out, g_bits) * alpha
    b = bias.view(1, -1, *([1] * (out.ndim - 2)))
    return quantize_grad(out - b, g_bits) * alpha + b
