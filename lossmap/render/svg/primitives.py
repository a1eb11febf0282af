"""Drawing primitives shared by every picture: escaping, numbers, text, shapes, links.

Every name that comes from the model goes through `esc` (`html.escape(..., quote=True)`).
"""
from __future__ import annotations

import html
import math

from lossmap.render import format_number

MARGIN = 12  # around every picture

CHAR_PX = 7.0  # estimated width of a character at 12px
BOLD_CHAR_PX = 7.7  # ... at 12px, semibold (node labels)
SUB_CHAR_PX = 6.4  # ... at 11px
SMALL_CHAR_PX = 5.9  # ... at 10px


def esc(value) -> str:
    """Escape anything that came from the model for text or an attribute."""
    return html.escape(str(value), quote=True)


def coord(x: float) -> str:
    """A coordinate, short."""
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def fit(text: str, max_chars: int) -> str:
    text = str(text)
    if len(text) <= max_chars:
        return text
    return text[: max(1, max_chars - 1)] + "…"


def num(value) -> str:
    return format_number(value, 4)


def pct(x: float, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    p = 100.0 * x
    if p == 0:
        return "0%"
    if abs(p) < 0.01:
        return ("-" if p < 0 else "") + "<0.01%"
    if abs(p) < 1:
        return f"{p:{'+' if signed else ''}.2f}%"
    return f"{p:{'+' if signed else ''}.1f}%"


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def svg_root(cls: str, width: float, height: float, label: str, body: list, desc: str = "") -> str:
    w, h = int(math.ceil(width)), int(math.ceil(height))
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="lossmap {cls}" role="img" '
            f'aria-label="{esc(label)}" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
            f'<title>{esc(label)}</title>')
    if desc:
        head += f"<desc>{esc(desc)}</desc>"
    return head + "".join(body) + "</svg>"


def shape(cls: str, x, y, w, h, *, rx=None, opacity=None, title=None, after="") -> str:
    """A rectangle inside a classed group: the class is on the `<g>`, never on the `<rect>`, so a
    host page's rule for a common class name (`.bar { width: 80px }`) cannot resize it (SVG 2
    makes width/height CSS properties)."""
    t = f"<title>{esc(title)}</title>" if title else ""
    r = f' rx="{coord(rx)}"' if rx else ""
    o = f' fill-opacity="{opacity:.3f}"' if opacity is not None else ""
    return (f'<g class="{cls}">{t}<rect x="{coord(x)}" y="{coord(y)}" width="{coord(w)}" height="{coord(h)}"{r}{o}/>'
            f'{after}</g>')


def text_at(x, y, content, cls="", anchor=None, extra="") -> str:
    a = f' text-anchor="{anchor}"' if anchor else ""
    c = f' class="{cls}"' if cls else ""
    return f'<text x="{coord(x)}" y="{coord(y)}"{c}{a}{extra}>{esc(content)}</text>'


def link(href, markup: str) -> str:
    """`markup` inside a link to `href`, or as it is when there is no link."""
    return f'<a href="{esc(href)}">{markup}</a>' if href else markup
