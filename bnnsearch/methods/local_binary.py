"""Gradient-free training with local binary error signals (seed 004: Colombo, Pittorino,
Roveri; methods.md §6; code-faithful to the anonymized release ``lucacolombo97/BNN_Anon``).

Network (arch ``local_mlp``): L binary fully-connected layers. Layer l stores integer hidden
(metaplastic) weights H_l; W_l = sign(H_l), z_l = a_{l-1} W_l, a_l = sign(z_l). Each layer has
a fixed random local classifier P_l in {-1, +1}^{N_l x C}; the prediction is the argmax of the
last layer's local scores a_L P_L. Inputs are binarized at the training-set median (per channel for images, per feature for
vectors): +1 strictly above it, -1 otherwise; features that already take only two values keep
them (threshold at their midpoint). ``arch_args.input_levels: K > 1`` replaces the median by a
thermometer code (seed 004 uses one for tabular data): K thresholds per feature or channel at
the training quantiles, K input bits each (see ``LocalMlpArgs``). The network, the pieces of its
update and their stacked form for packs are in ``nn/local.py``; this file is the method.

Per minibatch and layer (greedy, single pass; layer l+1 sees layer l's activations from
before its update):
1. a sample is wrong if argmax(a_l P_l) != y or top1 - top2 < floor(r * N_l) (robustness r);
2. target rho_k = P_l[k, y]; stability Delta_k = z_k * rho_k; unit k errs if Delta_k < 0;
3. in each contiguous group of gamma units, the erring unit with the smallest |Delta| is chosen;
4. H[:, k] += 2 * sum over wrong samples choosing k of a_{l-1} * rho_k (integer matrix product);
5. metaplastic reinforcement: each weight, with probability
   p_r * sqrt(1 - acc_prev) * sqrt(2 / (pi * N_{l-1})), gets h += 2 * sign(h)
   (acc_prev: the previous epoch's training accuracy, 0 in the first epoch);
6. with ``hidden_bits`` b > 0, H is clipped to [-2^(b-1), 2^(b-1)].

The update uses integer and boolean arithmetic only (int32 values; no autograd). The matrix
products multiply {-1, 0, +1} matrices; they run as float32 matmuls (BLAS on the CPU; CUDA has no
int32 matmul), which are exact because every partial sum is an integer below 2^24, and are cast
back to int32 (``imatmul``). On the CPU a step touches only what changes (the selected units'
columns of H, the reinforced weights, sign(H) kept between steps: ``_sparse_layer_step``); the
dense step (the GPU's, with no data-dependent shapes) is the reference it equals bit for bit.
Reinforcement events are drawn as Geometric gaps between hits (``reinforcement_mask``;
``reinforce_draw: dense`` draws one uniform per weight, the stream of runs made before).
sign(0) = +1 everywhere (methods.md pitfall 6.5.1), so the network is strictly binary.
``train/loss`` is the local 0-1 error of the last layer; ``val/loss`` is the cross-entropy of
the raw integer scores (not comparable with the gradient methods). Reported per layer:
``local/err/<l>`` (the local error rate with the robustness margin: the samples that update),
``local/miss/<l>`` (without it: the share the layer's local classifier misclassifies),
``local/updates/<l>`` (the units selected for an update per step, summed over the minibatch:
divided by the batch size, §6.4's selected units per sample; each moves its column's N_in hidden
weights by 2), ``local/reinforced/<l>`` (reinforcement events per step), ``local/saturation/<l>``, the |H| percentiles ``local/h_abs_q10/<l>``,
``_q50``, ``_q90`` (methods.md §6.4's histogram, in three numbers); cost:
``cost/train_gates`` (Boolean gates so far, §6.4 model) and ``cost/train_mem_bits``.

Packed trials: on a GPU a pack's members train as one stacked network (``LocalBinaryPack``,
``LocalBinary.train_step_pack``; bit for bit their lone runs); on the CPU one after another
inside the pack, which measured faster there (``LocalBinary.pack_model``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..archs import register_arch
from ..cost import LayerCost, totals
from ..nn.local import (LocalBinaryNet, LocalBinaryPack, gap_positions, imatmul, local_update, pm1, reinforce,
                        reinforcement_hits, reinforcement_mask, selection, selection_stacked)
from ..nn.pack import stack_members
from ..nn.quantizers import _pm1 as _mask_pm1
from .base import Method, Pack, RunInfo, Setup, percentiles, register_method


@dataclass(frozen=True)
class LocalMlpArgs:
    """``input_levels``: thresholds per input feature (per channel for images). 1: one bit at the
    training median, the paper's encoding for images. K > 1: a thermometer code, the paper's
    encoding for tabular data [RECON: the paper's code for it is not released; here the K
    thresholds are the training values of rank floor(i (N-1) / (K+1)), i = 1..K, i.e. the
    quantiles i / (K+1), and K = 1 is exactly the median]. The first layer then has K x the
    inputs. Real-valued vectors such as MNIST-1D need it: median bits of its 40 features leave
    ~18 % test accuracy even to a full-precision MLP, 16 levels ~70 %."""

    widths: tuple[int, ...] = (525, 525)
    input_levels: int = 1

    def validate(self):
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError("widths must be a non-empty list of positive integers")
        if self.input_levels < 1:
            raise ValueError(f"input_levels must be >= 1 (1: median bits, K > 1: thermometer code), "
                             f"not {self.input_levels}")


def _local_mlp(in_shape, num_classes, a: LocalMlpArgs):
    """A stack of binary FC layers with integer hidden weights (trained by local_binary only)."""
    return LocalBinaryNet(math.prod(in_shape), num_classes, a.widths, input_levels=a.input_levels)


_local_mlp.only_method = "local_binary"
register_arch("local_mlp", LocalMlpArgs)(_local_mlp)


@dataclass(frozen=True)
class LocalHparams:
    group_size: int = 105
    robustness: float = 0.25
    p_r: float = 0.5
    hidden_bits: int = 0  # 0 = unclipped; b > 0 clips H to [-2^(b-1), 2^(b-1)]
    init_std: float = 64.0
    # How the reinforcement events are drawn (reinforcement_mask): "gaps" (sparse, default) or
    # "dense" (one uniform per weight, the reference; runs before this option existed used it).
    # Shared by a pack's members (a choice of random stream, not a tuned hyperparameter; with
    # "dense" the members' identical streams are drawn once per pack step).
    reinforce_draw: str = field(default="gaps", metadata={"packable": False})

    def validate(self):
        if self.reinforce_draw not in ("gaps", "dense"):
            raise ValueError(f"reinforce_draw must be 'gaps' or 'dense', not {self.reinforce_draw!r}")
        if self.group_size < 1 or not 0 <= self.robustness <= 1 or not 0 <= self.p_r <= 1:
            raise ValueError("group_size >= 1, robustness in [0, 1] and p_r in [0, 1] required")
        if self.hidden_bits < 0 or self.hidden_bits > 31 or self.init_std <= 0:
            raise ValueError("0 <= hidden_bits <= 31 and init_std > 0 required")


# The CPU trains with _sparse_layer_step; False: the dense reference path (benchmarks/local_binary_draw.py).
SPARSE_ON_CPU = True
# A pack on the CPU trains its members one after another; True: the stacked step (LocalBinary.pack_model).
STACK_ON_CPU = False


def _sparse_layer_step(model: LocalBinaryNet, l: int, a, y, hp: LocalHparams, margin: int, p, p_max: float, gen,
                       cache: dict):
    """One layer's update touching only what changes (the CPU path; the dense path in
    LocalBinary.train_step is the reference and gives the same H bit for bit, tested): the
    columns of the selected units (at most n_out / group_size per sample; when over a quarter of
    the columns change, the whole increment is added at once, cheaper then), the reinforced
    weights, the clip on those, and sign(H) kept in `cache` between steps (reinforcement and the
    clip never change a sign, so only the updated columns are refreshed). The cache is rebuilt
    (and H clipped whole) whenever H was changed by anything else: a checkpoint restore, the
    first step, another process. Data-dependent shapes: for the CPU, where they cost no sync."""
    H = model.H(l)
    n_out = H.shape[1]
    c = cache.get(l)
    fresh = c is None or c[0] != (H.data_ptr(), H._version)
    W = model.signs(l) if fresh else c[1]
    z, act, scores = model.layer(l, a, W)
    upd, wrong, sel = selection(z, scores, y, model.P(l), hp.group_size, margin)
    cols = sel.any(0).nonzero().squeeze(1)
    whole = 4 * cols.numel() > n_out
    if whole:
        H += 2 * imatmul(a.T, upd)
    else:
        H.index_add_(1, cols, 2 * imatmul(a.T, upd.index_select(1, cols)))
    hits = reinforcement_hits(H.shape, p, p_max, gen, hp.reinforce_draw)
    flat = H.view(-1)
    h = flat[hits]
    h += 2 * pm1(h)
    if hp.hidden_bits:
        bound = 2 ** (hp.hidden_bits - 1)
        h.clamp_(-bound, bound)
        if fresh or whole:  # fresh: H may hold values outside the bound (initialisation)
            H.clamp_(-bound, bound)
        else:
            H.index_copy_(1, cols, H.index_select(1, cols).clamp_(-bound, bound))
    flat[hits] = h
    if whole:
        W = model.signs(l)
    else:
        W.index_copy_(1, cols, _mask_pm1(H.index_select(1, cols) >= 0, torch.float32))
    cache[l] = ((H.data_ptr(), H._version), W)
    return z, act, scores, wrong, sel, hits.numel()


@register_method("local_binary")
class LocalBinary(Method):
    Hparams = LocalHparams
    archs = ("local_mlp",)

    def validate_config(self, hp: LocalHparams, arch_args: LocalMlpArgs, epochs: int | None = None) -> None:
        bad = [w for w in arch_args.widths if w % hp.group_size]
        if bad:
            raise ValueError(f"group_size {hp.group_size} must divide every width in arch_args.widths "
                             f"{list(arch_args.widths)} (it does not divide {bad[0]})")

    def build(self, arch, arch_args, in_shape, num_classes, hp, sign0="plus", seed=0):
        if arch not in self.archs:
            raise ValueError(f"local_binary trains only arch local_mlp, not {arch!r}")
        self.validate_config(hp, arch_args)
        return LocalBinaryNet(math.prod(in_shape), num_classes, arch_args.widths, hp.init_std, seed,
                              arch_args.input_levels)

    def inference_cost(self, model: LocalBinaryNet, in_shape):
        """Inference needs sign(H) (1 bit) and the last local classifier P_L (1 bit): XNOR +
        popcount per MAC, so all MACs are BOPs. The input thresholds are 32-bit."""
        rows = []
        for l in range(model.n_layers):
            n_in, n_out = model.H(l).shape
            rows.append(LayerCost(f"H{l}", "binary fc", f"{n_in}x{n_out}", n_in * n_out, n_in * n_out, 1, 1,
                                  n_in * n_out, 0, n_in * n_out))
        n_last, c = model.P(model.n_layers - 1).shape
        rows.append(LayerCost(f"P{model.n_layers - 1}", "local classifier", f"{n_last}x{c}", n_last * c, n_last * c,
                              1, 1, n_last * c, 0, n_last * c))
        n0 = model.threshold.numel()
        rows.append(LayerCost("(input thresholds)", "-", "-", n0, 0, 32, 32, 0, 0, 32 * n0))
        return rows, totals(rows)

    def prepare(self, model: LocalBinaryNet, data) -> None:
        """Binarization thresholds: the training median per channel for images (N, C, H, W),
        per feature for vectors; with ``input_levels`` K > 1 the K training quantiles
        i / (K+1) instead (the value of rank floor(i (N-1) / (K+1)); K = 1 is the lower median).
        A feature (or channel) that takes at most two values keeps them: every threshold is
        their midpoint. (The median of a +-1 feature with more +1s is +1, and 'strictly above
        the median' would map the whole feature to -1, losing it.)"""
        x = data.x_train
        flat = x.transpose(0, 1).flatten(1) if x.ndim == 4 else x.flatten(1).T  # (features or channels, N)
        K, n = model.input_levels, flat.shape[1]
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        two_valued = ((flat == lo[:, None]) | (flat == hi[:, None])).all(dim=1)
        mid = (lo + hi) / 2
        levels = []
        for i in range(1, K + 1):
            thr = torch.where(two_valued, mid, flat.kthvalue(i * (n - 1) // (K + 1) + 1, dim=1).values)
            if x.ndim == 4:
                thr = thr[:, None].expand(x.shape[1], x.shape[2] * x.shape[3]).flatten()
            levels.append(thr)
        model.threshold.copy_(torch.cat(levels))

    def pack_model(self, members):
        """The members stacked (:class:`LocalBinaryPack`, trained by :meth:`train_step_pack`), or
        None on the CPU: there the members train one after another inside the pack (exact; the
        pack saves Ray's and MLflow's per-trial overhead, not compute). A lone CPU step is
        already lean (the sparse step) and mostly products and passes over H that stacking does
        not shrink; K = 8 stacked measured 0.68x (batch 10) and 0.92x (batch 100) of one after
        another on 2 cores (``benchmarks/packed.py``, its local_mlp lines). On a GPU a lone step is dozens of
        small kernels, which the stacked step launches once for all K members. ``STACK_ON_CPU``
        stacks on the CPU too (the tests check the stacked step there, against lone runs)."""
        if members[0].H(0).device.type == "cpu" and not STACK_ON_CPU:
            return None
        return LocalBinaryPack(members)

    def binary_signs_stacked(self, packed, models):
        if not isinstance(packed, LocalBinaryPack):
            return None
        return [(lambda l=l: packed.H(l) >= 0) for l in range(packed.n_layers)]

    def _bind(self, pack: Pack) -> dict:
        """What the stacked step needs, made once per pack: the members' hyperparameters as
        tensors over the member dimension, and their per-epoch accumulators (``stats``, ``acc``:
        checkpointed, read by each member's metrics) stacked, the members' own tensors becoming
        slices of them."""
        net: LocalBinaryPack = pack.module
        b = net.step_ctx
        if b:
            return b
        dev, k_n = net.H(0).device, net.k
        ctx = [s.ctx for s in pack.setups]
        hps = [c[0] for c in ctx]
        b["draw"], b["gens"], b["seeds"] = hps[0].reinforce_draw, [c[3] for c in ctx], [c[4] for c in ctx]
        b["stats"] = {n: stack_members([c[1][n] for c in ctx]) for n in ctx[0][1]}  # [K, L]
        b["acc"] = {n: stack_members([c[2][n] for c in ctx]) for n in ctx[0][2]}  # [K]
        b["p_r"] = torch.tensor([hp.p_r for hp in hps], dtype=torch.float32, device=dev)
        big = torch.iinfo(torch.int32).max
        bound = [2 ** (hp.hidden_bits - 1) if hp.hidden_bits else big for hp in hps]
        b["clip"] = (torch.tensor(bound, dtype=torch.int32, device=dev).view(k_n, 1, 1)
                     if any(hp.hidden_bits for hp in hps) else None)
        b["layers"] = []
        for l in range(net.n_layers):
            n_in, n_out = net.H(l).shape[1:]
            margin = torch.tensor([[int(hp.robustness * n_out)] for hp in hps], dtype=torch.int32, device=dev)
            seg = torch.stack([torch.arange(n_out, device=dev) // hp.group_size for hp in hps])[:, None, :]
            scale = math.sqrt(2 / (math.pi * n_in))
            b["layers"].append((margin, seg, scale, [hp.p_r * scale for hp in hps]))
        return b

    def train_step_pack(self, pack: Pack, x, y, forward):
        """Every live member's ``train_step`` in one stacked step, bit for bit each member's lone
        step (tested): the forward as batched integer products (layer 0's input bits shared),
        the selection with each member's group size and margin, the increments of all members
        in one product, each member's reinforcement drawn from its own generator (the stream it
        draws alone; ``dense`` draws, the same for every member, once), each member's clip.
        The dense step (the GPU's: no data-dependent shape, no host sync). A stopped member's H
        takes no increment and no reinforcement; its accumulators are not read again."""
        if not isinstance(pack.module, LocalBinaryPack):
            return super().train_step_pack(pack, x, y, forward)
        return self._stacked_step(pack, x, y)

    @torch.no_grad()
    def _stacked_step(self, pack: Pack, x, y):
        net: LocalBinaryPack = pack.module
        b = self._bind(pack)
        live = pack.live()
        k_n, draw, clip = net.k, b["draw"], b["clip"]
        gens = b["gens"]
        for k in live:  # each member's draws: a pure function of (seed, its step), as alone
            gens[k].manual_seed(b["seeds"][k] * 1_000_003 + pack.setups[k].state["steps"])
        alive = None  # [K, 1, 1] bool once a member has stopped, made when the live set changes
        if len(live) < k_n:
            if b.get("live_key") != tuple(pack.active):
                b["live_key"] = tuple(pack.active)
                b["live"] = torch.tensor(pack.active, device=net.H(0).device).view(k_n, 1, 1)
            alive = b["live"]
        stats, acc = b["stats"], b["acc"]
        a = net.members[0].binarize_input(x)  # [B, N_0], shared by the members
        for l, (margin, seg, scale, p_max) in enumerate(b["layers"]):
            H = net.H(l)
            z, act, scores = net.layer(l, a)  # [K, B, N_l], the same, [K, B, C]
            upd, wrong, sel = selection_stacked(z, scores, y, net.P(l), seg, margin)
            if alive is not None:
                upd *= alive
            H += 2 * imatmul(a.transpose(-2, -1), upd)
            p = b["p_r"] * torch.sqrt(1 - acc["prev"]) * scale  # [K], as each member computes it
            mask = self._stacked_mask(H, p, p_max, gens, live, alive, draw)
            H += 2 * pm1(H) * mask
            if clip is not None:
                H.clamp_(-clip, clip)
            stats["reinforced"][:, l] += mask.flatten(1).sum(1, dtype=torch.int32)
            stats["err"][:, l] += wrong.float().mean(1)
            stats["miss"][:, l] += (scores.argmax(2) != y).float().mean(1)
            stats["updates"][:, l] += sel.flatten(1).sum(1, dtype=torch.int32)
            a = act
        pred = scores.argmax(2)  # [K, B]
        acc["correct"] += (pred == y).sum(1)
        acc["seen"] += len(y)
        return (pred != y).float().mean(1), scores.float().transpose(0, 1)

    @staticmethod
    def _stacked_mask(H, p, p_max, gens, live, alive, draw):
        """The live members' reinforcement events, a mask of the stacked H ``[K, N_in, N_out]``,
        each member's from its own generator exactly as ``reinforcement_mask`` draws it alone."""
        k_n, shape, n = H.shape[0], H.shape[1:], H[0].numel()
        if draw == "dense":  # every live member's stream is the same (seed and step shared): draw once
            mask = reinforcement_mask(shape, p.view(k_n, 1, 1), max(p_max), gens[live[0]], "dense")
            return mask if alive is None else mask & alive
        flat = torch.zeros(k_n * n + 1, dtype=torch.bool, device=H.device)
        parts = []
        for k in live:
            if p_max[k] > 0:
                pos, hit = gap_positions(n, p[k], p_max[k], gens[k])
                parts.append(torch.where(hit, pos + k * n, float(k_n * n)).long())  # misses: the spare slot
        if parts:
            flat[torch.cat(parts)] = True
        return flat[:-1].view(H.shape)

    def binary_storage(self, model: LocalBinaryNet):
        return [model.H(l) for l in range(model.n_layers)]

    def binary_signs(self, model: LocalBinaryNet):
        return [(f"H{l}", (lambda l=l: model.H(l) >= 0), model.H(l).numel()) for l in range(model.n_layers)]

    def train_gates_per_step(self, model, setup, info):
        return None  # no fp32 training: its own gate count (§6.4), reported by setup's report

    def setup(self, model: LocalBinaryNet, hp: LocalHparams, total_steps: int, info: RunInfo | None = None) -> Setup:
        dev = model.H(0).device
        L = model.n_layers
        stats = {k: torch.zeros(L, device=dev) for k in ("err", "miss", "updates", "reinforced")}
        acc = {"correct": torch.zeros((), device=dev), "seen": torch.zeros((), device=dev),
               "prev": torch.zeros((), device=dev)}
        gen = torch.Generator(device=dev)
        B, C = info.batch_size, info.num_classes
        dims = [model.H(0).shape[0], *model.widths]  # the input bits (x input_levels)
        gates = 0
        for l, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            gates += B * n_in * n_out * (1 + 10) + B * n_out * C * (1 + 10)  # forward + local classifier
            gates += 9 * B * n_out if l < L - 1 else 0                           # backward
            gates += 2 * n_in * n_out + 10 * n_in * n_out + 10 * 4 * n_in * n_out  # update
        wbits = hp.hidden_bits or 8
        mem = (dims[0] * info.n_train + sum(a * b for a, b in zip(dims[:-1], dims[1:])) * wbits
               + max(model.widths) * C + (B * sum(model.widths) + B * C) * 8)
        # Checkpointed and restored in place by the engine (Setup.state).
        host = {"steps": 0, "epoch_steps": 0, "gates_per_step": float(gates), "acc": acc, "stats": stats}

        def on_step(step, p):
            host["steps"] += 1
            host["epoch_steps"] += 1

        def epoch_end():
            acc["prev"].copy_(acc["correct"] / acc["seen"].clamp_min(1))
            acc["correct"].zero_()
            acc["seen"].zero_()

        def report():
            n = max(host["epoch_steps"], 1)
            out = {"cost/train_gates": host["steps"] * host["gates_per_step"], "cost/train_mem_bits": float(mem),
                   "sched/reinforce_scale": acc["prev"].clone()}
            for l in range(L):
                out[f"local/err/{l}"] = stats["err"][l] / n
                out[f"local/miss/{l}"] = stats["miss"][l] / n
                out.update(percentiles(model.H(l).abs(), "local/h_abs", suffix=f"/{l}"))
                out[f"local/updates/{l}"] = stats["updates"][l] / n
                out[f"local/reinforced/{l}"] = stats["reinforced"][l] / n
                if hp.hidden_bits:
                    bound = 2 ** (hp.hidden_bits - 1)
                    out[f"local/saturation/{l}"] = (model.H(l).abs() >= bound).float().mean()
            for v in stats.values():
                v.zero_()
            host["epoch_steps"] = 0
            return out

        return Setup([], [], epoch_metrics=[report], on_step=[on_step], on_epoch_end=[epoch_end], state=host,
                     ctx=(hp, stats, acc, gen, info.seed, {"sparse": dev.type == "cpu" and SPARSE_ON_CPU}))

    @torch.no_grad()
    def train_step(self, model: LocalBinaryNet, x, y, setup, forward):
        hp, stats, acc, gen, seed, cache = setup.ctx
        # Reseeded from (seed, step): reinforcement draws are a pure function of the step, so a
        # resumed run continues exactly without checkpointing generator state.
        gen.manual_seed(seed * 1_000_003 + setup.state["steps"])
        a = model.binarize_input(x)
        scores = None
        for l in range(model.n_layers):
            H = model.H(l)
            n_in, n_out = H.shape
            margin = int(hp.robustness * n_out)
            p = hp.p_r * torch.sqrt(1 - acc["prev"]) * math.sqrt(2 / (math.pi * n_in))
            p_max = hp.p_r * math.sqrt(2 / (math.pi * n_in))  # acc_prev >= 0
            if cache["sparse"]:
                z, act, scores, wrong, sel, hits = _sparse_layer_step(model, l, a, y, hp, margin, p, p_max, gen, cache)
                stats["reinforced"][l] += hits
            else:
                z, act, scores = model.layer(l, a)
                dH, wrong, sel = local_update(a, z, scores, y, model.P(l), hp.group_size, margin)
                H += dH
                mask = reinforcement_mask(H.shape, p, p_max, gen, hp.reinforce_draw)
                reinforce(H, mask)
                if hp.hidden_bits:
                    bound = 2 ** (hp.hidden_bits - 1)
                    H.clamp_(-bound, bound)
                stats["reinforced"][l] += mask.sum()
            stats["err"][l] += wrong.float().mean()
            stats["miss"][l] += (scores.argmax(1) != y).float().mean()
            stats["updates"][l] += sel.sum()
            a = act
        pred = scores.argmax(1)
        acc["correct"] += (pred == y).sum()
        acc["seen"] += len(y)
        err = (pred != y).float().mean()
        return err, scores.float()

