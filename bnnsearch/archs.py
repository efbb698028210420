"""Model registry. Archs are plain full-precision PyTorch models; ``nn.binarize`` makes them BNNs.

Each entry is ``(Args dataclass, builder(in_shape, num_classes, args) -> nn.Module)``; the Args
dataclass is the schema of the config's ``arch_args``. Layers that must stay full precision
whatever ``keep_fp`` says (1x1 downsampling convs) carry ``bnn_fp = True``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry

ARCHS: Registry[tuple[type, Callable]] = Registry("arch")


def register_arch(name: str, args_cls: type):
    def deco(fn):
        ARCHS.register(name)((args_cls, fn))
        return fn

    return deco


def build_arch(name: str, in_shape: tuple[int, ...], num_classes: int, args) -> nn.Module:
    return ARCHS.get(name)[1](tuple(in_shape), num_classes, args)


# --------------------------------------------------------------------------- mlp


@dataclass(frozen=True)
class MlpArgs:
    """Hidden widths; the net has len(widths)+1 linear layers (first and last FP by default)."""

    widths: tuple[int, ...] = (512, 512, 512, 512)
    batchnorm: bool = True
    fp_first: bool = True
    fp_last: bool = True

    def validate(self):
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError("widths must be a non-empty list of positive integers")
        if len(self.widths) + 1 - self.fp_first - self.fp_last < 1:
            raise ValueError(f"widths {list(self.widths)} make {len(self.widths) + 1} linear layers, and with the first "
                             "and last kept in full precision none is binary: give one more width, or set fp_first "
                             "or fp_last to false")


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, a: MlpArgs):
        super().__init__()
        dims = [in_features, *a.widths, num_classes]
        blocks = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            blocks.append(nn.Linear(d_in, d_out, bias=not a.batchnorm or i == len(dims) - 2))
            if i < len(dims) - 2:
                blocks.append(nn.BatchNorm1d(d_out) if a.batchnorm else nn.Identity())
                # Binary layers quantize their own input; FP layers get a bounded nonlinearity.
                blocks.append(nn.Hardtanh())
        self.net = nn.Sequential(*blocks)
        # Read by Method.build: which end layers binarize() keeps in full precision.
        self.bnn_keep_fp = tuple(k for k, on in (("first", a.fp_first), ("last", a.fp_last)) if on)

    def forward(self, x):
        return self.net(x.flatten(1))


@register_arch("mlp", MlpArgs)
def mlp(in_shape, num_classes, a: MlpArgs) -> nn.Module:
    """Fully connected BNN (seed 002 Fig. 8: 4 layers, BN, FP first layer)."""
    return MLP(math.prod(in_shape), num_classes, a)


# --------------------------------------------------------------------------- vgg_small


@dataclass(frozen=True)
class VggArgs:
    width: float = 1.0  # channel multiplier of (128, 256, 512)


class VGGSmall(nn.Module):
    """VGG-small for 32x32 inputs (LQ-Nets/ReCU): 6 convs, 3 max-pools, one FC."""

    def __init__(self, in_ch: int, hw: int, num_classes: int, width: float):
        super().__init__()
        c1, c2, c3 = (max(8, int(round(c * width))) for c in (128, 256, 512))
        cfg = [(in_ch, c1, False), (c1, c1, True), (c1, c2, False), (c2, c2, True), (c2, c3, False), (c3, c3, True)]
        layers = []
        for cin, cout, pool in cfg:
            layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=False))
            if pool:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(cout), nn.Hardtanh()]
        self.features = nn.Sequential(*layers)
        side = hw // 8
        self.fc = nn.Linear(c3 * side * side, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@register_arch("vgg_small", VggArgs)
def vgg_small(in_shape, num_classes, a: VggArgs) -> nn.Module:
    _check_image(in_shape, "vgg_small")
    return VGGSmall(in_shape[0], in_shape[1], num_classes, a.width)


# --------------------------------------------------------------------------- resnets


def _check_image(in_shape, name):
    if len(in_shape) != 3 or in_shape[1] % 8 or in_shape[2] % 8:
        raise ValueError(f"arch {name} needs image inputs (C, H, W) with H, W divisible by 8, got {in_shape}")


class Shortcut(nn.Module):
    """Parameter-free 'option A' shortcut: average-pool, then zero-pad the new channels."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x


class ConvBN(nn.Module):
    """conv -> BN (+ shortcut) -> hardtanh. With ``residual``, a shortcut wraps this one conv
    (Bi-Real: real-valued information flows around every binary conv)."""

    def __init__(self, cin, cout, stride, residual: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = Shortcut(cin, cout, stride) if residual else None

    def forward(self, x):
        out = self.bn(self.conv(x))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.hardtanh(out)


class BasicBlock(nn.Module):
    """Two 3x3 convs with one shortcut around both (ResNet-18); downsampling uses a
    full-precision 1x1 conv (kept FP: ``bnn_fp``)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            conv = nn.Conv2d(cin, cout, 1, bias=False)
            conv.bnn_fp = True
            self.down = nn.Sequential(nn.AvgPool2d(stride) if stride > 1 else nn.Identity(), conv, nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.hardtanh(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        return F.hardtanh(out + (x if self.down is None else self.down(x)))


class CifarResNet(nn.Module):
    def __init__(self, in_ch, num_classes, stages: list[tuple[int, int]], block: str, width: float):
        super().__init__()
        widths = [max(4, int(round(c * width))) for c, _ in stages]
        self.stem = nn.Sequential(nn.Conv2d(in_ch, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.Hardtanh())
        layers, cin = [], widths[0]
        for si, ((_, n_blocks), cout) in enumerate(zip(stages, widths)):
            for bi in range(n_blocks):
                stride = 2 if si > 0 and bi == 0 else 1
                if block == "bireal":
                    layers += [ConvBN(cin, cout, stride, True), ConvBN(cout, cout, 1, True)]
                else:
                    layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@dataclass(frozen=True)
class ResNetArgs:
    width: float = 1.0  # channel multiplier


@register_arch("resnet20", ResNetArgs)
def resnet20(in_shape, num_classes, a: ResNetArgs) -> nn.Module:
    """Bi-Real-style ResNet-20 for CIFAR (RBNN's resnet20_bireal_1w1a): a shortcut around every
    binary conv, option-A shortcuts, stages of 16/32/64 channels."""
    _check_image(in_shape, "resnet20")
    return CifarResNet(in_shape[0], num_classes, [(16, 3), (32, 3), (64, 3)], "bireal", a.width)


@register_arch("resnet18", ResNetArgs)
def resnet18(in_shape, num_classes, a: ResNetArgs) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), stages 64/128/256/512."""
    _check_image(in_shape, "resnet18")
    return CifarResNet(in_shape[0], num_classes, [(64, 2), (128, 2), (256, 2), (512, 2)], "basic", a.width)


def list_archs() -> list[str]:
    return ARCHS.names()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHS", "build_arch", "list_archs", "register_arch", "count_params", "torch"]
