"""Keras 3 on JAX: what the walkthrough says about this model at the JAX trainer's and nn.py's lines.

The notes of the backend-agnostic steps are the TensorFlow engine's (`lossmap.engines.keras3.notes`);
these are for the stateless step and the backend's crossentropies.
"""
from __future__ import annotations

from lossmap.engines.common.anchor_kit import compiled as _compiled, join as _join, listed as _list, name as _name
from lossmap.engines.common.anchor_kit import number as _n

CROSSENTROPIES = {"binary_crossentropy": "binary_crossentropy", "binary_focal_crossentropy": "binary_crossentropy",
                  "categorical_crossentropy": "categorical_crossentropy",
                  "categorical_focal_crossentropy": "categorical_crossentropy",
                  "sparse_categorical_crossentropy": "sparse_categorical_crossentropy"}


def from_probabilities(a, backend_fn):
    """The compiled terms whose loss reaches the JAX backend's `backend_fn` with probabilities."""
    out = []
    for t in _compiled(a):
        if CROSSENTROPIES.get(t.fn or "") != backend_fn:
            continue
        focal_logits = t.fn == "binary_focal_crossentropy"  # sigmoid first: probabilities either way
        if focal_logits or not (t.config or {}).get("from_logits"):
            out.append(t)
    return out


def clipped(backend_fn):
    def note(a):
        eps = _n(1e-7)
        return _join(f"{_name(t)}: probabilities clipped to [{eps}, 1 - {eps}] before the log (a JAX array "
                     "carries no logits, so a softmax/sigmoid output is used as it is)"
                     for t in from_probabilities(a, backend_fn))
    return note


def value_and_grad(a):
    return (f"jax.value_and_grad of compute_loss_and_updates: the loss {_n(a.total.reproduced)} and its "
            "gradient for every trainable weight, in one call")


def stateless_call(a):
    extra = [t for t in a.terms if t.kind in ("add_loss", "activity_regularizer")]
    losses = f"; the add_loss entries it collects: {_list(t.id for t in extra)}" if extra else ""
    return f"the model runs in training mode from the variables' values passed in{losses}"


def stateless_compute_loss(a):
    return f"Trainer.compute_loss under a StatelessScope: {_n(a.total.reproduced)} for this batch"


def new_state(a):
    return ("the new weights come back as values, not assigned: lossmap drops them, so the model is "
            "unchanged" if a.state_restored else "the new weights come back as values, not assigned")
