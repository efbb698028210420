"""Packed trials: K member networks of one architecture trained as one stacked network.

``PackedModel(members)`` takes K models built the ordinary way (``Method.build``: same arch,
same arch options, each member with its own hyperparameters) and runs them as one network:

* **Layout.** Activations carry the member dimension merged into the channel/feature
  dimension, member-major: ``[N, K*C, ...]``. Element-wise modules, pooling, ``flatten(1)``
  and residual additions then need no change; BatchNorm over ``K*C`` channels keeps
  per-member statistics; the input is replicated once, ``[N, K*C_in, ...]``.
* **Stacked leaves.** Every ``Linear`` becomes one batched matmul over members (``baddbmm``),
  every ``Conv1d/Conv2d`` one grouped convolution (``groups * K``, as HFTA fuses them), every
  ``BatchNorm`` one batch norm over ``K*C`` channels, every parameter-free ``Shortcut`` pads
  channels per member. Anything else that holds parameters or buffers is refused
  (:class:`NotPackable`, naming the module): packing never guesses.
* **Members keep their own modules.** The stacked tensors are the storage: each member's
  parameter (and BatchNorm buffer) is re-pointed to its slice, so a member's optimizers,
  schedules, quantizers, state dicts and flip statistics work on it exactly as on a network
  trained alone. Each member's weight quantizer is applied to its own slice (its own
  hyperparameters: mu, radius, bits, ...); activation quantizers are applied per member slice
  unless every member's is the same stateless element-wise map (then once, on the whole
  tensor); a member layer's forward hooks (CycleBNN's output scale and gradient quantizer) run
  on its slice. Random draws inside a member's quantizers come from that member's training
  stream (``nn/rng.py``), so a member draws exactly what it would draw alone.
* **Gradients.** The loss of a pack is the *sum* of the members' losses, so each stacked
  parameter's gradient slice is exactly that member's gradient; :meth:`PackedModel.scatter_grads`
  hands each member parameter its slice (a view, no copy) before the members' optimizers step.
  No loss, gradient, statistic or normalisation mixes members.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from . import rng


class NotPackable(ValueError):
    """This model (or method) cannot run as a pack; the message says which part and why."""


def _weight(layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """Apply ``layer``'s weight parametrizations (the member's quantizer) to storage ``w``."""
    if parametrize.is_parametrized(layer, "weight"):
        for p in layer.parametrizations.weight:
            w = p(w)
    return w


def _storage(layer: nn.Module, name: str) -> nn.Parameter | None:
    if name == "weight" and parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return getattr(layer, name)


def _pack_key(q) -> object:
    """A key equal for activation quantizers that may run once over the whole packed tensor
    (stateless, element-wise, same configuration); None when it must run per member."""
    fn = getattr(q, "pack_key", None)
    return fn() if fn is not None else None


def stack_members(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' tensors stacked into one ``[K, ...]`` tensor, each member tensor re-pointed
    at its slice: a member's own module, optimizer, state dict or closure then reads and writes
    the stacked storage (no copy is kept in sync)."""
    # contiguous(): members in channels_last stack into a tensor that is not (each slice
    # is), and the fused optimizer steps and gradient scatter view it as [K, n] rows
    s = torch.stack([t.detach() for t in tensors]).contiguous()
    view = s.detach().view(len(tensors), *tensors[0].shape)
    for i, t in enumerate(tensors):
        t.data = view[i]
    return s


