"""Claims: the sentences a page states about Keras, each backed by an assertion at build time.

A page builder calls `claims.check(text, ok, detail)`; a false `ok` stops the build with a
message naming the page and the claim. The page shows each claim with a check mark linking
to the list of everything checked, and `claims.json` in the built site lists them all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


class ClaimFailed(AssertionError):
    """A page's claim did not hold for the installed libraries: the page must not be built."""


@dataclass
class Claim:
    number: int
    text: str
    detail: str = ""

    @property
    def anchor(self) -> str:
        return f"claim-{self.number}"


@dataclass
class Claims:
    page: str
    items: list = field(default_factory=list)

    def check(self, text: str, ok, detail: str = "") -> Claim:
        """Record `text` as checked; raise ClaimFailed naming the page and the claim when `ok` is false."""
        if not ok:
            raise ClaimFailed(f"page '{self.page}': claim failed: {text}" + (f" ({detail})" if detail else ""))
        claim = Claim(len(self.items) + 1, text, detail)
        self.items.append(claim)
        return claim

    def close(self, text: str, a: float, b: float, rtol: float = 1e-5, atol: float = 1e-7) -> Claim:
        """`text`, checked as `a` equal to `b` within tolerance."""
        ok = a is not None and b is not None and math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
        return self.check(text, ok, f"{a!r} vs {b!r}")

    def to_list(self) -> list:
        return [{"number": c.number, "text": c.text, "detail": c.detail} for c in self.items]


def num(value, digits: int = 4) -> str:
    """A number as the pages print it (significant digits, no trailing noise)."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def pct(fraction: float, digits: int = 1) -> str:
    return f"{100.0 * fraction:.{digits}f}%"
