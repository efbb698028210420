"""CycleBNN: cyclic precision training of BNNs (seed 001; methods.md §3; code-faithful to the
released code: ReCU's binary conv + CPT's cyclic precision).

Per iteration t of T, with N_c cycles and P = floor(T / N_c):

    b_t = round(b_min + (b_max - b_min)/2 * (1 - cos(pi * (t mod P) / P)))     (shape: cosine)

``triangular`` goes up and down linearly within a cycle, ``linear`` ramps up and drops, ``static``
stays at b_max. ``schedule_unit: epoch`` counts epochs instead of iterations (the summary's
reading; the code uses iterations). b_t is the pre-quantization precision of weights and
activations before sign (``precision_mode: prequant_then_sign``, the default; the forward stays
binary) or the forward precision itself (``true_kbit_forward``). Gradients of binary layer
outputs are quantized to ``grad_bits`` with stochastic rounding (0 = off, full precision).

Modelled training cost (the paper's accounting is undisclosed; both are labelled *modelled*):
``cost/train_rel`` is the running mean of CPT's cr_t = (b_t^2 + 2 b_t g_t) / (3 * 32^2), and
``cost/train_bitops`` is the bit-weighted MAC count summed over the iterations so far,
batch x sum_layers MACs x (b_w b_a + b_a g + b_w g) with 32 bits for full-precision layers.
``cost/train_gates``, the unit every method reports (cost.py), prices each binary layer's fp32
gates per pass at CPT's bit products over 32·32 — forward b_t·b_t, weight and input gradient
b_t·g [RECON] — and full-precision layers and the AdamW update in full.
AdamW on all parameters (lr 1e-3, weight decay 1e-5), cosine over the iterations, no warm-up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..cost import layer_io, training_gates, update_gates
from ..nn import binary_layers, weight_quantizer
from ..nn.cyclic import CyclicAct, CyclicWeight, scale_output
from ..schedules import decay
from .base import Method, RunInfo, Scheduled, Setup, check_partition, register_method, set_lr


@dataclass(frozen=True)
class CycleHparams:
    b_min: int = 2
    b_max: int = 6
    cycles: int = 8
    shape: Literal["cosine", "triangular", "linear", "static"] = "cosine"
    schedule_unit: Literal["iteration", "epoch"] = "iteration"
    grad_bits: int = 8
    precision_mode: Literal["prequant_then_sign", "true_kbit_forward"] = "prequant_then_sign"
    weight_std: Literal["std", "meanstd", "none"] = "std"
    lr: float = 1e-3
    weight_decay: float = 1e-5

    def validate(self):
        if not 1 <= self.b_min <= self.b_max <= 16:
            raise ValueError("need 1 <= b_min <= b_max <= 16")
        if self.cycles < 1 or not 0 <= self.grad_bits <= 32 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("cycles >= 1, 0 <= grad_bits <= 32, lr > 0, weight_decay >= 0 required")


def cyclic_bits(t: int, T: int, hp: CycleHparams) -> int:
    """The precision at iteration (or epoch) t of T."""
    if hp.shape == "static":
        return hp.b_max
    P = max(1, T // hp.cycles)
    x = (t % P) / P
    if hp.shape == "cosine":
        frac = 0.5 * (1 - math.cos(math.pi * x))
    elif hp.shape == "triangular":
        frac = 1 - abs(2 * x - 1)
    else:
        frac = x
    return int(round(hp.b_min + (hp.b_max - hp.b_min) * frac))


def cr(b: int, g: int) -> float:
    """CPT's relative training cost of one iteration vs fp32."""
    return (b * b + 2 * b * g) / (3 * 32 * 32)


@register_method("cyclebnn")
class CycleBNN(Method):
    Hparams = CycleHparams

    def weight_quantizer(self, hp: CycleHparams, sign0: str):
        return lambda layer: CyclicWeight(sign0, hp.precision_mode, hp.b_max, hp.weight_std, layer.weight.shape[0])

    def act_quantizer(self, hp: CycleHparams, sign0: str = "plus"):
        return lambda layer: CyclicAct(sign0, hp.precision_mode, hp.b_max)

    def validate_config(self, hp: CycleHparams, arch_args, epochs: int | None = None) -> None:
        if hp.schedule_unit == "epoch" and hp.shape != "static" and epochs is not None and epochs // hp.cycles < 2:
            raise ValueError(f"schedule_unit: epoch with {hp.cycles} cycles over {epochs} epochs leaves cycles of "
                             f"{epochs // hp.cycles} epoch(s): the precision would stay at b_min ({hp.b_min}); use at most "
                             f"{max(1, epochs // 2)} cycles, more epochs, or schedule_unit: iteration")

    def init_binary(self, model, hp: CycleHparams):
        for _, layer in binary_layers(model):
            layer.register_forward_hook(lambda m, i, out, g=hp.grad_bits: scale_output(m, out, g))

    def train_gates_per_step(self, model, setup, info):
        return None  # varies with b_t: counted in on_step (setup)

    def setup(self, model, hp: CycleHparams, total_steps: int, info: RunInfo | None = None) -> Setup:
        opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        check_partition(model, [opt])
        layers = binary_layers(model)
        qs = [weight_quantizer(l) for _, l in layers] + [l.input_quantizer for _, l in layers]
        spe = info.steps_per_epoch if info else 1
        unit_T = total_steps // spe if hp.schedule_unit == "epoch" else total_steps
        g = hp.grad_bits or 32
        io = layer_io(model, info.in_shape) if info else {}  # one hooked pass for the MACs and the gates
        binary_names = {n for n, _ in layers}
        mac_bin = sum(v.macs for n, v in io.items() if n in binary_names)
        mac_fp = sum(v.macs for n, v in io.items() if n not in binary_names)
        batch = info.batch_size if info else 0
        gates = training_gates(io, batch)
        g_fwd = sum(r.forward for r in gates if r.name in binary_names)
        g_grad = sum(r.weight_grad + r.input_grad for r in gates if r.name in binary_names)
        g_full = sum(r.forward + r.weight_grad + r.input_grad for r in gates if r.name not in binary_names)
        g_full += update_gates([opt])
        # checkpointed (Setup.state)
        acc = {"cr_sum": 0.0, "bitops": 0.0, "gates": 0.0, "steps": 0, "bits": hp.b_max}

        def bits_at(p: float) -> float:
            t = int(round(p * total_steps))
            return float(cyclic_bits(t // spe if hp.schedule_unit == "epoch" else t, unit_T, hp))

        def set_bits(v: float):
            acc["bits"] = int(v)
            for q in qs:
                q.k = int(v)

        def on_step(step: int, p: float):
            b = acc["bits"]
            acc["cr_sum"] += cr(b, g)
            acc["bitops"] += batch * (mac_bin * (b * b + 2 * b * g) + mac_fp * 3 * 32 * 32)
            acc["gates"] += (g_fwd * b * b + g_grad * b * g) / (32 * 32) + g_full
            acc["steps"] += 1

        def report():
            return {"cost/train_rel": acc["cr_sum"] / max(acc["steps"], 1), "cost/train_bitops": acc["bitops"],
                    "cost/train_gates": acc["gates"],
                    "sched/grad_bits": float(hp.grad_bits)}

        sched = [Scheduled("bits", bits_at, set_bits),
                 Scheduled("lr", lambda p: hp.lr * decay("cosine", p), set_lr(opt))]
        return Setup([opt], sched, epoch_metrics=[report], on_step=[on_step], state=acc)
