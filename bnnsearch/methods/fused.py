"""Fused optimizer steps for packed trials: one update of all members' stacked parameters.

In a pack (``nn/pack.py``) every member's parameters are slices of stacked tensors, and each
member has its own optimizers. Stepping K optimizers one after another costs K times the
per-parameter kernel launches; for the small networks worth packing that is a third of a
pack's step. A :class:`FusedStep` runs the update of one optimizer position (e.g. "the binary
optimizer" or "the full-precision Adam") for every member at once on the stacked tensors,
each member's hyperparameters (read from its own optimizer's param groups at every step, so
schedules keep working) as a ``[K, 1]`` column. The arithmetic mirrors the optimizer's own
single-tensor code operation by operation (same order, scalars replaced by per-member
columns), and each member's optimizer state is a slice of the fused state, so member
``state_dict()`` and checkpoints are unchanged.

Fused: ``torch.optim.Adam``/``AdamW`` (no amsgrad/maximize/capturable/differentiable),
``torch.optim.SGD`` (no nesterov/maximize, dampening 0), ``LatentSGD`` and
``FilteredOptimizer``. Parameters an optimizer holds that are not stacked (CycleBNN's output
scales, HBNN's cluster points) and optimizers of any other kind are stepped member by member
as before. ``tests/test_pack.py`` checks a packed member against the lone run step by step.
"""
from __future__ import annotations

from typing import Callable

import torch

from .base import host_tensor


