"""The Method base class, the registry and shared optimizer plumbing."""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..archs import build_arch
from ..cost import cost_table, layer_io, training_gates, update_gates
from ..nn import binarize, binary_layers, is_binary_param, weight_quantizer
from ..nn import rng
from ..nn.binarize import stored_weight
from ..nn.quantizers import recu_tau
from ..registry import Registry

METHODS: Registry["Method"] = Registry("method")

# Hyperparameter types shared by the method files.
Decay = Literal["none", "cosine", "linear"]
FpOptimizer = Literal["adam", "adamw", "sgd"]
ActQuantizer = Literal["ste_clip", "ste_sign", "approx_sign", "identity"]


def register_method(name: str):
    def deco(cls):
        cls.name = name
        METHODS.register(name)(cls())
        return cls

    return deco


def get_method(name: str, where: str | None = None) -> "Method":
    return METHODS.get(name, where)


def list_methods() -> list[str]:
    return METHODS.names()


@dataclass
class Scheduled:
    """A value that moves during training: ``value(progress)`` and where to put it."""

    name: str
    value: Callable[[float], float]
    apply: Callable[[float], None] = lambda v: None


@dataclass(frozen=True)
class RunInfo:
    """What a method's setup may need to know about the run."""

    total_steps: int
    steps_per_epoch: int
    batch_size: int
    in_shape: tuple[int, ...]
    num_classes: int
    n_train: int
    seed: int = 0


@dataclass
class Setup:
    optimizers: list[torch.optim.Optimizer]
    scheduled: list[Scheduled] = field(default_factory=list)
    # Called at the end of every epoch; each returns extra report entries (method-specific).
    epoch_metrics: list[Callable[[], dict]] = field(default_factory=list)
    # Called once per step with (step, progress); methods with variable training cost
    # (e.g. cyclic precision) accumulate their modelled cost here. Host-side only.
    on_step: list[Callable[[int, float], None]] = field(default_factory=list)
    # Called at the end of every epoch, before evaluation (device-side bookkeeping only).
    on_epoch_end: list[Callable[[], None]] = field(default_factory=list)
    # Host-side running state (e.g. cost accumulators); saved in checkpoints, restored in place.
    state: dict = field(default_factory=dict)
    # Method-private objects for train_step (per run; methods are shared singletons).
    ctx: Any = None


def host_tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small tensor of host values on ``device`` with no host sync. On CUDA
    ``torch.tensor(values, device=...)`` copies from pageable memory and waits for the stream,
    i.e. for every kernel queued so far (a sync per step where this ran per step); from pinned
    memory the copy is queued instead (the caching host allocator keeps the block until it ran)."""
    t = torch.tensor(values, dtype=dtype)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 for the loss; float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def member_losses(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each member of packed logits ``[N, K, C]``: a ``[K]`` tensor (the
    mean, or with ``reduction='sum'`` the sum, over the batch). Never mixes members."""
    n, k, _ = logits.shape
    per = F.cross_entropy(upcast(logits).transpose(1, 2), y[:, None].expand(n, k), reduction="none")
    return per.sum(0) if reduction == "sum" else per.mean(0)


def packable(field_: "dataclasses.Field") -> bool:
    return bool(field_.metadata.get("packable", True))


def unpackable_hparams(method: "Method") -> set[str]:
    """The method's hyperparameters every member of a pack must share (``Hparams`` fields with
    ``metadata={"packable": False}``): they change what one training step does as a whole."""
    return {f.name for f in dataclasses.fields(method.Hparams) if not packable(f)}


