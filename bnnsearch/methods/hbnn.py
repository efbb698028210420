"""HBNN: hyperbolic binary neural network with the exponential parametrization cluster
(seed 000; methods.md §2). [RECON] throughout: no official code exists and the EPC equations
were not available; this follows methods.md's recommended implementation, with the variants
selectable: ``manifold`` (ball | sphere), ``assign`` (roundrobin | nearest | loss), ``cluster_size``
(0: no EPC, exp at the origin — the control), ``granularity`` (filter | layer | element), ``update_mode``
(alternating | simultaneous) and ``ste`` (identity = ReCU's weight surrogate, the default;
clip; approx = 2 - 2|x|; rbnn = RBNN's training-aware surrogate with t from 1e-2 to 1e1, set per
epoch as RBNN's code sets it). The surrogates act on each filter's hyperbolic coordinates in
units of their RMS (h / rms_j(h)), where their bounds mean something; see
``HyperbolicSign.surrogate``. ``tau_clamp`` adds ReCU's
τ clamp on those coordinates (τ from ``tau_min`` 0.85 to ``tau_max`` 0.99 on ReCU's exponential
schedule, per epoch; off by default: the spec does not know whether HBNN uses it).

Pipeline per binarized layer: latent w_tilde -> phi_F(w_tilde) = exp_{p_a(j)}(v_j) per output
filter -> sign -> times a learnable per-channel scale. Per step (``alternating``):
(i) with w_tilde frozen, one Riemannian SGD step on the cluster points (``cluster_lr``, every
``cluster_every`` steps); (ii) recompute; (iii) with F frozen, one SGD step (``lr``,
``momentum``, ``weight_decay``, cosine) on w_tilde and one step of the full-precision optimizer.
That costs two forward/backward passes per step; ``simultaneous`` updates all from one pass.
Reported: ``hbnn/max_boundary`` (largest sqrt(c)|p|; alarm above 0.99), the per-layer
``bin/flip_from_init`` (the paper's ~50 % claim), the percentiles of |w_tilde_j| / r
(``hbnn/norm_over_r_q10`` … ``_q90``) and ``hbnn/cluster_share_max``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ..cost import layer_io, training_gates
from ..nn import binary_layers, is_binary_param, weight_quantizer
from ..nn.binarize import stored_weight
from ..nn.hyperbolic import HyperbolicSign, RiemannianSGD
from ..nn.pack import PackedBatchNorm
from ..schedules import decay
from .base import ActQuantizer, Decay, FpOptimizer, Method, Pack, Scheduled, Setup, check_partition, epoch_of, fp32_step_gates, grads_only, make_fp_optimizer, opt_params, percentiles, register_method, set_lr, split_params, member_losses, tau_schedule, upcast


@dataclass(frozen=True)
class HbnnHparams:
    manifold: Literal["ball", "sphere"] = "ball"
    radius: float = 0.05  # the paper's best ball radius; its best sphere radius is 1.0
    cluster_size: int = 2  # 0: no EPC, exp at the origin (the control: it never changes a sign)
    granularity: Literal["filter", "layer", "element"] = "filter"
    cluster_lr: float = 1e-2
    cluster_init: float = 0.5  # ball: initial |p| as a fraction of the radius
    # Shared by a pack's members: they decide how many forward passes a step makes.
    cluster_every: int = field(default=1, metadata={"packable": False})
    update_mode: Literal["alternating", "simultaneous"] = field(default="alternating", metadata={"packable": False})
    assign: Literal["roundrobin", "nearest", "loss"] = "roundrobin"
    ste: Literal["identity", "clip", "approx", "rbnn"] = "identity"
    scale: bool = True
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay: Decay = "cosine"
    fp_optimizer: FpOptimizer = "adam"
    fp_lr: float = 1e-3
    act: ActQuantizer = "approx_sign"
    tau_clamp: bool = False  # ReCU's τ clamp [RECON]; see HyperbolicSign.surrogate
    tau_min: float = 0.85
    tau_max: float = 0.99

    def validate(self):
        if self.radius <= 0 or self.cluster_lr <= 0 or self.lr <= 0 or self.fp_lr <= 0:
            raise ValueError("radius, cluster_lr, lr and fp_lr must be positive")
        if self.cluster_size < 0 or self.cluster_every < 1 or not 0 <= self.cluster_init < 1:
            raise ValueError("cluster_size >= 0, cluster_every >= 1 and 0 <= cluster_init < 1 required")
        if self.manifold == "sphere" and self.granularity == "element":
            raise ValueError("granularity: element on the sphere maps every weight to ±radius (the sphere of a "
                             "1-D vector is two points): no gradient would reach the weights; use the ball or "
                             "granularity filter/layer")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("momentum in [0, 1) and weight_decay >= 0 required")
        if not 0 < self.tau_min <= self.tau_max < 1:
            raise ValueError("need 0 < tau_min <= tau_max < 1")


def _chooses(hp: HbnnHparams) -> bool:
    """Whether this member picks its points by loss (more than one point to choose from)."""
    return hp.assign == "loss" and hp.cluster_size > 1


def _is_cluster(p) -> bool:
    return bool(getattr(p, "_bnn_cluster", False))


@register_method("hbnn")
class HBNN(Method):
    Hparams = HbnnHparams

    def weight_quantizer(self, hp: HbnnHparams, sign0: str):
        gen = torch.Generator().manual_seed(1234)  # cluster init; the run seed also drives arch init

        def make(layer):
            w = layer.weight
            return HyperbolicSign(sign0, w.shape[0], w[0].numel(), hp.manifold, hp.radius, hp.cluster_size,
                                  hp.cluster_init, hp.assign, hp.ste, hp.scale, gen, hp.granularity)

        return make

    def train_gates_per_step(self, model, setup, info):
        return None  # an alternating step makes a second pass: counted in on_step (setup)

    def binary_storage(self, model):
        """Latent weights and the cluster's base points: both move the signs."""
        return [p for p in model.parameters() if is_binary_param(p) or _is_cluster(p)]

    def setup(self, model, hp: HbnnHparams, total_steps: int, info=None) -> Setup:
        binary, rest = split_params(model)
        cluster = [p for p in rest if _is_cluster(p)]
        fp = [p for p in rest if not _is_cluster(p)]
        c = 1.0 / hp.radius**2
        opt_w = torch.optim.SGD(binary, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        opt_f = RiemannianSGD(cluster, lr=hp.cluster_lr, c=c, manifold=hp.manifold)
        opt_fp = make_fp_optimizer(hp.fp_optimizer, fp, hp.fp_lr)
        opts = [opt_w, opt_f, opt_fp]
        check_partition(model, opts)
        layers = binary_layers(model)
        qs = [weight_quantizer(l) for _, l in layers]

        def set_ste_t(t: float):
            for q in qs:
                q.ste_t = t

        sched = [
            Scheduled("lr", lambda p: hp.lr * decay(hp.lr_decay, p), set_lr(opt_w)),
            Scheduled("fp_lr", lambda p: hp.fp_lr * decay(hp.lr_decay, p), set_lr(opt_fp)),
        ]
        if hp.ste == "rbnn":  # RBNN's cpt_tk, per epoch e of E: t = 10^(log10 Tmin + (log10 Tmax - log10 Tmin) e / E)
            epoch, epochs = epoch_of(total_steps, info)
            sched.append(Scheduled("ste_t", lambda p: 10 ** (-2 + 3 * epoch(p) / epochs), set_ste_t))
        if hp.tau_clamp:
            sched.append(tau_schedule(hp.tau_min, hp.tau_max, total_steps, info, qs))
        # Modelled training cost (cost.py): an fp32 step, plus, on an alternating cluster step, the
        # first pass — a forward, the input gradients and the binary layers' weight gradients
        # (the points' gradients pass through them); without points, its forward alone.
        rows = training_gates(layer_io(model, info.in_shape), info.batch_size) if info else []
        names = {n for n, _ in layers}
        base = fp32_step_gates(rows, opts)
        first = sum(r.forward + ((r.input_grad + (r.weight_grad if r.name in names else 0)) if hp.cluster_size else 0)
                    for r in rows)
        # assign: loss tries every point in every binary layer: forward passes without gradients
        choose = len(qs) * hp.cluster_size * sum(r.forward for r in rows) if _chooses(hp) else 0.0
        state = {"step": 0, "gates": 0.0}  # checkpointed (Setup.state)

        stored = [stored_weight(l) for _, l in layers]

        def boundary():
            """methods.md §2.4: the boundary alarm; the distribution of |w_tilde_j| / r (the
            saturation regime of the exponential map) as its 10th/50th/90th percentiles over every
            filter; and the largest share of one layer's filters on one cluster point (1/t:
            balanced, 1: collapsed)."""
            with torch.no_grad():
                v = [q.rows(w.detach()) for q, w in zip(qs, stored)]
                norms = torch.cat([x.norm(dim=1) for x in v]) / hp.radius
                out = {"hbnn/max_boundary": torch.stack([q.boundary() for q in qs]).max(), **percentiles(norms, "hbnn/norm_over_r")}
                if hp.cluster_size:  # counts by index_add (bincount sizes its output from the data: a device sync)
                    out["hbnn/cluster_share_max"] = torch.stack([
                        x.new_zeros(q.cluster.shape[0]).index_add_(0, q.assignment(x), x.new_ones(x.shape[0])).max() / x.shape[0]
                        for q, x in zip(qs, v)]).max()
            return {**out, "cost/train_gates": state["gates"]}

        def count(step, p):
            state["step"] = step
            cluster_step = step % hp.cluster_every == 0
            state["gates"] += base + (first if hp.update_mode == "alternating" and cluster_step else 0.0)
            state["gates"] += choose if cluster_step else 0.0

        return Setup(opts, sched, epoch_metrics=[boundary], on_step=[count], state=state, ctx=(opt_w, opt_f, opt_fp, hp, qs))

    @staticmethod
    @torch.no_grad()
    def choose_points(module, members: list[tuple[int, list]], x, y, forward) -> None:
        """``assign: loss`` [RECON]: the paper's "find the optimal phi_F_i", read per layer. For
        each binary layer in turn, every member tries each of its cluster points for all the
        layer's vectors (the other layers as chosen so far) and keeps the one with the lowest
        minibatch loss; ``members``: (its index in the module's losses, its layers' quantizers).
        Forward passes without gradients; BatchNorm's running statistics are put back after them
        (they are probes, not training passes)."""
        bns = [b for m in module.modules() if isinstance(m, (_BatchNorm, PackedBatchNorm)) for b in m.buffers()]
        saved = [b.clone() for b in bns]

        def losses():
            out = upcast(forward(module, x))
            return member_losses(out, y) if out.ndim == 3 else F.cross_entropy(out, y).reshape(1)

        for layer in range(len(members[0][1])):
            t_max = max(qs[layer].cluster.shape[0] for _, qs in members)
            tried = []
            for i in range(t_max):
                for _, qs in members:
                    qs[layer].choice.fill_(min(i, qs[layer].cluster.shape[0] - 1))
                tried.append(losses())
            table = torch.stack(tried)  # [points, members]
            for k, qs in members:
                qs[layer].choice.copy_(table[: qs[layer].cluster.shape[0], k].argmin())
        for b, v in zip(bns, saved):
            b.copy_(v)

    def train_step(self, model, x, y, setup: Setup, forward):
        opt_w, opt_f, opt_fp, hp, qs = setup.ctx
        cluster_step = setup.state["step"] % hp.cluster_every == 0
        if cluster_step and _chooses(hp):
            self.choose_points(model, [(0, qs)], x, y, forward)
        if hp.update_mode == "alternating" and cluster_step and not hp.cluster_size:
            # no points to step: the pass an EPC run makes all the same (it moves BatchNorm's
            # running statistics), so that the control differs from HBNN by its cluster alone
            with torch.no_grad():
                forward(model, x)
        elif hp.update_mode == "alternating" and cluster_step:
            # (i) w_tilde frozen: a Riemannian step on the cluster points only. Their gradients
            # alone are asked for: no other weight gradient is computed (the full-precision first
            # layer's is the largest matmul of the backward pass), the same values as backward().
            grads_only(F.cross_entropy(forward(model, x).float(), y), opt_params(opt_f))
            opt_f.step()
        # (iii) F frozen (or, simultaneous: everything from one pass)
        for opt in (opt_w, opt_f, opt_fp):
            opt.zero_grad(set_to_none=True)
        logits = forward(model, x)
        loss = F.cross_entropy(upcast(logits), y)
        loss.backward()
        opt_w.step()
        opt_fp.step()
        if hp.update_mode == "simultaneous" and cluster_step:
            opt_f.step()
        return loss.detach(), logits.detach()

    def train_step_pack(self, pack: Pack, x, y, forward):
        """``train_step`` for a fused pack (update_mode and cluster_every are shared)."""
        live = pack.live()
        ctxs = [pack.setups[k].ctx for k in live]
        hp = ctxs[0][3]
        cluster_step = pack.setups[live[0]].state["step"] % hp.cluster_every == 0
        choosing = [(k, c[4]) for k, c in zip(live, ctxs) if _chooses(c[3])]
        if cluster_step and choosing:
            self.choose_points(pack.module, choosing, x, y, forward)
        if hp.update_mode == "alternating" and cluster_step:
            if any(c[3].cluster_size for c in ctxs):
                pack.backward_for(member_losses(forward(pack.module, x), y), [1])
                pack.step([1])
            else:  # no member has points: the pass alone (see train_step)
                with torch.no_grad():
                    forward(pack.module, x)
        pack.zero_grad([0, 1, 2])
        logits = forward(pack.module, x)
        losses = member_losses(logits, y)
        pack.backward(losses)
        pack.step([0, 2, 1] if hp.update_mode == "simultaneous" and cluster_step else [0, 2])
        return losses.detach(), logits.detach()
