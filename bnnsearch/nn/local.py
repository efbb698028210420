"""The local-learning binary network of ``local_binary`` (seed 004, methods.md §6): integer hidden
weights H per layer whose signs are the binary weights, fixed random +-1 local classifiers P, and
the pieces of its gradient-free update, exact in integers — the int32 product, the local errors
with the robustness margin, the group-sparse selection of the erring unit with the smallest
|Delta| per group, the metaplastic reinforcement and its sparse random draw — and K such networks
stacked for packed trials (``LocalBinaryPack``). The method that trains them is
``methods/local_binary.py``."""
from __future__ import annotations

import math

import torch
from torch import nn

from .pack import NotPackable, stack_members
from .quantizers import _pm1 as _mask_pm1


def pm1(x: torch.Tensor) -> torch.Tensor:
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
        act = pm1(z)
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
            p = pm1(torch.trunc(torch.randn(n_out, num_classes, generator=gen) * 64.0))
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


def reinforce(H: torch.Tensor, mask: torch.Tensor) -> None:
    """h += 2 * sign(h) where mask (in place). On the CPU only the masked weights are touched
    (p ~ 1e-2 of them); elsewhere dense, with no data-dependent shape (nonzero would sync with
    the host every step). Both give the same H (tested)."""
    if H.device.type == "cpu":
        idx = mask.nonzero(as_tuple=True)
        h = H[idx]
        H[idx] = h + 2 * pm1(h)
    else:
        H += 2 * pm1(H) * mask


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
    pos, hit = gap_positions(n, p, p_max, gen)
    flat = torch.zeros(n + 1, dtype=torch.bool, device=p.device)
    flat[torch.where(hit, pos, float(n)).long()] = True  # misses land on the spare slot n
    return flat[:n].view(shape)


def gap_positions(n: int, p: torch.Tensor, p_max: float, gen: torch.Generator):
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
    pos, hit = gap_positions(math.prod(shape), p, p_max, gen)
    return pos[hit].long()


def local_update(a_in, z, scores, y, P, group: int, margin: int):
    """The increment of H for one layer (int32, shape of H), the wrong-sample mask and the
    selected (sample, unit) pairs."""
    upd, wrong, sel = selection(z, scores, y, P, group, margin)
    return 2 * imatmul(a_in.T, upd), wrong, sel


def local_errors(z, scores, y, P, margin):
    """Steps 1-2 of the update, alone (z ``[B, N]``, P ``[N, C]``) or stacked (a leading member
    dimension, ``margin`` ``[K, 1]``): the wrong samples, rho, Delta and the erring units."""
    top2 = scores.topk(2, dim=-1).values
    wrong = (scores.argmax(-1) != y) | ((top2[..., 0] - top2[..., 1]) < margin)
    rho = P[..., y].transpose(-2, -1)  # like z, +-1
    delta = z * rho
    return wrong, rho, delta, delta < 0


def selection(z, scores, y, P, group: int, margin: int):
    """Steps 1-3 of the update: (sel * rho as int32, wrong, sel)."""
    wrong, rho, delta, err = local_errors(z, scores, y, P, margin)
    B, N = z.shape
    big = torch.iinfo(torch.int32).max
    mag = delta.abs().masked_fill_(~err, big).view(B, N // group, group)
    pick = mag.argmin(dim=2, keepdim=True)
    chosen = torch.zeros_like(mag, dtype=torch.bool).scatter_(2, pick, True)
    chosen &= err.view(B, N // group, group)
    sel = chosen.view(B, N) & wrong[:, None]
    return sel.to(torch.int32) * rho, wrong, sel


def selection_stacked(z, scores, y, P, seg, margin):
    """``selection`` for K members at once: z ``[K, B, N]``, scores ``[K, B, C]``, P ``[K, N, C]``;
    ``margin`` ``[K, 1]`` and the group of each unit per member, ``seg`` ``[K, 1, N]`` (unit j
    of member k is in group j // group_size_k), so the members may have different group sizes.
    The erring unit with the smallest |Delta| per group, the first one on ties (argmin's rule),
    is the minimum of |Delta| * N + j per group (int64: no tie left)."""
    wrong, rho, delta, err = local_errors(z, scores, y, P, margin)
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
