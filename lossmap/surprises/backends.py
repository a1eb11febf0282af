"""The surprises of one Keras backend's own arithmetic: where the number a model trains on depends on the
backend it runs on. Each check runs where the engine's facts say its backend behaves so.

`check_crossentropy_clipped`: on JAX a softmax/sigmoid output carries no logits the crossentropy could
use (TensorFlow's backend uses them), so the probabilities are clipped to [epsilon, 1 - epsilon]; a
sample at the clip has its loss capped and no gradient.

    >>> int(clipped_samples("sparse", np.array([[1.0, 0.0]]), np.array([1]), 1e-7, None)[0])
    1
"""
from __future__ import annotations

import math

import numpy as np

from lossmap.analysis import Finding
from lossmap.surprises.common import fmt, where

# built-in loss -> how its labels read (the backend crossentropy it reaches)
CLIPPED = {"sparse_categorical_crossentropy": "sparse", "categorical_crossentropy": "categorical",
           "categorical_focal_crossentropy": "categorical", "binary_crossentropy": "binary",
           "binary_focal_crossentropy": "binary"}


def clipped_samples(kind, y_pred, y_true, eps, ignore_class):
    """(samples whose probability for what their label says is clipped, samples), along the first axis."""
    p = np.asarray(y_pred, np.float32)
    t = np.asarray(y_true)
    lo, hi = np.float32(eps), np.float32(1.0 - eps)
    if kind == "binary":
        t = t.reshape(p.shape) if t.size == p.size else t
        hit = ((t > 0) & (p < lo)) | ((t < 1) & (p > hi))
    else:
        p = p / np.sum(p, axis=-1, keepdims=True)
        if kind == "sparse":
            ids = t.astype(np.int64).reshape(p.shape[:-1])
            valid = ids != ignore_class if ignore_class is not None else np.ones(ids.shape, bool)
            picked = np.take_along_axis(p, np.where(valid, ids, 0)[..., None], axis=-1)[..., 0]
            hit = valid & (picked < lo)
        else:
            hit = (t.reshape(p.shape) > 0) & (p < lo)
    per_sample = hit.reshape(hit.shape[0], -1).any(axis=1) if hit.ndim else np.atleast_1d(hit)
    return int(per_sample.sum()), int(per_sample.size)


def check_crossentropy_clipped(ctx):
    """A crossentropy from clipped probabilities (`facts["crossentropy_clips"]`: the JAX backend)."""
    if not ctx.facts.get("crossentropy_clips"):
        return
    eps = float(ctx.capture.epsilon)
    for c in ctx.capture.compiled:
        kind = CLIPPED.get(c.fn or "")
        if kind is None or c.fn_kwargs.get("from_logits") or c.y_pred is None or c.y_true is None:
            continue
        n, total = clipped_samples(kind, c.y_pred, c.y_true, eps, c.fn_kwargs.get("ignore_class"))
        if not n:
            continue
        clip = ctx.cite("k3_ce_clip", "k3_ce_clip")
        yield Finding(
            "CROSSENTROPY_CLIPPED", "warning", f"compiled/{c.name}",
            f"compiled/{c.name}: the JAX backend computes {c.fn} of output '{c.output}' from its probabilities "
            f"clipped to [{eps:g}, 1 - {eps:g}] ({where(clip)}), and {n} of {total} samples are at the clip: "
            f"their loss is capped at {fmt(-math.log(eps))} and they give no gradient. TensorFlow's backend "
            "computes it from the softmax/sigmoid's logits, unclipped, so the same model trains on another "
            "number there. To train on the logits on every backend, output them (activation=None) and "
            "compile the loss with from_logits=True.")