class _Stacked(nn.Module):
    """Shared plumbing: stacked storage whose slices the members' own tensors become."""

    def __init__(self, members: Sequence[nn.Module], pack: "PackedModel"):
        super().__init__()
        self.k = len(members)
        self.members = list(members)  # plain list: the members are not submodules of the pack
        self._pack = [pack]  # a list so the pack is not registered as a submodule (no cycle)
        self._links: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    def stack(self, name: str, tensors: list[torch.Tensor], param: bool, flat: bool = False) -> torch.Tensor:
        """Stack the members' tensors into one (``[K, ...]``, or ``[K*n, ...]`` with ``flat``)
        and re-point every member tensor at its slice."""
        s = stack_members(tensors)
        if flat:
            s = s.flatten(0, 1)
        s = nn.Parameter(s, requires_grad=tensors[0].requires_grad) if param else s
        if param:
            self.register_parameter(name, s)
        else:
            self.register_buffer(name, s)
        if param:
            self._links.append((s, tensors))
        return s

    def scatter_grads(self, skip: set[int] = frozenset()) -> None:
        for s, ts in self._links:
            if id(s) in skip:
                continue
            if s.grad is None:
                for t in ts:
                    t.grad = None
                continue
            g = s.grad.view(self.k, *ts[0].shape)
            for i, t in enumerate(ts):
                t.grad = g[i]

    def member_ctx(self, i: int):
        gens = self._pack[0].gens
        return rng.use(gens[i]) if gens is not None else contextlib.nullcontext()

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        qs = [getattr(m, "input_quantizer", None) for m in self.members]
        if qs[0] is None:
            return x
        key = _pack_key(qs[0])
        if key is not None and all(_pack_key(q) == key for q in qs[1:]):
            return qs[0](x)
        parts = x.chunk(self.k, dim=1)
        out = []
        for i, (q, part) in enumerate(zip(qs, parts)):
            with self.member_ctx(i):
                out.append(q(part))
        return torch.cat(out, dim=1)

    def member_weights(self) -> list[torch.Tensor]:
        out = []
        for i, m in enumerate(self.members):
            with self.member_ctx(i):
                out.append(_weight(m, self.weight[i]))
        return out

    def setup_stacked_quantizer(self) -> None:
        """When every member's weight quantizer is the same map (``stack_key``), apply it once
        to the stacked weights (their stacked ``sign_init`` kept as a buffer)."""
        self._wq = None
        self._plain = not any(parametrize.is_parametrized(m, "weight") for m in self.members)
        qs = []
        for m in self.members:
            if not parametrize.is_parametrized(m, "weight") or len(m.parametrizations.weight) != 1:
                return
            qs.append(m.parametrizations.weight[0])
        key = qs[0].stack_key()
        if key is None or any(q.stack_key() != key for q in qs[1:]):
            return
        init = [getattr(q, "sign_init", None) for q in qs]
        if all(i is not None for i in init):
            self.register_buffer("sign_init", torch.stack(init), persistent=False)
        else:
            self.sign_init = None
        self._wq = qs[0]

    def stacked_hard_sign(self) -> torch.Tensor | None:
        """The members' '+1' masks of their binary weights (flip statistics), stacked
        ``[K, ...]``, from one call of the shared weight quantizer; None without one."""
        if self._wq is None:
            return None
        pos = None
        if self.sign_init is not None:
            pos = getattr(self, "_init_pos", None)
            if pos is None or pos.device != self.sign_init.device:
                pos = self._init_pos = self.sign_init > 0  # cached: sign_init never changes
        return self._wq.hard_sign_stacked(self.weight, pos)

    def stacked_weight(self) -> torch.Tensor:
        """The members' effective weights, stacked ``[K, out, ...]``."""
        if self._wq is not None:
            return self._wq.forward_stacked(self.weight, self.sign_init)
        if self._plain:  # full-precision layers (no quantizer): the stacked storage itself
            return self.weight
        return torch.stack(self.member_weights())

    def output_hooks(self, x_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        hooks = [list(m._forward_hooks.values()) for m in self.members]
        if not hooks[0]:
            return out
        ins, outs = x_in.chunk(self.k, dim=1), list(out.chunk(self.k, dim=1))
        for i, (m, hs) in enumerate(zip(self.members, hooks)):
            with self.member_ctx(i):
                for h in hs:
                    r = h(m, (ins[i],), outs[i])
                    if r is not None:
                        outs[i] = r
        return torch.cat(outs, dim=1)


class PackedLinear(_Stacked):
    def __init__(self, members, pack):
        super().__init__(members, pack)
        m0 = members[0]
        self.in_features, self.out_features = m0.in_features, m0.out_features
        self.stack("weight", [_storage(m, "weight") for m in members], True)
        self.setup_stacked_quantizer()
        self.has_bias = m0.bias is not None
        if self.has_bias:
            self.stack("bias", [m.bias for m in members], True)

    def forward(self, x):
        x = self.quantize_input(x)
        n = x.shape[0]
        xs = x.view(n, self.k, self.in_features).transpose(0, 1)  # [K, N, in]
        w = self.stacked_weight().transpose(1, 2)  # [K, in, out]
        if self.has_bias:
            out = torch.baddbmm(self.bias.unsqueeze(1), xs, w)
        else:
            out = torch.bmm(xs, w)
        out = out.transpose(0, 1).reshape(n, self.k * self.out_features)
        return self.output_hooks(x, out)


class PackedConv(_Stacked):
    def __init__(self, members, pack):
        super().__init__(members, pack)
        m0 = members[0]
        if m0.padding_mode != "zeros":
            raise NotPackable(f"{type(m0).__name__} with padding_mode={m0.padding_mode!r}")
        self.conv = F.conv2d if isinstance(m0, nn.Conv2d) else F.conv1d
        self.stride, self.padding, self.dilation, self.groups = m0.stride, m0.padding, m0.dilation, m0.groups
        self.stack("weight", [_storage(m, "weight") for m in members], True)
        self.setup_stacked_quantizer()
        self.has_bias = m0.bias is not None
        if self.has_bias:
            self.stack("bias", [m.bias for m in members], True, flat=True)

    def forward(self, x):
        x = self.quantize_input(x)
        w = self.stacked_weight().flatten(0, 1)  # [K*out, in/groups, *kernel]
        out = self.conv(x, w, self.bias if self.has_bias else None, self.stride, self.padding, self.dilation,
                        self.groups * self.k)
        return self.output_hooks(x, out)


class PackedBatchNorm(_Stacked):
    def __init__(self, members, pack):
        super().__init__(members, pack)
        m0 = members[0]
        for m in members[1:]:
            if (m.eps, m.momentum, m.affine, m.track_running_stats) != (m0.eps, m0.momentum, m0.affine, m0.track_running_stats):
                raise NotPackable("BatchNorm layers of the members differ (eps, momentum, affine or running stats)")
        if m0.momentum is None:
            raise NotPackable("BatchNorm with momentum=None (cumulative average) is not packed")
        self.eps, self.momentum = m0.eps, m0.momentum
        self.affine, self.track = m0.affine, m0.track_running_stats
        if self.affine:
            self.stack("weight", [m.weight for m in members], True, flat=True)
            self.stack("bias", [m.bias for m in members], True, flat=True)
        if self.track:
            self.stack("running_mean", [m.running_mean for m in members], False, flat=True)
            self.stack("running_var", [m.running_var for m in members], False, flat=True)
            self.stack("num_batches_tracked", [m.num_batches_tracked for m in members], False)

    def forward(self, x):
        use_batch = self.training or not self.track
        if self.training and self.track:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean if self.track else None, self.running_var if self.track else None,
            self.weight if self.affine else None, self.bias if self.affine else None,
            use_batch, self.momentum, self.eps,
        )


