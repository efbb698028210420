"""Gradient-free training with local binary error signals (seed 004: Colombo, Pittorino,
Roveri; methods.md §6; code-faithful to the anonymized release ``lucacolombo97/BNN_Anon``).

Network (arch ``local_mlp``): L binary fully-connected layers. Layer l stores integer hidden
(metaplastic) weights H_l; W_l = sign(H_l), z_l = a_{l-1} W_l, a_l = sign(z_l). Each layer has
a fixed random local classifier P_l in {-1, +1}^{N_l x C}; the prediction is the argmax of the
last layer's local scores a_L P_L. Inputs are binarized at the training-set median (per channel for images, per feature for
vectors): +1 strictly above it, -1 otherwise; features that already take only two values keep
them (threshold at their midpoint). ``arch_args.input_levels: K > 1`` replaces the median by a
thermometer code (seed 004 uses one for tabular data): K thresholds per feature or channel at
the training quantiles, K input bits each (see ``LocalMlpArgs``).

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
from torch import nn

from ..archs import register_arch
from ..cost import LayerCost, totals
from ..nn.pack import NotPackable, stack_members
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


def _pm1(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, as int32."""
    return _mask_pm1(x >= 0, torch.int32)


def imatmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The integer product of two matrices with entries in {-1, 0, +1} (every use here: signs,
    +-1 classifiers, 0/+-1 selections), as int32. Computed as a float32 matmul: every partial sum
    is an integer of magnitude at most the inner dimension (< 2^24), which float32 holds exactly
    in any summation order, so the result equals the int32 product bit for bit (tested) — and
    runs on BLAS (about 3.5x faster than PyTorch's int32 matmul on the CPU; CUDA has no int32
    matmul at all)."""
    if a.shape[-1] >= 1 << 24:
        raise ValueError(f"imatmul: inner dimension {a.shape[-1]} is not exact in float32")
    if torch.is_autocast_enabled(a.device.type):  # amp: bf16 would round the integer sums
        with torch.autocast(a.device.type, enabled=False):
            return (a.float() @ b.float()).to(torch.int32)
    return (a.float() @ b.float()).to(torch.int32)


class _Layers(nn.Module):
    """What a network of local binary layers computes, alone (H_l ``[N_in, N_out]``) or stacked
    over a pack's members (``[K, N_in, N_out]``: the same code, the products batched)."""

    def H(self, l):
        return getattr(self, f"H{l}")

    def P(self, l):
        return getattr(self, f"P{l}")

    def signs(self, l: int) -> torch.Tensor:
        """sign(H_l) as a float32 +-1 matrix (sign(0) = +1), built at once."""
        return _mask_pm1(self.H(l) >= 0, torch.float32)

    def layer(self, l: int, a: torch.Tensor, W: torch.Tensor | None = None):
        """(z, sign(z), local scores) of layer l; W: sign(H_l) if the caller keeps it up to date."""
        z = imatmul(a, self.signs(l) if W is None else W)
        act = _pm1(z)
        return z, act, imatmul(act, self.P(l))


class LocalBinaryNet(_Layers):
    """Binary FC stack with integer hidden weights and fixed random local classifiers (buffers
    only: nothing here is trained by autograd)."""

    def __init__(self, in_features: int, num_classes: int, widths, init_std: float = 64.0, seed: int = 0,
                 input_levels: int = 1):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        dims = [in_features * input_levels, *widths]
        self.widths = tuple(widths)
        for l, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            h = torch.trunc(torch.randn(n_in, n_out, generator=gen) * init_std).to(torch.int32)
            p = _pm1(torch.trunc(torch.randn(n_out, num_classes, generator=gen) * 64.0))
            self.register_buffer(f"H{l}", h)
            self.register_buffer(f"P{l}", p)
        # level-major: threshold[i * in_features + f] is feature f's i-th threshold
        self.register_buffer("threshold", torch.zeros(in_features * input_levels))
        self.input_levels = input_levels
        self.n_layers = len(widths)

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        # strictly above the median -> +1: with ">=" every background pixel of MNIST would be +1
        # (B, 1, F) against the (levels, F) thresholds, flattened level-major like them
        above = x.flatten(1)[:, None, :] > self.threshold.view(self.input_levels, -1)
        return _mask_pm1(above.flatten(1), torch.int32)

    def forward(self, x):
        a = self.binarize_input(x)
        for l in range(self.n_layers):
            _, a, scores = self.layer(l, a)
        return scores.float()


def _local_mlp(in_shape, num_classes, a: LocalMlpArgs):
    """A stack of binary FC layers with integer hidden weights (trained by local_binary only)."""
    return LocalBinaryNet(math.prod(in_shape), num_classes, a.widths, input_levels=a.input_levels)


