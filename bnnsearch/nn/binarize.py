"""One mechanism to binarize any model: ``binarize(model, weight_q, act_q, keep_fp)``.

* Weights of conv/linear layers get a weight quantizer as a ``torch.nn.utils.parametrize``
  parametrization; the stored parameter (``layer.parametrizations.weight.original``) is the
  method's latent or binary storage and is tagged so ``is_binary_param`` finds it.
* The input of every binarized layer goes through an activation quantizer
  (``layer.input_quantizer``, applied by a forward pre-hook), so W1A1 and W1A32 are one flag.
* The first and last conv/linear layers stay full precision by default, as do layers an
  architecture marks with ``bnn_fp = True`` (e.g. 1x1 downsampling shortcuts).
* Every weight quantizer gets a ``sign_init`` buffer of random ±1 signs drawn from one seeded
  generator, independent of the method: the filtered optimizer starts from these signs and
  zero-initialised latent weights break ties with them, so both start from one shared
  initialisation of the binary signs (seed 002, Eq. 5).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .quantizers import Quantizer, make_quantizer

BINARIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _quantize_input(module: nn.Module, args: tuple):
    return (module.input_quantizer(args[0]),) + tuple(args[1:])


def binarize(
    model: nn.Module,
    weight_q: str | Callable[[nn.Module], Quantizer],
    act_q: str | Callable[[nn.Module], Quantizer] = "ste_clip",
    keep_fp: Iterable[str] = ("first", "last"),
    sign0: str = "plus",
    seed: int = 0,
) -> list[nn.Module]:
    """Binarize ``model`` in place and return the binarized layers in module order."""
    keep_fp = set(keep_fp)
    unknown = keep_fp - {"first", "last"}
    if unknown:
        raise ValueError(f"keep_fp accepts 'first' and 'last', got {sorted(unknown)}")
    layers = [m for m in model.modules() if isinstance(m, BINARIZABLE)]
    if not layers:
        raise ValueError("model has no conv/linear layer to binarize")
    skip = {id(m) for m in layers if getattr(m, "bnn_fp", False)}
    if "first" in keep_fp:
        skip.add(id(layers[0]))
    if "last" in keep_fp:
        skip.add(id(layers[-1]))
    gen = torch.Generator().manual_seed(seed)
    done = []
    for layer in layers:
        if id(layer) in skip:
            continue
        wq = make_quantizer(weight_q, sign0=sign0) if isinstance(weight_q, str) else weight_q(layer)
        aq = make_quantizer(act_q, sign0=sign0) if isinstance(act_q, str) else act_q(layer)
        w = layer.weight
        init = torch.where(torch.rand(w.shape, generator=gen) < 0.5, -1.0, 1.0).to(w.device, w.dtype)
        wq.register_buffer("sign_init", init)
        parametrize.register_parametrization(layer, "weight", wq)
        layer.parametrizations.weight.original._bnn_binary = True
        layer.input_quantizer = aq
        layer.register_forward_pre_hook(_quantize_input)
        done.append(layer)
    if not done:
        raise ValueError("binarize() left every layer in full precision; the model is not a BNN")
    return done


def is_binary_param(p: torch.Tensor) -> bool:
    """True for the stored weight of a binarized layer (latent or ±1 storage)."""
    return bool(getattr(p, "_bnn_binary", False))


def binary_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, BINARIZABLE) and parametrize.is_parametrized(m, "weight")
    ]


def weight_quantizer(layer: nn.Module) -> Quantizer:
    return layer.parametrizations.weight[0]


def stored_weight(layer: nn.Module) -> nn.Parameter:
    return layer.parametrizations.weight.original