class PackedShortcut(nn.Module):
    """The parameter-free option-A shortcut (archs.Shortcut), padding each member's channels."""

    def __init__(self, member, k: int):
        super().__init__()
        self.stride, self.pad, self.k = member.stride, member.pad, k

    def forward(self, x):
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        if self.pad:
            n, c = x.shape[:2]
            x = F.pad(x.view(n, self.k, c // self.k, *x.shape[2:]), (0, 0, 0, 0, 0, self.pad))
            x = x.flatten(1, 2)
        return x


def _packer(m: nn.Module):
    from ..archs import Shortcut

    if isinstance(m, nn.Linear):
        return PackedLinear
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return PackedConv
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return PackedBatchNorm
    if isinstance(m, Shortcut):
        return lambda members, pack: PackedShortcut(members[0], len(members))
    return None


def _own_tensors(m: nn.Module) -> list[str]:
    return [n for n, _ in m.named_parameters(recurse=False)] + [n for n, _ in m.named_buffers(recurse=False)]


class PackedModel(nn.Module):
    """K member networks as one. ``forward(x)`` returns logits ``[N, K, classes]``."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("a pack needs at least two members")
        self.k = len(members)
        self.gens: list[torch.Generator] | None = None  # the members' training streams (engine)
        self.skip_scatter: set[int] = set()  # stacked parameters a fused optimizer steps (Pack.fuse)
        self.__dict__["members"] = list(members)  # not submodules: the pack owns only stacked storage
        # members in channels_last (engine, ``channels_last: true``): the repeated input is put in
        # that order, so the pack's activations are (its stacked weights are plain contiguous)
        self.memory_format = torch.channels_last if any(
            p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
            for p in members[0].parameters()) else torch.contiguous_format
        self.leaves: list[_Stacked] = []
        self.net = self._template(list(members), "")

    def _template(self, group: list[nn.Module], name: str) -> nn.Module:
        """Member 0's module tree with every leaf swapped for its packed form. Containers are
        shallow copies (their ``forward`` code is reused); no member tensor, parametrization
        or hook is copied (they stay with the members)."""
        m0 = group[0]
        if any(type(m).__name__ != type(m0).__name__ for m in group[1:]):
            raise NotPackable(f"module {name or 'net'} differs between members (a structural key differs)")
        make = _packer(m0)
        if make is not None:
            packed = make(group, self)
            if isinstance(packed, _Stacked):
                self.leaves.append(packed)
            return packed
        if _own_tensors(m0):
            raise NotPackable(f"module {name or 'net'} ({type(m0).__name__}) holds tensors and has no packed form")
        if m0._forward_hooks or m0._forward_pre_hooks:
            raise NotPackable(f"module {name or 'net'} ({type(m0).__name__}) has hooks and no packed form")
        clone = copy.copy(m0)
        clone.__dict__.update(_parameters={}, _buffers={}, _modules={})
        for child, sub in m0._modules.items():
            if sub is None:
                clone._modules[child] = None
                continue
            subs = [m._modules[child] for m in group]
            clone._modules[child] = self._template(subs, f"{name}.{child}" if name else child)
        return clone

    def forward(self, x):
        reps = [1] * x.ndim
        reps[1] = self.k
        x = x.repeat(*reps)
        out = self.net(x.contiguous(memory_format=self.memory_format) if x.ndim == 4 else x)
        return out.view(out.shape[0], self.k, -1)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.members:
            m.train(mode)
        return self

    def scatter_grads(self) -> None:
        """Give every member parameter its slice of the stacked gradient (after backward),
        except where a fused optimizer step reads the stacked gradient itself."""
        for leaf in self.leaves:
            leaf.scatter_grads(self.skip_scatter)

    def slices(self) -> dict[int, tuple[torch.Tensor, int]]:
        """id(member parameter) -> (its stacked parameter, member index)."""
        return {id(t): (s, k) for leaf in self.leaves for s, ts in leaf._links for k, t in enumerate(ts)}