_local_mlp.only_method = "local_binary"
register_arch("local_mlp", LocalMlpArgs)(_local_mlp)


def reinforce(H: torch.Tensor, mask: torch.Tensor) -> None:
    """h += 2 * sign(h) where mask (in place). On the CPU only the masked weights are touched
    (p ~ 1e-2 of them); elsewhere dense, with no data-dependent shape (nonzero would sync with
    the host every step). Both give the same H (tested)."""
    if H.device.type == "cpu":
        idx = mask.nonzero(as_tuple=True)
        h = H[idx]
        H[idx] = h + 2 * _pm1(h)
    else:
        H += 2 * _pm1(H) * mask


def reinforcement_mask(shape, p: torch.Tensor, p_max: float, gen: torch.Generator, draw: str = "gaps"):
    """Which weights reinforcement hits this step: each of the N = prod(shape) weights
    independently with probability p (a 0-dim tensor on the weights' device, p <= p_max).

    ``dense`` (the reference): one uniform per weight, ``rand(shape) < p`` -- O(N) random numbers
    per step, most of a small-batch step's time on the CPU (p is ~1e-3, N ~ 4e5).
    ``gaps`` (default): the positions of the successes of a Bernoulli(p) sequence, drawn as
    cumulative sums of i.i.d. Geometric(p) gaps (inverse transform, floor(log U / log(1-p)) + 1
    with U in (0, 1]) -- M = N p_max + 10 sqrt(N p_max) + 20 random numbers, capped at N, with no
    data-dependent shape and no host sync (p stays on the device). The same distribution as
    ``dense`` except when more than M weights would be hit: those beyond the M-th are dropped, an
    event of probability below 1e-20 for this M (a Chernoff bound on Binomial(N, p_max)), and
    impossible when the cap N binds. Different random streams: the two draws give different
    (equally distributed) runs for one seed."""
    if draw == "dense":
        return torch.rand(shape, device=p.device, generator=gen) < p
    n = math.prod(shape)
    if p_max <= 0:
        return torch.zeros(shape, dtype=torch.bool, device=p.device)
    pos, hit = _gap_positions(n, p, p_max, gen)
    flat = torch.zeros(n + 1, dtype=torch.bool, device=p.device)
    flat[torch.where(hit, pos, float(n)).long()] = True  # misses land on the spare slot n
    return flat[:n].view(shape)


def _gap_positions(n: int, p: torch.Tensor, p_max: float, gen: torch.Generator):
    """Candidate hit positions (float64, increasing) and which of them fall inside [0, n)."""
    lam = n * p_max
    m = min(n, math.ceil(lam + 10 * math.sqrt(lam) + 20))
    u = 1 - torch.rand(m, device=p.device, generator=gen, dtype=torch.float64)  # (0, 1]
    gaps = torch.floor(torch.log(u) / torch.log1p(-p.double())) + 1  # p = 0: inf or nan, no hit
    pos = torch.cumsum(gaps, 0) - 1
    return pos, pos < n  # False for inf and nan


def reinforcement_hits(shape, p: torch.Tensor, p_max: float, gen: torch.Generator, draw: str = "gaps"):
    """reinforcement_mask's hits as flat indices into H (int64, increasing), from the same random
    numbers: a data-dependent shape, so for the CPU (no host sync to pay)."""
    if draw == "dense":
        return reinforcement_mask(shape, p, p_max, gen, draw).view(-1).nonzero().squeeze(1)
    if p_max <= 0:
        return torch.zeros(0, dtype=torch.long, device=p.device)
    pos, hit = _gap_positions(math.prod(shape), p, p_max, gen)
    return pos[hit].long()


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


def local_update(a_in, z, scores, y, P, group: int, margin: int):
    """The increment of H for one layer (int32, shape of H), the wrong-sample mask and the
    selected (sample, unit) pairs."""
    upd, wrong, sel = _selection(z, scores, y, P, group, margin)
    return 2 * imatmul(a_in.T, upd), wrong, sel


def _errors(z, scores, y, P, margin):
    """Steps 1-2 of the update, alone (z ``[B, N]``, P ``[N, C]``) or stacked (a leading member
    dimension, ``margin`` ``[K, 1]``): the wrong samples, rho, Delta and the erring units."""
    top2 = scores.topk(2, dim=-1).values
    wrong = (scores.argmax(-1) != y) | ((top2[..., 0] - top2[..., 1]) < margin)
    rho = P[..., y].transpose(-2, -1)  # like z, +-1
    delta = z * rho
    return wrong, rho, delta, delta < 0


