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
