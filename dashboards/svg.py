"""Minimal inline-SVG charts (no JavaScript, no network): lines with bands, and scatters whose
points link to their MLflow runs."""
from __future__ import annotations

import html
import math

from bnnsearch.colors import PALETTE  # noqa: F401 - the page's charts take it from here

W, H, L, R, T, B = 640, 340, 78, 16, 34, 50
LEGEND_W = 150  # a legend sits in its own column right of the plot, never over the data


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


class Frame:
    """A chart: axes with ticks, then lines, bands, points and a legend. Every y value given to
    the constructor (bands' edges included) lies inside the plot; ``xcats`` makes the x axis
    categorical (positions 0..n-1, labelled with the names, half a slot of margin each side)."""

    def __init__(self, xs, ys, logx=False, title="", xlabel="", ylabel="", legend=False, xcats=None):
        self.logx, self.xcats = logx, xcats
        self.w = W + (LEGEND_W if legend else 0)
        self.right = self.w - R - (LEGEND_W if legend else 0)  # the plot's right edge
        fx = [self._tx(x) for x in xs if x is not None and (not logx or x > 0)]
        fy = [y for y in ys if y is not None and math.isfinite(y)]
        self.x0, self.x1 = (min(fx), max(fx)) if fx else (0, 1)
        if xcats is not None:
            self.x0, self.x1 = -0.5, len(xcats) - 0.5
        self.y0, self.y1 = (min(fy), max(fy)) if fy else (0, 1)
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1
        pad = 0.06 * ((self.y1 - self.y0) or abs(self.y0) or 1.0)  # a constant series keeps its scale
        self.y0, self.y1 = self.y0 - pad, self.y1 + pad
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{H}" class="chart" '
                      f'viewBox="0 0 {self.w} {H}"><text x="{self.w / 2}" y="18" text-anchor="middle" class="title">'
                      f"{html.escape(title)}</text>"]
        self._axes(xlabel, ylabel)

    def _tx(self, x):
        return math.log10(x) if self.logx else x

    def px(self, x):
        return L + (self._tx(x) - self.x0) / (self.x1 - self.x0) * (self.right - L)

    def py(self, y):
        return H - B - (y - self.y0) / (self.y1 - self.y0) * (H - T - B)

    def _axes(self, xlabel, ylabel):
        p = self.parts
        p.append(f'<rect x="{L}" y="{T}" width="{self.right - L}" height="{H - T - B}" class="plot"/>')
        for t in _ticks(self.y0, self.y1):
            y = self.py(t)
            p.append(f'<line x1="{L}" x2="{self.right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end" class="ytick">{_fmt(t)}</text>')
        if self.xcats is not None:
            xt = [(i, str(c)) for i, c in enumerate(self.xcats)]
        else:
            xt = [(t, _fmt(10**t) if self.logx else _fmt(t)) for t in _ticks(self.x0, self.x1)]
        for t, label in xt:
            x = L + (t - self.x0) / (self.x1 - self.x0) * (self.right - L)
            p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{H - B}" y2="{H - B + 4}" stroke="#999"/>'
                     f'<text x="{x:.1f}" y="{H - B + 16}" text-anchor="middle" class="xtick">{html.escape(label)}</text>')
        # Axis titles clear of the tick labels: the x title below them, the y title left of them.
        p.append(f'<text x="{(L + self.right) / 2}" y="{H - 8}" text-anchor="middle" class="xlabel">'
                 f'{html.escape(xlabel)}</text>'
                 f'<text x="12" y="{(T + H - B) / 2}" transform="rotate(-90 12 {(T + H - B) / 2})" '
                 f'text-anchor="middle" class="ylabel">{html.escape(ylabel)}</text>')

    def line(self, xs, ys, color, width=2.0, dash="", opacity=1.0):
        pts = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in zip(xs, ys) if y is not None and math.isfinite(y))
        if pts:
            self.parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}" '
                              f'stroke-dasharray="{dash}" opacity="{opacity}"/>')

    def band(self, xs, lo, hi, color):
        up = [(x, y) for x, y in zip(xs, hi) if y is not None and math.isfinite(y)]
        dn = [(x, y) for x, y in zip(xs, lo) if y is not None and math.isfinite(y)][::-1]
        if up and dn:
            pts = " ".join(f"{self.px(x):.1f},{self.py(min(max(y, self.y0), self.y1)):.1f}" for x, y in up + dn)
            self.parts.append(f'<polygon points="{pts}" fill="{color}" opacity="0.18" class="band"/>')

    def point(self, x, y, color, href=None, tip=""):
        if y is None or not math.isfinite(y) or (self.logx and x <= 0):
            return
        c = (f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="4" fill="{color}" opacity="0.8" class="pt">'
             f"<title>{html.escape(tip)}</title></circle>")
        self.parts.append(f'<a href="{html.escape(href)}" target="_blank">{c}</a>' if href else c)

    def legend(self, items):
        """Items (name, colour) or (name, colour, dash): a swatch for a series, a line (dashed as
        drawn) for a reference line. Drawn in the legend column (construct with legend=True)."""
        if self.w == self.right + R:
            raise ValueError("Frame(legend=True) reserves the legend's column; this frame has none")
        x = self.right + 12
        for i, (name, color, *dash) in enumerate(items):
            y = T + 14 + 16 * i
            mark = (f'<line x1="{x}" x2="{x + 16}" y1="{y - 4}" y2="{y - 4}" stroke="{color}" stroke-width="1.5" '
                    f'stroke-dasharray="{dash[0]}" class="legend-line"/>' if dash else
                    f'<rect x="{x + 3}" y="{y - 9}" width="10" height="10" fill="{color}" class="legend-swatch"/>')
            self.parts.append(mark + f'<text x="{x + 22}" y="{y}" class="legend">{html.escape(name)}</text>')

    def svg(self) -> str:
        return "".join(self.parts) + "</svg>"


