"""CycleBNN: cyclic precision training of BNNs (seed 001; methods.md §3; code-faithful to the
released code: ReCU's binary conv + CPT's cyclic precision).

Per iteration t of T, with N_c cycles and P = floor(T / N_c):

    b_t = round(b_min + (b_max - b_min)/2 * (1 - cos(pi * (t mod P) / P)))     (shape: cosine)

``triangular`` goes up and down linearly within a cycle, ``linear`` ramps up and drops, ``static``
stays at b_max. ``schedule_unit: epoch`` counts epochs instead of iterations (the summary's
reading; the code uses iterations). b_t is the pre-quantization precision of weights and
activations before sign (``precision_mode: prequant_then_sign``, the default; the forward stays
binary) or the forward precision itself (``true_kbit_forward``). Gradients of binary layer
outputs are quantized to ``grad_bits`` with stochastic rounding (0 = off, full precision);
with ``grad_bits_min`` set, the gradient precision cycles too, from ``grad_bits_min`` to
``grad_bits`` on the same schedule (CPT's ``cyclic_num_grad_bits_schedule g_min g_max``; the
released CycleBNN keeps it at 8 8, the default here: constant).

``lr_annealing`` is the released code's ``num_cyclic_annealing`` n, 1 (``once``, the released
configuration) or the cycle count N_c (``per_cycle``, the spec's alternative): PyTorch's
CosineAnnealingLR with T_max = T / n stepped every iteration, which past T_max follows the
cosine back up — lr_t = lr (1 + cos(pi n t / T)) / 2, a smooth oscillation, not restarts.
``tau_clamp`` switches on ReCU's τ clamp of the standardized weights (off in the released
configuration; τ from ``tau_min`` to ``tau_max`` on ReCU's exponential schedule, per epoch;
``nn/cyclic.py``). Evaluation: ``val/acc`` as the released code evaluates (current b_t,
activation range EMAs), ``val/acc_sign`` with pure sign (``eval_variants``).

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
from .base import Method, RunInfo, Scheduled, Setup, check_partition, epoch_of, quantizer_flag, register_method, set_lr, tau_schedule


@dataclass(frozen=True)
class CycleHparams:
    b_min: int = 2
    b_max: int = 6
    cycles: int = 8
    shape: Literal["cosine", "triangular", "linear", "static"] = "cosine"
    schedule_unit: Literal["iteration", "epoch"] = "iteration"
    grad_bits: int = 8
    grad_bits_min: int | None = None  # None: constant grad_bits; else g cycles grad_bits_min -> grad_bits
    precision_mode: Literal["prequant_then_sign", "true_kbit_forward"] = "prequant_then_sign"
    weight_std: Literal["std", "meanstd", "none"] = "std"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    lr_annealing: Literal["once", "per_cycle"] = "once"
    tau_clamp: bool = False
    tau_min: float = 0.85
    tau_max: float = 0.99

    def validate(self):
        if not 1 <= self.b_min <= self.b_max <= 16:
            raise ValueError("need 1 <= b_min <= b_max <= 16")
        if self.cycles < 1 or not 0 <= self.grad_bits <= 32 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("cycles >= 1, 0 <= grad_bits <= 32, lr > 0, weight_decay >= 0 required")
        if self.grad_bits_min is not None and not 1 <= self.grad_bits_min <= self.grad_bits:
            raise ValueError(f"grad_bits_min must be between 1 and grad_bits ({self.grad_bits}); leave it unset "
                             "for a constant gradient precision (grad_bits 0 quantizes no gradient)")
        if self.shape == "static" and (self.lr_annealing == "per_cycle" or self.grad_bits_min is not None):
            raise ValueError("lr_annealing: per_cycle and grad_bits_min follow the precision cycles; a static "
                             "shape has none (use lr_annealing: once, leave grad_bits_min unset)")
        if not 0 < self.tau_min <= self.tau_max < 1:
            raise ValueError("need 0 < tau_min <= tau_max < 1")


def cyclic_bits(t: int, T: int, hp: CycleHparams, lo: int | None = None, hi: int | None = None) -> int:
    """The precision at iteration (or epoch) t of T, between ``lo`` and ``hi`` (b_min, b_max
    unless given: the gradient precision uses the same schedule between its own bounds)."""
    lo, hi = (hp.b_min if lo is None else lo), (hp.b_max if hi is None else hi)
    if hp.shape == "static":
        return hi
    P = max(1, T // hp.cycles)
    x = (t % P) / P
    if hp.shape == "cosine":
        frac = 0.5 * (1 - math.cos(math.pi * x))
    elif hp.shape == "triangular":
        frac = 1 - abs(2 * x - 1)
    else:
        frac = x
    return int(round(lo + (hi - lo) * frac))


def lr_factor(p: float, n: int) -> float:
    """CosineAnnealingLR with T_max = T / n at progress p (it rises again past T_max)."""
    return 0.5 * (1 + math.cos(math.pi * n * p))


def cr(b: int, g: int) -> float:
    """CPT's relative training cost of one iteration vs fp32."""
    return (b * b + 2 * b * g) / (3 * 32 * 32)


