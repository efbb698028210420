"""Static inference cost per layer, read from the quantizers' ``bits``.

For every conv/linear layer: MACs for one input sample, weight bits (its weight quantizer's
``bits``, 32 when not binarized), input-activation bits (its input quantizer's ``bits``),
BOPs (MACs of layers with 1-bit weights *and* 1-bit inputs), FLOPs (all other MACs, counted
as full-precision multiply-adds — conservative for W1A32 layers), memory in bits. Other
parameters (BatchNorm, biases, scales) are full precision. The conventional total
(Bi-Real/ReActNet) is OPs = BOPs / 64 + FLOPs; compression is the fp32 size over the size
with these bit widths. Element-wise ops (BN, activations, pooling) are not counted.

Modelled training cost, one unit for every method: ``cost/train_gates``, the Boolean gates of
the training steps so far in Colombo et al.'s cost model (methods.md §6.4, from their
``VisualizeResults.ipynb``), which prices a full-precision multiply or add at 10^4 gates and
their own gradient-free learner in XNORs, popcounts and increments. The gradient methods train
in full precision (the spec's reference: their backward pass and latent weights are fp32), so a
step of B samples costs, per conv/linear layer with M MACs, O outputs and I inputs per sample,
forward B·M multiplies + B·(M − O) adds, the weight gradient the same, the input gradient (every
layer but the first one run) B·M multiplies + B·(M − I) adds, and the update per trainable
parameter 1 multiply + 1 add (Adam/AdamW: 10 + 4) — the notebook's FP SGD/Adam baseline, with
M = N_in·N_out, O = N_out, I = N_in for a linear layer, generalised to convolutions through M, O
and I. Element-wise work (BatchNorm, activations, the binarizers, HBNN's exponential map) is not
counted, as in the inference cost. CycleBNN scales a binary layer's passes by CPT's bit products
(forward b·b, gradients b·g, over 32·32) [RECON: the composition of CPT's relative cost with the
gate model is ours]; the local learner reports its own count (``methods/local_binary.py``).
``training_gates`` gives the per-layer fp32 gates of one step, ``update_gates`` the optimizers'.

The per-layer work (``layer_io``) also feeds CycleBNN's bit-weighted MAC count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .nn.binarize import BINARIZABLE, weight_quantizer
from torch.nn.utils import parametrize


@dataclass
class LayerCost:
    name: str
    kind: str
    shape: str
    params: int
    macs: int
    w_bits: int
    a_bits: int
    bops: int
    flops: int
    mem_bits: int


def _bits(layer: nn.Module) -> tuple[int, int]:
    w_bits = weight_quantizer(layer).bits if parametrize.is_parametrized(layer, "weight") else 32
    q = getattr(layer, "input_quantizer", None)
    return int(w_bits), int(q.bits if q is not None else 32)


@dataclass(frozen=True)
class LayerIO:
    """One conv/linear layer's work for one sample: MACs, input and output elements."""

    macs: int
    n_in: int
    n_out: int


def layer_io(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, LayerIO]:
    """``LayerIO`` per conv/linear layer for one sample, measured with forward hooks, in the
    order the forward pass runs them."""
    io: dict[str, LayerIO] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, BINARIZABLE):
            def hook(mod, inp, out, name=name):
                per_out = mod.in_features if isinstance(mod, nn.Linear) else (
                    mod.in_channels // mod.groups * int(torch.tensor(mod.kernel_size).prod()))
                io[name] = LayerIO(int(out[0].numel()) * per_out, int(inp[0][0].numel()), int(out[0].numel()))
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros((1, *in_shape), device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return io


def layer_macs(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per conv/linear layer for one sample."""
    return {n: v.macs for n, v in layer_io(model, in_shape).items()}


GATES_PER_FLOP = 10_000  # one full-precision multiply or add (methods.md §6.4)


@dataclass(frozen=True)
class LayerGates:
    """Boolean gates of one full-precision training step of a layer, per pass."""

    name: str
    forward: float
    weight_grad: float
    input_grad: float


def training_gates(io: dict[str, LayerIO], batch: int) -> list[LayerGates]:
    """Per conv/linear layer of ``io`` (``layer_io``), the gates of one fp32 training step on
    ``batch`` samples (the module docstring's model). The first layer the forward pass runs
    needs no input gradient."""
    out = []
    for i, (name, v) in enumerate(io.items()):
        fwd = batch * (2 * v.macs - v.n_out) * GATES_PER_FLOP
        out.append(LayerGates(name, fwd, fwd, 0 if i == 0 else batch * (2 * v.macs - v.n_in) * GATES_PER_FLOP))
    return out


def update_gates(optimizers) -> float:
    """Gates of one optimizer step over every parameter the optimizers hold: per parameter
    1 multiply + 1 add, 10 + 4 for Adam/AdamW (the notebook's FP SGD/Adam rule; momentum, weight
    decay and the BNN optimizers' filters are not priced apart)."""
    total = 0.0
    for opt in optimizers:
        inner = getattr(opt, "inner", opt)  # a wrapper (ProxConnect's latent clip) prices as what it wraps
        per = 14 if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)) else 2
        total += per * GATES_PER_FLOP * sum(p.numel() for g in opt.param_groups for p in g["params"])
    return total


def totals(rows: list[LayerCost]) -> dict[str, float]:
    params = sum(r.params for r in rows)
    mem = sum(r.mem_bits for r in rows)
    bops = sum(r.bops for r in rows)
    flops = sum(r.flops for r in rows)
    return {
        "cost/macs": float(sum(r.macs for r in rows)),
        "cost/bops": float(bops),
        "cost/flops": float(flops),
        "cost/ops": bops / 64.0 + flops,
        "cost/params": float(params),
        "cost/mem_bits": float(mem),
        "cost/compression": params * 32.0 / mem if mem else 1.0,
    }


def cost_table(model: nn.Module, in_shape: tuple[int, ...]) -> tuple[list[LayerCost], dict[str, float]]:
    """Per-layer rows (plus one row for all other parameters) and the totals (``cost/*``)."""
    macs = layer_macs(model, in_shape)
    rows, counted = [], set()
    for name, m in model.named_modules():
        if not isinstance(m, BINARIZABLE):
            continue
        w = m.weight
        w_bits, a_bits = _bits(m)
        bias = m.bias.numel() if m.bias is not None else 0
        if parametrize.is_parametrized(m, "weight"):  # e.g. per-channel scales used at inference
            bias += getattr(weight_quantizer(m), "inference_params", lambda: 0)()
        mac = macs.get(name, 0)
        binary = w_bits == 1 and a_bits == 1
        rows.append(LayerCost(
            name, type(m).__name__, "x".join(map(str, w.shape)), w.numel() + bias, mac, w_bits, a_bits,
            mac if binary else 0, 0 if binary else mac, w.numel() * w_bits + bias * 32,
        ))
        counted.update(id(p) for p in m.parameters())  # includes the parametrization's stored weight
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    other += sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    if other:
        rows.append(LayerCost("(other: BN, scales, stats)", "-", "-", other, 0, 32, 32, 0, 0, other * 32))
    return rows, totals(rows)


def rows_as_dicts(rows: list[LayerCost]) -> list[dict]:
    return [asdict(r) for r in rows]


# The inference-cost metrics of a network: static, so a trial logs them once (at epoch 1).
STATIC_COST = ("cost/macs", "cost/bops", "cost/flops", "cost/ops", "cost/params", "cost/mem_bits", "cost/compression")
