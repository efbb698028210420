"""Geometry of the dashboard's inline SVG, read from the markup (or a browser's DOM dump): what
is drawn must lie where a reader can see it."""
import re


def _attrs(tag: str) -> dict:
    return dict(re.findall(r'([\w:-]+)="([^"]*)"', tag))


def charts(markup: str) -> list[str]:
    return re.findall(r'<svg[^>]*class="chart".*?</svg>', markup, re.S)


def check_chart(svg: str) -> dict:
    """Asserts on one chart; returns counts of what it checked."""
    out = {"points": 0, "legend": 0, "dashed_legend": 0, "pcticks": 0}
    rect = re.search(r'<rect[^>]*class="plot"[^>]*>', svg)
    if rect is None:  # parallel coordinates: every axis carries its value marks
        out["pcticks"] = len(re.findall(r'class="pctick"', svg))
        assert out["pcticks"] >= 2 * svg.count('text-anchor="middle">') // 3 or out["pcticks"] >= 4, svg[:300]
        return out
    a = _attrs(rect.group(0))
    x0, y0 = float(a["x"]), float(a["y"])
    x1, y1 = x0 + float(a["width"]), y0 + float(a["height"])
    eps = 0.6
    for c in re.findall(r"<circle[^>]*>", svg):  # every point inside the frame
        ca = _attrs(c)
        assert x0 - eps <= float(ca["cx"]) <= x1 + eps and y0 - eps <= float(ca["cy"]) <= y1 + eps, (c, (x0, y0, x1, y1))
        out["points"] += 1
    for poly in re.findall(r'<polygon[^>]*class="band"[^>]*>', svg):  # bands inside, not cut by the frame
        for x, y in re.findall(r"([\d.]+),([\d.]+)", _attrs(poly)["points"]):
            assert x0 - eps <= float(x) <= x1 + eps and y0 - eps <= float(y) <= y1 + eps, poly[:200]
    for mark in re.findall(r'<(?:rect|line)[^>]*class="legend-(?:swatch|line)"[^>]*>', svg):  # legend beside the plot
        ma = _attrs(mark)
        assert float(ma.get("x", ma.get("x1"))) > x1, mark
        out["legend"] += 1
        out["dashed_legend"] += "legend-line" in mark and bool(ma.get("stroke-dasharray"))
    # the y title clears the y tick labels (about 6.5 px per character at the chart's 11 px font)
    yticks = re.findall(r'<text x="([\d.]+)"[^>]*class="ytick">([^<]*)</text>', svg)
    ylabel = re.search(r'<text x="([\d.]+)"[^>]*class="ylabel"', svg)
    if yticks and ylabel:
        left_edge = min(float(x) - 6.5 * len(t) for x, t in yticks)
        assert float(ylabel.group(1)) + 7 < left_edge, (ylabel.group(0), yticks)
    return out