def parallel_coordinates(axes: list[str], rows: list[tuple[list[float], float, str | None, str]], title: str,
                         ticks: list[list[tuple[float, str]]] | None = None) -> str:
    """One polyline per trial across normalised hyperparameter axes, coloured from poor (light)
    to good (dark blue) objective; ``rows`` = (values in [0, 1], objective, href, tooltip);
    ``ticks[i]`` = (position in [0, 1], label) marks on axis i (its values or categories)."""
    if not axes or not rows:
        return ""
    w, h, top, bottom, left, right = 640, 340, 40, 60, 60, 60
    xs = [left + i * (w - left - right) / max(len(axes) - 1, 1) for i in range(len(axes))]
    objs = [o for _, o, _, _ in rows]
    lo, hi = min(objs), max(objs)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" class="chart" viewBox="0 0 {w} {h}">'
             f'<text x="{w / 2}" y="18" text-anchor="middle" class="title">{html.escape(title)}</text>']
    for i, (x, name) in enumerate(zip(xs, axes)):
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{h - bottom}" stroke="#999"/>'
                     f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{html.escape(name)}</text>')
        for pos, label in (ticks[i] if ticks else []):
            y = top + (1 - pos) * (h - top - bottom)
            parts.append(f'<line x1="{x - 3:.1f}" x2="{x + 3:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#666"/>'
                         f'<text x="{x - 5:.1f}" y="{y + 3:.1f}" text-anchor="end" class="pctick">'
                         f'{html.escape(label)}</text>')
    for vals, obj, href, tip in sorted(rows, key=lambda r: r[1]):
        t = (obj - lo) / (hi - lo) if hi > lo else 1.0
        color = f"rgb({int(200 - 170 * t)},{int(210 - 120 * t)},{int(235 - 55 * t)})"
        pts = " ".join(f"{x:.1f},{top + (1 - v) * (h - top - bottom):.1f}" for x, v in zip(xs, vals))
        line = (f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6" opacity="0.85">'
                f"<title>{html.escape(tip)}</title></polyline>")
        parts.append(f'<a href="{html.escape(href)}" target="_blank">{line}</a>' if href else line)
    parts.append(f'<text x="{w - right}" y="{h - 12}" text-anchor="end">colour: objective {lo:.3g} (light) '
                 f"to {hi:.3g} (dark)</text></svg>")
    return "".join(parts)
