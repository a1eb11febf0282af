"""SVG line charts drawn at build time: no JavaScript, no fonts, no requests.

The colours are CSS classes (`s0`..`s5`) that the site's stylesheet maps to the report's
palette, light and dark; every text is escaped.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Optional

W, H = 560, 300
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 34, 44


@dataclass
class Series:
    label: str
    ys: list
    cls: str = "s0"
    dash: bool = False


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def _c(v: float) -> str:
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        mant, exp = f"{v:.0e}".split("e")
        return f"{mant}e{int(exp)}"
    return f"{v:g}"


def linear_ticks(lo: float, hi: float, n: int = 5) -> list:
    span = (hi - lo) or abs(hi) or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = [10.0 ** e for e in range(a, b + 1)]
    if len(decades) <= 3:
        decades = sorted({m * d for d in decades for m in (1, 2, 5)})
    return [t for t in decades if lo <= t * (1 + 1e-9) and t <= hi * (1 + 1e-9)]


class _Scale:
    def __init__(self, lo, hi, a, b, log=False):
        self.log = log
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        if self.hi == self.lo:
            self.hi = self.lo + 1.0
        self.a, self.b = a, b

    def __call__(self, v):
        v = math.log10(v) if self.log else v
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def _y_range(series, log_y, y_min):
    values = [y for s in series for y in s.ys if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
    lo, hi = min(values), max(values)
    if y_min is not None:
        lo = min(lo, y_min)
    if log_y:
        return 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
    ticks = linear_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else (hi - lo or 1.0)
    return min(lo, ticks[0]), max(hi, ticks[-1] if ticks[-1] >= hi else ticks[-1] + step)


def line_chart(series: list, *, title: str, x_label: str, y_label: str, log_y: bool = False,
               width: int = W, height: int = H, y_min: Optional[float] = None, x0: int = 1,
               marks: tuple = ()) -> str:
    """A chart of `series` (y per step, x from `x0`), with axes, grid, ticks and a legend.

    `marks`: (value, label) pairs drawn as labelled horizontal reference lines."""
    n = max(len(s.ys) for s in series)
    ref = [Series("", [v]) for v, _ in marks]
    lo, hi = _y_range(series + ref, log_y, y_min)
    sx = _Scale(x0, x0 + n - 1, PAD_L, width - PAD_R)
    sy = _Scale(lo, hi, height - PAD_B, PAD_T, log=log_y)
    body = [_grid(sx, sy, lo, hi, log_y, x0, n, width, height), _axes(width, height, x_label, y_label)]
    for value, label in marks:
        y = sy(value)
        body.append(f'<g class="mark"><line x1="{PAD_L}" x2="{width - PAD_R}" y1="{_c(y)}" y2="{_c(y)}"/>'
                    f'<text x="{width - PAD_R - 4}" y="{_c(y - 4)}" text-anchor="end">{esc(label)}</text></g>')
    for s in series:
        body.append(_path(s, sx, sy, x0, log_y))
    body.append(_legend(series, width))
    desc = "; ".join(f"{s.label}: {tick_label(_first(s.ys))} at first, {tick_label(_last(s.ys))} at the end"
                     for s in series)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="lossmap plot" role="img" aria-label="{esc(title)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}"><title>{esc(title)}</title>'
            f'<desc>{esc(desc)}</desc>' + "".join(body) + "</svg>")


def _first(ys):
    return next(y for y in ys if y is not None)


def _last(ys):
    return next(y for y in reversed(ys) if y is not None)


def _grid(sx, sy, lo, hi, log_y, x0, n, width, height) -> str:
    out = []
    for t in (log_ticks(lo, hi) if log_y else linear_ticks(lo, hi)):
        y = sy(t)
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{width - PAD_R}" y1="{_c(y)}" y2="{_c(y)}"/>'
                   f'<text class="tick" x="{PAD_L - 6}" y="{_c(y + 3.5)}" text-anchor="end">{esc(tick_label(t))}</text>')
    for t in linear_ticks(x0, x0 + n - 1):
        x = sx(t)
        out.append(f'<line class="grid" x1="{_c(x)}" x2="{_c(x)}" y1="{PAD_T}" y2="{height - PAD_B}"/>'
                   f'<text class="tick" x="{_c(x)}" y="{height - PAD_B + 15}" text-anchor="middle">'
                   f'{esc(tick_label(t))}</text>')
    return "".join(out)


def _axes(width, height, x_label, y_label) -> str:
    return (f'<line class="axis" x1="{PAD_L}" x2="{width - PAD_R}" y1="{height - PAD_B}" y2="{height - PAD_B}"/>'
            f'<line class="axis" x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{height - PAD_B}"/>'
            f'<text class="axis-label" x="{(PAD_L + width - PAD_R) / 2:.0f}" y="{height - 8}" text-anchor="middle">'
            f'{esc(x_label)}</text>'
            f'<text class="axis-label" transform="translate(14 {(PAD_T + height - PAD_B) / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle">{esc(y_label)}</text>')


def _path(s: Series, sx, sy, x0, log_y) -> str:
    points, pen = [], "M"
    for i, y in enumerate(s.ys):
        if y is None or not math.isfinite(y) or (log_y and y <= 0):
            pen = "M"
            continue
        points.append(f"{pen}{_c(sx(x0 + i))} {_c(sy(y))}")
        pen = "L"
    dash = " dashed" if s.dash else ""
    return f'<g class="series {s.cls}{dash}"><title>{esc(s.label)}</title><path d="{"".join(points)}"/></g>'


def _legend(series, width) -> str:
    out, x = [], PAD_L
    for s in series:
        dash = " dashed" if s.dash else ""
        out.append(f'<g class="series {s.cls}{dash}"><path d="M{_c(x)} 14 h18"/></g>'
                   f'<text class="legend-text" x="{_c(x + 23)}" y="18">{esc(s.label)}</text>')
        x += 23 + 6.2 * len(s.label) + 16
    return f'<g class="legend">{"".join(out)}</g>'
