"""The Method base class, the registry and shared optimizer plumbing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..archs import build_arch
from ..cost import cost_table
from ..nn import binarize, binary_layers, is_binary_param, weight_quantizer
from ..nn.binarize import stored_weight
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
        for group in opt.param_groups:
            for p in group["params"]:
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

    def inference_cost(self, model: nn.Module, in_shape: tuple[int, ...]):
        """(per-layer rows, totals) of the static inference cost (see cost.py)."""
        return cost_table(model, in_shape)

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
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        for opt in setup.optimizers:
            opt.step()
        return loss.detach(), logits.detach()