@dataclass
class Pack:
    """K members trained together (``engine.fit_pack``). ``module`` is the fused network
    (``nn.pack.PackedModel``, or a method's own stacked form: ``LocalBinaryPack``) or None when
    the method trains its members one after another
    inside the pack (``Method.pack_model`` returned None). ``active[k]`` is False once member k
    diverged or was stopped: it takes no more optimizer steps and adds nothing to the loss."""

    members: list[nn.Module]
    setups: list[Setup]
    gens: list[torch.Generator]
    module: nn.Module | None = None
    active: list[bool] = field(default_factory=list)

    fused: list = field(default_factory=list)
    leftover: list = field(default_factory=list)
    # caches: the live members' index on the device (per live set), every module (for train())
    _live_idx: tuple | None = field(default=None, init=False, repr=False)
    _all_modules: list | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not self.active:
            self.active = [True] * len(self.members)
        if self.module is not None:
            self.module.gens = self.gens

    def fuse(self) -> None:
        """Fuse the members' optimizer steps where the optimizers allow (methods/fused.py).
        Called once the members' optimizer states are final (after a checkpoint restore)."""
        from .fused import fuse

        if self.module is None:
            return
        self.fused, covered = fuse([s.optimizers for s in self.setups], self.module.slices())
        # Per member and optimizer position: the parameters the fused step does not cover (a
        # member step then runs with the covered ones' gradients cleared), or None for all.
        self.leftover = []
        for k, s in enumerate(self.setups):
            row = []
            for pos, opt in enumerate(s.optimizers):
                params = opt_params(opt)
                if self.fused[pos] is None:
                    row.append(None)
                else:
                    row.append(([p for p in params if id(p) in covered[k]],
                                [p for p in params if id(p) not in covered[k]]))
            self.leftover.append(row)
        self.module.skip_scatter = {id(f_s) for f in self.fused if f is not None for f_s, _, _ in f.stacked}

    def step(self, positions: list[int] | None = None) -> None:
        """Step the live members' optimizers at these positions (all by default): the fused
        update of the stacked parameters, then each member's own step for the rest."""
        live = self.live()
        n = len(self.setups[live[0]].optimizers) if live else 0
        for pos in range(n) if positions is None else positions:
            f = self.fused[pos] if self.fused else None
            if f is not None:
                f.step(self.active)
            for k in live:
                opt = self.setups[k].optimizers[pos]
                if f is not None:
                    covered, rest = self.leftover[k][pos]
                    if not rest:
                        continue
                    for p in covered:
                        p.grad = None
                opt.step()

    def ctx(self, k: int):
        """Member k's training random stream installed (nn/rng.py)."""
        return rng.use(self.gens[k])

    def live(self) -> list[int]:
        return [k for k, a in enumerate(self.active) if a]

    def train(self, mode: bool = True) -> None:
        if self.module is None:
            for m in self.members:
                m.train(mode)
            return
        # What Module.train does, without its recursion over K member trees every evaluation
        # (no module of a packed network overrides train()).
        if self._all_modules is None:
            self._all_modules = [x for m in (*self.members, self.module) for x in m.modules()]
        for x in self._all_modules:
            x.training = mode

    def zero_grad(self, positions: list[int] | None = None) -> None:
        """``zero_grad(set_to_none=True)`` of the live members' optimizers at these positions,
        as one loop over their parameters (parameters a fused step covers never get one)."""
        for k in self.live():
            opts = self.setups[k].optimizers
            for pos in range(len(opts)) if positions is None else positions:
                lo = self.leftover[k][pos] if self.leftover else None
                params = lo[1] if lo is not None else opt_params(opts[pos])
                for p in params:
                    p.grad = None

    def forward(self, forward, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, K, C]`` of every member (fused, or member by member)."""
        if self.module is not None:
            return forward(self.module, x)
        if len(self.members) == 1:
            return forward(self.members[0], x).unsqueeze(1)
        outs = []
        for k, m in enumerate(self.members):
            with self.ctx(k):
                outs.append(forward(m, x))
        return torch.stack(outs, 1)

    def backward(self, losses: torch.Tensor) -> None:
        """Backpropagate the sum of the live members' losses and hand every member parameter
        its slice of the stacked gradients. Stacked gradients start from zero on every call
        (each member's own optimizers zero its unstacked ones, as when it trains alone)."""
        for p in self.module.parameters():
            p.grad = None
        self._live_sum(losses).backward()
        self.module.scatter_grads()

    def _live_sum(self, losses: torch.Tensor) -> torch.Tensor:
        live = self.live()
        if len(live) == len(self.members):
            return losses.sum()
        # the live members' index on the device, made once per change of the live set:
        # ``losses[live]`` copied a host list to the device at every step (a sync on CUDA)
        if self._live_idx is None or self._live_idx[0] != live:
            self._live_idx = (live, host_tensor(live, torch.long, losses.device))
        return losses.index_select(0, self._live_idx[1]).sum()

    def backward_for(self, losses: torch.Tensor, positions: list[int]) -> None:
        """``backward`` for the live members' optimizers at these positions only: autograd is
        asked for their parameters' gradients (their stacked parameters' where stacked), and no
        other gradient is computed; every other member parameter is left without one."""
        slices = self.module.slices()
        targets: dict[int, torch.Tensor] = {}
        for k in self.live():
            for pos in positions:
                for p in opt_params(self.setups[k].optimizers[pos]):
                    t = slices[id(p)][0] if id(p) in slices else p
                    targets[id(t)] = t
        for p in self.module.parameters():
            p.grad = None
        grads_only(self._live_sum(losses), list(targets.values()))
        self.module.scatter_grads()


def opt_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters of every group of ``opt``, in order."""
    return [p for g in opt.param_groups for p in g["params"]]


def grads_only(loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Set these parameters' ``.grad`` to their gradients of ``loss`` (None where unused), asking
    autograd for them alone: no other parameter's gradient is computed or touched."""
    for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
        p.grad = g


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(binary stored weights, full-precision parameters) of the trainable parameters."""
    binary, fp = [], []
    for p in model.parameters():
        if p.requires_grad:
            (binary if is_binary_param(p) else fp).append(p)
    return binary, fp


def check_partition(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Every trainable parameter must be claimed by exactly one optimizer; fail loudly otherwise."""
    owner: dict[int, int] = {}
    for i, opt in enumerate(optimizers):
        for p in opt_params(opt):
            if id(p) in owner:
                raise RuntimeError(f"a parameter is claimed by optimizers {owner[id(p)]} and {i}")
            owner[id(p)] = i
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [names[id(p)] for p in model.parameters() if p.requires_grad and id(p) not in owner]
    if missing:
        raise RuntimeError(f"parameters claimed by no optimizer: {missing}")
    stray = [k for k in owner if k not in names]
    if stray:
        raise RuntimeError(f"{len(stray)} optimizer parameters are not in the model")


def make_fp_optimizer(kind: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown fp optimizer {kind!r}")


@contextlib.contextmanager
def quantizer_flag(model: nn.Module, attr: str, inputs: bool = False):
    """Set ``attr`` to True on every binary layer's weight quantizer (and, with ``inputs``, its
    input quantizer) while the block runs; False after. For ``Method.eval_variants``."""
    layers = binary_layers(model)
    qs = [weight_quantizer(l) for _, l in layers] + ([l.input_quantizer for _, l in layers] if inputs else [])
    for q in qs:
        setattr(q, attr, True)
    try:
        yield
    finally:
        for q in qs:
            setattr(q, attr, False)


def fp32_step_gates(rows, optimizers) -> float:
    """Gates of one fp32 training step: every layer's forward, weight and input gradients
    (``cost.training_gates`` rows) and the optimizers' update."""
    return sum(r.forward + r.weight_grad + r.input_grad for r in rows) + update_gates(optimizers)


def percentiles(values: torch.Tensor, prefix: str, qs: tuple[int, ...] = (10, 50, 90), suffix: str = "") -> dict[str, torch.Tensor]:
    """``{prefix}_q{q}{suffix}``: the q-th percentiles of ``values`` (lower interpolation: the
    nearest order statistic below, as ``torch.quantile(..., interpolation="lower")``, which
    refuses over 16M elements), left on the device for the epoch's one host read."""
    v = values.reshape(-1).sort().values
    n = v.numel()
    return {f"{prefix}_q{q}{suffix}": v[(q * (n - 1)) // 100] for q in qs}


def epoch_of(total_steps: int, info: "RunInfo | None") -> tuple[Callable[[float], int], int]:
    """(the epoch a training progress p falls in, the number of epochs): for schedules that the
    reference code sets once per epoch (ReCU's τ, RBNN's t)."""
    spe = info.steps_per_epoch if info else 1
    return (lambda p: int(round(p * total_steps)) // spe), max(1, total_steps // spe)


def tau_schedule(tau_min: float, tau_max: float, total_steps: int, info: "RunInfo | None", quantizers) -> Scheduled:
    """ReCU's τ clamp schedule (``nn.quantizers.recu_tau``): set at the start of every epoch, as
    ReCU does, on each quantizer's ``tau``."""
    epoch, epochs = epoch_of(total_steps, info)

    def apply(v: float) -> None:
        for q in quantizers:
            q.tau = v

    return Scheduled("tau", lambda p: recu_tau(epoch(p), epochs, tau_min, tau_max), apply)


def set_lr(opt: torch.optim.Optimizer, key: str = "lr") -> Callable[[float], None]:
    def apply(v: float) -> None:
        for g in opt.param_groups:
            g[key] = v

    return apply


class Method:
    """Base class; subclasses set ``Hparams`` and implement ``weight_quantizer`` and ``setup``."""

    name: ClassVar[str]
    Hparams: ClassVar[type]
    # Method-specific architectures (e.g. the gradient-free learner) set this to the only archs
    # they accept; None means any registered arch.
    archs: ClassVar[tuple[str, ...] | None] = None

    def weight_quantizer(self, hp, sign0: str) -> Callable[[nn.Module], nn.Module]:
        raise NotImplementedError

    def validate_config(self, hp, arch_args, epochs: int | None = None) -> None:
        """Cross-checks between hyperparameters, arch options and the epoch budget; raise ValueError."""

    def eval_variants(self) -> dict[str, Callable[[nn.Module], contextlib.AbstractContextManager]]:
        """Extra evaluations reported after the last epoch next to ``val/acc`` and ``test/acc`` as
        ``val/acc_<name>`` and ``test/acc_<name>`` (not every epoch: two more evaluation passes
        per epoch cost a few per cent of a run; a trial stopped early has none): name -> a function that takes one member
        model and returns a context manager putting it in that evaluation mode (CycleBNN's
        pure-sign evaluation, methods.md §3.5). Default: none."""
        return {}

    def inference_cost(self, model: nn.Module, in_shape: tuple[int, ...]):
        """(per-layer rows, totals) of the static inference cost (see cost.py)."""
        return cost_table(model, in_shape)

    def train_gates_per_step(self, model: nn.Module, setup: Setup, info: RunInfo) -> float | None:
        """Modelled Boolean gates of one training step (cost.py: full-precision training of every
        conv/linear layer plus the optimizers' update); the engine reports ``cost/train_gates``,
        the steps so far times this. None for a method whose step cost varies or is not fp32
        training: it reports ``cost/train_gates`` itself (CycleBNN, the local learner)."""
        return fp32_step_gates(training_gates(layer_io(model, info.in_shape), info.batch_size), setup.optimizers)

    def prepare(self, model: nn.Module, data) -> None:
        """Called once by the engine with the dataset (e.g. input binarization thresholds)."""

    def binary_signs(self, model: nn.Module) -> list[tuple[str, Callable[[], torch.Tensor], int]]:
        """(layer name, fn returning the boolean '+1' mask of its binary weights, size) for the
        flip statistics. Default: every binarized layer through its weight quantizer."""
        out = []
        for name, layer in binary_layers(model):
            q, w = weight_quantizer(layer), stored_weight(layer)
            out.append((name, (lambda q=q, w=w: q.hard_sign(w)), w.numel()))
        return out

    def binary_signs_stacked(self, packed: nn.Module, models: list[nn.Module]) -> list[Callable[[], torch.Tensor]] | None:
        """Packed trials: the flip statistics of all members at once, one fn per entry of
        ``binary_signs`` (same order) returning the members' '+1' masks stacked ``[K, ...]``;
        None where some layer's members cannot be read together, and the engine asks each
        member's ``binary_signs`` (the same values, K times the small ops per step). Default:
        when ``binary_signs`` is this class's and every binary layer's members share one
        stacked weight quantizer (nn/pack.py ``stacked_hard_sign``)."""
        if type(self).binary_signs is not Method.binary_signs:
            return None
        owner = {id(m): p for p in packed.modules() if hasattr(p, "stacked_hard_sign") for m in p.members}
        per_member = [[layer for _, layer in binary_layers(m)] for m in models]
        if any(len(ls) != len(per_member[0]) for ls in per_member):
            return None
        fns = []
        for li, layer in enumerate(per_member[0]):
            p = owner.get(id(layer))
            if p is None or any(p.members[j] is not ls[li] for j, ls in enumerate(per_member)):
                return None
            if p.stacked_hard_sign() is None:
                return None
            fns.append(p.stacked_hard_sign)
        return fns

    def binary_storage(self, model: nn.Module) -> list[torch.Tensor]:
        """The tensors that decide the binary weights' signs (latent or +-1 storage). The
        ``freeze_binary`` control restores them after every step. Default: the stored binary
        weights."""
        return split_params(model)[0]

    def act_quantizer(self, hp, sign0: str = "plus"):
        return getattr(hp, "act", "ste_clip")

    def build(self, arch: str, arch_args, in_shape, num_classes: int, hp, sign0: str = "plus", seed: int = 0):
        model = build_arch(arch, in_shape, num_classes, arch_args)
        keep = getattr(model, "bnn_keep_fp", ("first", "last"))
        binarize(model, self.weight_quantizer(hp, sign0), self.act_quantizer(hp, sign0), keep_fp=keep, sign0=sign0, seed=seed)
        self.init_binary(model, hp)
        return model

    def init_binary(self, model: nn.Module, hp) -> None:
        """Initialise the stored binary weights (default: keep the arch's init)."""

    def setup(self, model: nn.Module, hp, total_steps: int, info: RunInfo | None = None) -> Setup:
        raise NotImplementedError

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, setup: Setup, forward) -> tuple:
        """One update; returns (loss, logits) detached. ``forward(model, x)`` applies autocast."""
        for opt in setup.optimizers:
            opt.zero_grad(set_to_none=True)
        logits = forward(model, x)
        loss = F.cross_entropy(upcast(logits), y)
        loss.backward()
        for opt in setup.optimizers:
            opt.step()
        return loss.detach(), logits.detach()

    def pack_model(self, members: list[nn.Module]) -> nn.Module | None:
        """The fused network of a pack's members (``nn.pack.PackedModel``: one stacked network
        for every registered arch). A method whose step cannot run fused, or runs slower so,
        returns None: its members then train one after another inside the pack (exact, without
        the speed-up)."""
        from ..nn.pack import PackedModel

        return PackedModel(members)

    def train_step_pack(self, pack: Pack, x: torch.Tensor, y: torch.Tensor, forward) -> tuple:
        """One update of every live member of a pack; returns (losses ``[K]``, logits
        ``[N, K, C]``) detached. The default mirrors ``train_step``: zero, one forward of the
        fused network, the sum of the member losses backward, each live member's optimizers
        step. Methods whose ``train_step`` does more override this as well."""
        if pack.module is None:
            return self._sequential_step(pack, x, y, forward)
        pack.zero_grad()
        logits = forward(pack.module, x)
        losses = member_losses(logits, y)
        pack.backward(losses)
        pack.step()
        return losses.detach(), logits.detach()

    def _sequential_step(self, pack: Pack, x, y, forward) -> tuple:
        """Each live member's own ``train_step``, one after another (a pack without fusion)."""
        losses, logits = [], []
        for k, (m, s) in enumerate(zip(pack.members, pack.setups)):
            if pack.active[k]:
                with pack.ctx(k):
                    loss, lg = self.train_step(m, x, y, s, forward)
            else:
                loss, lg = None, None
            losses.append(loss)
            logits.append(lg)
        ref_l = next(v for v in losses if v is not None)
        ref_g = next(v for v in logits if v is not None)
        losses = [v if v is not None else torch.full_like(ref_l, float("nan")) for v in losses]
        logits = [v if v is not None else torch.zeros_like(ref_g) for v in logits]
        return torch.stack(losses), torch.stack(logits, 1)
