"""What every engine's anchor file needs: libcst matcher shorthands, and reading the
plain-data `Analysis` for notes (the model's own names and numbers).
"""
from __future__ import annotations

import libcst.matchers as m


def self_attr(name):
    return m.Attribute(value=m.Name("self"), attr=m.Name(name))


def assign_to(name, value=m.DoNotCare()):
    return m.Assign(targets=[m.AssignTarget(target=m.Name(name))], value=value)


def number(v) -> str:
    """A value as notes print it (4 significant digits)."""
    if v is None:
        return "n/a"
    if isinstance(v, float) and v != v:
        return "NaN"
    return f"{v:.4g}"


def compiled(a):
    return [t for t in a.terms if t.kind == "compiled"]


def extra(a):
    return [t for t in a.terms if t.kind != "compiled"]


def of_kind(a, kind):
    return [t for t in a.terms if t.kind == kind]


def reduction(t):
    return (t.config or {}).get("reduction")


def findings(a, *codes):
    return [f for f in a.findings if f.code in codes]