@register_method("cyclebnn")
class CycleBNN(Method):
    Hparams = CycleHparams

    def weight_quantizer(self, hp: CycleHparams, sign0: str):
        return lambda layer: CyclicWeight(sign0, hp.precision_mode, hp.b_max, hp.weight_std, layer.weight.shape[0],
                                          hp.grad_bits)

    def act_quantizer(self, hp: CycleHparams, sign0: str = "plus"):
        return lambda layer: CyclicAct(sign0, hp.precision_mode, hp.b_max)

    def validate_config(self, hp: CycleHparams, arch_args, epochs: int | None = None) -> None:
        if hp.schedule_unit == "epoch" and hp.shape != "static" and epochs is not None and epochs // hp.cycles < 2:
            raise ValueError(f"schedule_unit: epoch with {hp.cycles} cycles over {epochs} epochs leaves cycles of "
                             f"{epochs // hp.cycles} epoch(s): the precision would stay at b_min ({hp.b_min}); use at most "
                             f"{max(1, epochs // 2)} cycles, more epochs, or schedule_unit: iteration")

    def eval_variants(self):
        """``val/acc_sign`` and ``test/acc_sign`` (after the last epoch): the network evaluated with pure sign, no k-bit
        pre-quantization of weights or activations (methods.md §3.4/§3.5: the released code
        evaluates at the current b_t with the activation range EMAs — ``val/acc`` here — and
        the spec asks for both)."""
        return {"sign": lambda model: quantizer_flag(model, "pure_sign", inputs=True)}

    def init_binary(self, model, hp: CycleHparams):
        for _, layer in binary_layers(model):
            layer.register_forward_hook(lambda m, i, out: scale_output(m, out))

    def train_gates_per_step(self, model, setup, info):
        return None  # varies with b_t: counted in on_step (setup)

    def setup(self, model, hp: CycleHparams, total_steps: int, info: RunInfo | None = None) -> Setup:
        opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        check_partition(model, [opt])
        layers = binary_layers(model)
        wqs = [weight_quantizer(l) for _, l in layers]
        qs = wqs + [l.input_quantizer for _, l in layers]
        if hp.schedule_unit == "epoch":
            unit, unit_T = epoch_of(total_steps, info)
        else:
            unit, unit_T = (lambda p: int(round(p * total_steps))), total_steps
        n_lr = hp.cycles if hp.lr_annealing == "per_cycle" else 1
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
        acc = {"cr_sum": 0.0, "bitops": 0.0, "gates": 0.0, "steps": 0, "bits": hp.b_max, "g": hp.grad_bits}

        def bits_at(p: float) -> float:
            return float(cyclic_bits(unit(p), unit_T, hp))

        def set_bits(v: float):
            acc["bits"] = int(v)
            for q in qs:
                q.k = int(v)

        def grad_bits_at(p: float) -> float:
            if hp.grad_bits_min is None or hp.grad_bits == 0:
                return float(hp.grad_bits)
            return float(cyclic_bits(unit(p), unit_T, hp, hp.grad_bits_min, hp.grad_bits))

        def set_grad_bits(v: float):
            acc["g"] = int(v)
            for q in wqs:
                q.g = int(v)

        def on_step(step: int, p: float):
            b, g = acc["bits"], acc["g"] or 32
            acc["cr_sum"] += cr(b, g)
            acc["bitops"] += batch * (mac_bin * (b * b + 2 * b * g) + mac_fp * 3 * 32 * 32)
            acc["gates"] += (g_fwd * b * b + g_grad * b * g) / (32 * 32) + g_full
            acc["steps"] += 1

        def report():
            return {"cost/train_rel": acc["cr_sum"] / max(acc["steps"], 1), "cost/train_bitops": acc["bitops"],
                    "cost/train_gates": acc["gates"]}

        sched = [Scheduled("bits", bits_at, set_bits), Scheduled("grad_bits", grad_bits_at, set_grad_bits),
                 Scheduled("lr", lambda p: hp.lr * lr_factor(p, n_lr), set_lr(opt))]
        if hp.tau_clamp:
            sched.append(tau_schedule(hp.tau_min, hp.tau_max, total_steps, info, wqs))
        return Setup([opt], sched, epoch_metrics=[report], on_step=[on_step], state=acc)