def _col(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return host_tensor(values, like.dtype, like.device).view(-1, 1)


class _Cols:
    """Per-step cache of hyperparameter columns: the stacked tensors of one optimizer usually
    share their members' param groups, so each column is built once per step."""

    def __init__(self, active: list[bool]):
        self.cache: dict = {}
        self.active = active
        self.group_keys: dict[int, tuple] = {}  # id(a list of groups) -> the groups' ids, this step

    def __call__(self, name: str, groups: list[dict], fn: Callable[[dict], float], like: torch.Tensor,
                 neutral: float | None = None):
        """The column of ``fn(group)`` over members; members no longer live get ``neutral`` where
        given (a step size of 0, a decay factor of 1: their parameters stay as they are)."""
        gk = self.group_keys.get(id(groups))
        if gk is None:
            gk = self.group_keys[id(groups)] = tuple(id(g) for g in groups)
        key = (name, gk, like.dtype)
        col = self.cache.get(key)
        if col is None:
            vals = [fn(g) if neutral is None or a else neutral for g, a in zip(groups, self.active)]
            col = self.cache[key] = _col(vals, like)
        return col


def _adam_ok(g: dict) -> bool:
    return not (g.get("amsgrad") or g.get("maximize") or g.get("capturable") or g.get("differentiable")
                or g.get("fused") or g.get("foreach")) and not isinstance(g["lr"], torch.Tensor)


def _sgd_ok(g: dict) -> bool:
    return not (g.get("nesterov") or g.get("maximize") or g.get("dampening", 0) or g.get("fused")
                or g.get("foreach")) and not isinstance(g["lr"], torch.Tensor)


class FusedStep:
    """The fused update of optimizer position ``i`` over a pack's members (see module doc)."""

    def __init__(self, opts: list[torch.optim.Optimizer], stacked: list[tuple[torch.Tensor, list[dict], list]]):
        self.opts = opts
        self.kind = kind_of(opts[0])
        self.stacked = stacked  # (stacked tensor, each member's param group, each member's param)
        self.t = 0.0
        self.steps: torch.Tensor | None = None
        self._fused_state: dict[tuple[int, str], torch.Tensor] = {}  # (stacked index, state key) -> [K, n]

    # -- state --------------------------------------------------------------------------
    def _state(self, i: int, key: str, init: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
        """The fused ``key`` state of stacked tensor i ([K, n]), made from the members' own (or
        ``init`` when none has it yet); every member's state entry becomes its row."""
        s, _, params = self.stacked[i]
        states = [o.state[p] for o, p in zip(self.opts, params)]
        cache = self._fused_state
        fused = cache.get((i, key))
        if fused is None:
            have = [key in st and st[key] is not None for st in states]
            if all(have):
                fused = torch.stack([st[key].detach().reshape(-1) for st in states])
            elif not any(have) and init is not None:
                fused = init()
            else:
                return None
            cache[(i, key)] = fused
            for k, st in enumerate(states):
                st[key] = fused[k].view(params[k].shape)
        return fused

    def link(self) -> bool:
        """Bind state (after a checkpoint restore); False when the members' states disagree
        (then the members step on their own)."""
        if self.kind == "adam":
            steps = {float(o.state[p]["step"]) if "step" in o.state[p] else 0.0
                     for _, _, ps in self.stacked for o, p in zip(self.opts, ps)}
            if len(steps) != 1:
                return False
            self.t = steps.pop()
            s0 = self.stacked[0][0]
            self.steps = torch.full((len(self.opts),), self.t, dtype=torch.float32, device=s0.device)
            if self.t > 0:  # resumed: every member's step count becomes a view of the fused one
                for _, _, ps in self.stacked:
                    for k, (o, q) in enumerate(zip(self.opts, ps)):
                        o.state[q]["step"] = self.steps[k]
        return True

    # -- the update ---------------------------------------------------------------------
    @torch.no_grad()
    def step(self, active: list[bool] | None = None) -> None:
        """Update every member; a member not ``active`` (diverged or stopped) keeps its
        parameters (its step sizes are 0; only its optimizer state moves on, unused)."""
        if self.kind == "adam":
            self.t += 1
            self.steps.add_(1)
        self.col = _Cols(active if active is not None else [True] * len(self.opts))
        update = getattr(self, "_" + self.kind)
        for i, (s, groups, params) in enumerate(self.stacked):
            if s.grad is None:
                continue
            update(i, s.view(len(self.opts), -1), s.grad.view(len(self.opts), -1), groups, params)

    def _adam(self, i, p, g, groups, params):
        if not any("step" in o.state[q] for o, q in zip(self.opts, params)):
            for k, (o, q) in enumerate(zip(self.opts, params)):
                o.state[q]["step"] = self.steps[k]
        decoupled = [bool(gr.get("decoupled_weight_decay", False)) for gr in groups]
        wd = [gr["weight_decay"] for gr in groups]
        if any(wd):
            if all(decoupled):
                p.mul_(self.col("1-lr*wd", groups, lambda gr: 1 - gr["lr"] * gr["weight_decay"], p, 1.0))
            elif not any(decoupled):
                g = g.add(self.col("wd", groups, lambda gr: gr["weight_decay"], p) * p)
            else:
                raise RuntimeError("members mix Adam and AdamW weight decay")  # kind_of refuses this
        exp_avg = self._state(i, "exp_avg", lambda: torch.zeros_like(p))
        exp_avg_sq = self._state(i, "exp_avg_sq", lambda: torch.zeros_like(p))
        c, t = self.col, self.t
        exp_avg.lerp_(g, c("1-b1", groups, lambda gr: 1 - gr["betas"][0], p))
        exp_avg_sq.mul_(c("b2", groups, lambda gr: gr["betas"][1], p)).addcmul_(
            g * c("1-b2", groups, lambda gr: 1 - gr["betas"][1], p), g)
        bc2_sqrt = c("bc2", groups, lambda gr: (1 - gr["betas"][1] ** t) ** 0.5, p)
        denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(c("eps", groups, lambda gr: gr["eps"], p))
        p.addcdiv_(exp_avg * c("-step", groups, lambda gr: -(gr["lr"] / (1 - gr["betas"][0] ** t)), p, 0.0), denom)

    def _sgd(self, i, p, g, groups, params):
        wd = [gr["weight_decay"] for gr in groups]
        if any(wd):
            g = g.add(self.col("wd", groups, lambda gr: gr["weight_decay"], p) * p)
        if any(gr["momentum"] for gr in groups):
            buf = self._state(i, "momentum_buffer", None)
            if buf is None:  # the first step: the buffer is the gradient
                buf = self._state(i, "momentum_buffer", lambda: g.detach().clone())
            else:
                buf.mul_(self.col("mom", groups, lambda gr: gr["momentum"], p)).add_(g)
            g = buf
        p.add_(g * self.col("-lr", groups, lambda gr: -gr["lr"], p, 0.0))

    def _latent(self, i, p, g, groups, params):
        m = self._state(i, "m", lambda: torch.zeros_like(p))
        c = self.col
        m.mul_(c("1-gamma", groups, lambda gr: 1.0 - gr["gamma"], p)).add_(g * c("gamma", groups, lambda gr: gr["gamma"], p))
        p.mul_(c("1-lr*wd", groups, lambda gr: 1.0 - gr["lr"] * gr["weight_decay"], p, 1.0)).add_(
            m * c("-lr", groups, lambda gr: -gr["lr"], p, 0.0))
        clip = [bool(gr["clip_latent"]) for gr in groups]
        if all(clip):
            p.clamp_(-1.0, 1.0)
        elif any(clip):
            mask = host_tensor(clip, torch.bool, p.device).view(-1, 1)
            p.copy_(torch.where(mask, p.clamp(-1.0, 1.0), p))

    def _filtered(self, i, p, g, groups, params):
        m = self._state(i, "m", lambda: torch.zeros_like(p))
        gf = self._state(i, "g", lambda: torch.zeros_like(p))
        c = self.col
        m.mul_(c("1-gamma", groups, lambda gr: 1.0 - gr["gamma"], p)).add_(g * c("gamma", groups, lambda gr: gr["gamma"], p))
        gf.mul_(c("1-alpha", groups, lambda gr: 1.0 - gr["alpha"], p, 1.0)).add_(
            m * c("alpha", groups, lambda gr: gr["alpha"], p, 0.0))
        p.copy_(torch.where(gf * p > 0, -p, p))


def kind_of(opt) -> str | None:
    from .filtered import FilteredOptimizer
    from .latent import LatentSGD

    t = type(opt)
    if t in (torch.optim.Adam, torch.optim.AdamW):
        return "adam" if all(_adam_ok(g) for g in opt.param_groups) else None
    if t is torch.optim.SGD:
        return "sgd" if all(_sgd_ok(g) for g in opt.param_groups) else None
    if t is LatentSGD:
        return "latent"
    if t is FilteredOptimizer:
        return "filtered"
    return None


def fuse(optimizers: list[list[torch.optim.Optimizer]], slices: dict[int, tuple[torch.Tensor, int]]):
    """For each optimizer position, a :class:`FusedStep` over the stacked parameters all members'
    optimizers at that position hold (None where nothing can be fused), and for each member the
    ids of its parameters the fused steps cover. ``slices`` maps id(member parameter) to
    (stacked tensor, member index)."""
    k_n = len(optimizers)
    out, covered = [], [set() for _ in range(k_n)]
    for pos in range(len(optimizers[0])):
        opts = [optimizers[k][pos] for k in range(k_n)]
        kind = kind_of(opts[0])
        if kind is None or any(kind_of(o) != kind for o in opts[1:]) or any(type(o) is not type(opts[0]) for o in opts):
            out.append(None)
            continue
        flat = [[(p, g) for g in o.param_groups for p in g["params"]] for o in opts]
        if len({len(f) for f in flat}) != 1:
            out.append(None)
            continue
        if kind == "sgd":  # momentum on for some members and off for others: their updates differ in kind
            if len({bool(g["momentum"]) for o in opts for g in o.param_groups}) > 1:
                out.append(None)
                continue
        if kind == "adam" and len({bool(g.get("decoupled_weight_decay", False)) for o in opts
                                   for g in o.param_groups}) > 1:
            out.append(None)
            continue
        stacked = []
        for j in range(len(flat[0])):
            where = [slices.get(id(flat[k][j][0])) for k in range(k_n)]
            if any(w is None for w in where) or any(w[0] is not where[0][0] or w[1] != k for k, w in enumerate(where)):
                continue
            stacked.append((where[0][0], [flat[k][j][1] for k in range(k_n)], [flat[k][j][0] for k in range(k_n)]))
        if not stacked:
            out.append(None)
            continue
        f = FusedStep(opts, stacked)
        if not f.link():
            out.append(None)
            continue
        out.append(f)
        for _, _, params in stacked:
            for k, p in enumerate(params):
                covered[k].add(id(p))
    return out, covered
