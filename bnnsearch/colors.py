"""One colour per method, the same in every chart (the comparison's PNGs and the dashboard)."""
from __future__ import annotations

import zlib

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
# Fixed for the registry's methods, so a method keeps its colour whatever else a chart shows.
METHOD_ORDER = ("latent", "filtered", "hbnn", "cyclebnn", "proxconnect", "local_binary")


def method_color(name: str) -> str:
    """A method's colour; a comparison arm ``<method>@<sampler>`` shares it (drawn dashed)."""
    name = name.split("@")[0]
    if name in METHOD_ORDER:
        return PALETTE[METHOD_ORDER.index(name)]
    return PALETTE[len(METHOD_ORDER) + zlib.crc32(name.encode()) % (len(PALETTE) - len(METHOD_ORDER))]


# Every sampler of ``searcher.SAMPLERS`` (a test checks), one palette colour each: kept here, not
# imported, because the dashboard reads colours without importing the training side (Ray).
SAMPLER_ORDER = ("tpe", "tpe-flat", "gp", "botorch", "nsga2", "random", "bandit", "tpe-cover")


def base_colors(bases) -> dict[str, str]:
    """A colour per arm base (the part before '@'): a registry method's own; any other name
    (a space's ``name:``) its hashed colour unless another base of this chart has it, then the
    first palette colour none has (two named spaces of one method must not share a colour)."""
    bases = list(dict.fromkeys(bases))
    out = {b: method_color(b) for b in bases if b in METHOD_ORDER}
    for b in bases:
        if b not in out:
            c = method_color(b)
            free = [x for x in PALETTE if x not in out.values()]
            out[b] = c if c in free or not free else free[0]
    return out


def arm_styles(arms) -> dict[str, tuple[str, bool]]:
    """(colour, dashed) per comparison arm. ``<method>`` and ``<method>@random`` share the
    method's colour, the random arm dashed. Sampler arms (``<method>@<sampler>``, compare
    --samplers) of a single method get a colour per sampler, all solid; of several methods,
    the method's colour, dashed for every sampler after the first. Other arms of a single method
    (``<method>@pack<K>``, compare --packs) get palette colours in their order, skipping the
    method's own (its random arm's)."""
    arms = list(arms)
    methods = {a.split("@")[0] for a in arms}
    color = base_colors(a.split("@")[0] for a in arms)
    samplers = [a.partition("@")[2] for a in arms if "@" in a and not a.endswith("@random")]
    others = [s for s in dict.fromkeys(samplers) if s not in SAMPLER_ORDER]
    out = {}
    for a in arms:
        m, _, s = a.partition("@")
        if s and s != "random" and len(methods) == 1:
            if s in SAMPLER_ORDER:
                out[a] = (PALETTE[SAMPLER_ORDER.index(s) % len(PALETTE)], False)
            else:
                free = [c for c in PALETTE if c != color[m]]
                out[a] = (free[others.index(s) % len(free)], False)
        else:
            out[a] = (color[m], s == "random" or (bool(s) and samplers and s != samplers[0]))
    return out
