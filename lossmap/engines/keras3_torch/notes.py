"""Keras 3 on PyTorch: what the walkthrough says about this model beyond Keras 3's notes.

Keras 3's notes (`lossmap.engines.keras3.notes`) hold for the shared aggregation code; these
are the torch trainer's and torch nn.py's lines: the step's `zero_grad`/`backward`, and the
crossentropies computed from probabilities.
"""
from __future__ import annotations

from lossmap.engines.common.anchor_kit import compiled as _compiled, join as _join, name as _name, number as _n

# the built-in losses that end in one of torch nn.py's crossentropies, by the function they call
BACKEND_CROSSENTROPY = {
    "binary_crossentropy": "binary_crossentropy",
    "binary_focal_crossentropy": "binary_crossentropy",
    "categorical_crossentropy": "categorical_crossentropy",
    "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
}


def crossentropy_terms(fn_name):
    """The compiled terms whose loss calls torch nn.py's `fn_name` (a predicate's reader)."""
    return lambda a: [t for t in _compiled(a) if BACKEND_CROSSENTROPY.get(t.fn) == fn_name]


def _from_logits(t) -> bool:
    return bool((t.config or {}).get("from_logits"))


def on_probabilities(fn_name):
    """The note on the clipping line: which terms reach it, from probabilities."""
    def note(a):
        terms = [t for t in crossentropy_terms(fn_name)(a) if not _from_logits(t) or t.fn == "binary_focal_crossentropy"]
        return _join(f"{_name(t)}: {t.fn} from the probabilities, clipped to [epsilon, 1 - epsilon]"
                     for t in terms) + ("; torch's backend never reads the logits a softmax/sigmoid "
                                        "attaches (TensorFlow's _get_logits does)" if terms else "")
    return note


def on_logits(fn_name):
    def note(a):
        return _join(f"{_name(t)}: {t.fn} from the logits (from_logits=True)"
                     for t in crossentropy_terms(fn_name)(a) if _from_logits(t) and t.fn != "binary_focal_crossentropy")
    return note


def probabilities(fn_name):
    """Whether a term reaches `fn_name` with probabilities (a `when`)."""
    return lambda a: bool(on_probabilities(fn_name)(a))


def logits(fn_name):
    return lambda a: bool(on_logits(fn_name)(a))


def zero_grad(a):
    return "every parameter's .grad is cleared (set to None) before the loss is differentiated"


def backward(a):
    return (f"loss.backward(): the gradient of {_n(a.total.reproduced)} accumulates into each trainable "
            "parameter's .grad")


def apply(a):
    opt = (a.gradients or {}).get("optimizer")
    return (f"{opt or 'the optimizer'} applies the .grad of every trainable weight (the gradients of "
            f"{_n(a.total.reproduced)})")
