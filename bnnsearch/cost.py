"""Static inference cost per layer, read from the quantizers' ``bits``.

For every conv/linear layer: MACs for one input sample, weight bits (its weight quantizer's
``bits``, 32 when not binarized), input-activation bits (its input quantizer's ``bits``),
BOPs (MACs of layers with 1-bit weights *and* 1-bit inputs), FLOPs (all other MACs, counted
as full-precision multiply-adds — conservative for W1A32 layers), memory in bits. Other
parameters (BatchNorm, biases, scales) are full precision. The conventional total
(Bi-Real/ReActNet) is OPs = BOPs / 64 + FLOPs; compression is the fp32 size over the size
with these bit widths. Element-wise ops (BN, activations, pooling) are not counted.

Training cost: methods with variable precision (CycleBNN) or no floating point at all
(local binary error signals) report modelled training cost through ``Setup.on_step`` /
``Setup.epoch_metrics`` under ``cost/train_*``; this module supplies the per-layer MACs they
weight by bits (``layer_macs``).
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


def layer_macs(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per conv/linear layer for one sample, measured with forward hooks."""
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, BINARIZABLE):
            def hook(mod, inp, out, name=name):
                per_out = mod.in_features if isinstance(mod, nn.Linear) else (
                    mod.in_channels // mod.groups * int(torch.tensor(mod.kernel_size).prod()))
                macs[name] = int(out[0].numel()) * per_out
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
    return macs


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
