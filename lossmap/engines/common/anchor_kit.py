"""What every engine's anchors and notes share: libcst matcher shorthands, and readers of
the plain-data `Analysis` for notes (the model's own names and numbers).

    >>> from lossmap.engines.common.anchor_kit import listed
    >>> listed(str(i) for i in range(10))
    '0, 1, 2, 3, 4, 5, 6, ... and 3 more'
"""
from __future__ import annotations

import libcst.matchers as m


# ---------------------------------------------------------------- matcher shorthands
def self_attr(name):
    return m.Attribute(value=m.Name("self"), attr=m.Name(name))


def assign_to(name, value=m.DoNotCare()):
    return m.Assign(targets=[m.AssignTarget(target=m.Name(name))], value=value)


def step_loss():
    """(matcher, label) of `loss = self._compute_loss(...)`: where the TensorFlow and torch `train_step` take
    their loss (JAX's takes it from `stateless_compute_loss` instead)."""
    return assign_to("loss", m.Call(func=self_attr("_compute_loss"))), "loss = self._compute_loss(...)"


def calls(name):
    """A call of a plain name, e.g. `reduce_values(...)`."""
    return m.Call(func=m.Name(name))


def call_attr(obj, attr, **kw):
    """A call of `obj.attr(...)` for a name `obj` (`ops.sum(...)`); `obj` None: of `attr` on anything."""
    func = m.Attribute(value=m.Name(obj), attr=m.Name(attr)) if obj else m.Attribute(attr=m.Name(attr))
    return m.Call(func=func, **kw)


def method_call(obj, name, **kw):
    """A call of method `name` on what the matcher `obj` matches (`self._losses.extend(...)`)."""
    return m.Call(func=m.Attribute(value=obj, attr=m.Name(name)), **kw)


# ---------------------------------------------------------------- reading the analysis
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


def name(t) -> str:
    """How a note names a term: its output, else its id."""
    return t.output or t.id


def user_call(t) -> bool:
    """The loss object overrides `__call__`: Loss.__call__ and what follows are not used."""
    return any("__call__ is user code" in s for s in t.steps)


def via_loss_call(a):
    """The compiled terms that go through `Loss.__call__`."""
    return [t for t in compiled(a) if not user_call(t)]


def has_step(t, words) -> bool:
    return any(words in s for s in t.steps)


def masked(a):
    return [t for t in via_loss_call(a) if has_step(t, "mask")]


def gradient_of_total(a) -> str:
    """The note on the line that differentiates the total (both engines' train_step)."""
    return f"the gradient of {number(a.total.reproduced)} for every trainable weight"


LIST_LIMIT = 8  # a note lists at most this many items, then says how many more


def join(parts, sep="; ") -> str:
    parts = list(parts)
    if len(parts) > LIST_LIMIT:
        parts = parts[:LIST_LIMIT - 1] + [f"... and {len(parts) - LIST_LIMIT + 1} more"]
    return sep.join(parts)


def listed(parts) -> str:
    return join(parts, ", ")