def _selection(z, scores, y, P, group: int, margin: int):
    """Steps 1-3 of the update: (sel * rho as int32, wrong, sel)."""
    wrong, rho, delta, err = _errors(z, scores, y, P, margin)
    B, N = z.shape
    big = torch.iinfo(torch.int32).max
    mag = delta.abs().masked_fill_(~err, big).view(B, N // group, group)
    pick = mag.argmin(dim=2, keepdim=True)
    chosen = torch.zeros_like(mag, dtype=torch.bool).scatter_(2, pick, True)
    chosen &= err.view(B, N // group, group)
    sel = chosen.view(B, N) & wrong[:, None]
    return sel.to(torch.int32) * rho, wrong, sel


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
    upd, wrong, sel = _selection(z, scores, y, model.P(l), hp.group_size, margin)
    cols = sel.any(0).nonzero().squeeze(1)
    whole = 4 * cols.numel() > n_out
    if whole:
        H += 2 * imatmul(a.T, upd)
    else:
        H.index_add_(1, cols, 2 * imatmul(a.T, upd.index_select(1, cols)))
    hits = reinforcement_hits(H.shape, p, p_max, gen, hp.reinforce_draw)
    flat = H.view(-1)
    h = flat[hits]
    h += 2 * _pm1(h)
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


def _selection_stacked(z, scores, y, P, seg, margin):
    """``_selection`` for K members at once: z ``[K, B, N]``, scores ``[K, B, C]``, P ``[K, N, C]``;
    ``margin`` ``[K, 1]`` and the group of each unit per member, ``seg`` ``[K, 1, N]`` (unit j
    of member k is in group j // group_size_k), so the members may have different group sizes.
    The erring unit with the smallest |Delta| per group, the first one on ties (argmin's rule),
    is the minimum of |Delta| * N + j per group (int64: no tie left)."""
    wrong, rho, delta, err = _errors(z, scores, y, P, margin)
    n = z.shape[2]
    key = delta.abs().masked_fill_(~err, torch.iinfo(torch.int32).max).long().mul_(n)
    key += torch.arange(n, device=z.device)
    where = seg.expand_as(key)
    least = torch.full_like(key, torch.iinfo(torch.int64).max).scatter_reduce_(2, where, key, "amin")
    sel = (key == least.gather(2, where)) & err & wrong[..., None]
    return sel.to(torch.int32) * rho, wrong, sel


class LocalBinaryPack(_Layers):
    """K local_binary members (same widths, input code and data; engine.fit_pack) as one stacked
    network: every layer's hidden weights H ``[K, N_in, N_out]`` and local classifiers P
    ``[K, N_out, C]`` are one tensor each, whose slices the members' own buffers become
    (``nn.pack.stack_members``), so a member's state dict, checkpoint, flip statistics and
    metrics read its slice. ``forward(x)`` returns every member's scores ``[B, K, C]``.
    :meth:`LocalBinary.train_step_pack` trains all members in one stacked step."""

    def __init__(self, members):
        super().__init__()
        m0 = members[0]
        for m in members[1:]:
            if m.widths != m0.widths or m.input_levels != m0.input_levels or not torch.equal(m.threshold, m0.threshold):
                raise NotPackable("local_binary members differ in arch_args (widths, input_levels) or in their "
                                  "input thresholds (data)")
        self.k, self.n_layers = len(members), m0.n_layers
        self.__dict__["members"] = list(members)  # not submodules: the pack owns the stacked storage
        for l in range(self.n_layers):
            self.register_buffer(f"H{l}", stack_members([m.H(l) for m in members]))
            self.register_buffer(f"P{l}", stack_members([m.P(l) for m in members]))
        self.step_ctx: dict = {}  # what the stacked step keeps between steps (LocalBinary._bind)

    def slices(self) -> dict:
        return {}  # nothing for an optimizer: local_binary has none

    def forward(self, x):
        a = self.members[0].binarize_input(x)  # the members' thresholds: the same data, the same code
        for l in range(self.n_layers):
            _, a, scores = self.layer(l, a)
        return scores.float().transpose(0, 1)


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
            upd, wrong, sel = _selection_stacked(z, scores, y, net.P(l), seg, margin)
            if alive is not None:
                upd *= alive
            H += 2 * imatmul(a.transpose(-2, -1), upd)
            p = b["p_r"] * torch.sqrt(1 - acc["prev"]) * scale  # [K], as each member computes it
            mask = self._stacked_mask(H, p, p_max, gens, live, alive, draw)
            H += 2 * _pm1(H) * mask
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
                pos, hit = _gap_positions(n, p[k], p_max[k], gens[k])
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
