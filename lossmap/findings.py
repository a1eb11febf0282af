"""Stage 5: what a person should know about this loss, as coded findings.

Each finding has a stable `code`; levels are info < warning < error.
"""
from __future__ import annotations

import math

from lossmap.analysis import Finding

CROSSENTROPIES = {"binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"}


def collect(analysis, capture, frozen_regularized=(), verification_notes=(), compute_loss_error=None,
            train_step_error=None) -> list:
    out = []
    add = lambda code, level, term, msg: out.append(Finding(code, level, term, msg))  # noqa: E731
    terms = analysis.terms
    info = analysis.model
    total = analysis.total

    if not info.compiled:
        listed = ", ".join(t.id for t in terms) or "nothing"
        add("NOT_COMPILED", "warning", None,
            "the model is not compiled: there is no compiled loss and no train_step to check; "
            f"model.losses holds {listed}")
    if info.custom_train_step:
        add("CUSTOM_TRAIN_STEP", "warning", None,
            "the model overrides train_step: the loss it trains on may differ from compute_loss; "
            "the terms here are what compile() and model.losses define")
    if info.custom_compute_loss:
        add("CUSTOM_COMPUTE_LOSS", "warning", None,
            "the model overrides compute_loss: its total is the user's code, and the compile-time "
            "inventory below may not be the whole story")

    for t in terms:
        if not math.isfinite(t.value) or not math.isfinite(t.contribution):
            add("NON_FINITE_TERM", "error", t.id, f"{t.id} is {t.value}: the total loss, and every "
                "gradient through it, is not finite")
        if t.kind == "add_loss" and t.shape:
            n = 1
            for d in t.shape:
                n *= d
            if info.engine == "tf_keras":
                add("ADD_LOSS_NON_SCALAR", "warning", t.id,
                    f"{t.id} passed a tensor of shape {t.shape} to add_loss; tf_keras does not reduce it: "
                    "LossesContainer.__call__ adds model.losses with tf.add_n, which only adds tensors of "
                    "one shape (see ENGINE_DIFF_ADD_LOSS_NON_SCALAR); reduce it to a scalar "
                    "(e.g. tf.reduce_mean)")
            else:
                add("ADD_LOSS_NON_SCALAR", "warning", t.id,
                    f"{t.id} passed a tensor of shape {t.shape} to add_loss; Keras sums all {n} entries "
                    "(Trainer._aggregate_additional_loss), so its strength grows with the batch size; "
                    "reduce it to a scalar (e.g. ops.mean) if that is not intended")
        if t.kind == "compiled" and t.weight == 0.0:
            add("ZERO_LOSS_WEIGHT", "warning", t.id,
                f"{t.id} has loss weight 0: it is computed and logged but adds nothing to the gradient")
        if t.kind == "compiled" and t.shape:
            add("REDUCTION_NONE", "warning", t.id,
                f"{t.id} has reduction {t.config.get('reduction')!r}: the loss is a tensor of shape "
                f"{t.shape}; the gradient uses its sum while the logged loss shows its mean, and "
                "adding other terms to it fails")
        if t.opaque and t.kind != "add_loss":
            add("OPAQUE_TERM", "info", t.id,
                f"{t.id} uses user code ({t.fn}); lossmap called it as it is instead of computing it independently")

    for c in capture.compiled:
        tid = f"compiled/{c.name}"
        if c.fn in CROSSENTROPIES | {"binary_focal_crossentropy"} and c.logits is not None:
            if c.fn_kwargs.get("from_logits"):
                add("FROM_LOGITS_ON_PROBABILITIES", "warning", tid,
                    f"{tid}: from_logits=True but output '{c.output}' comes out of a softmax/sigmoid; "
                    "Keras notices and uses the activation's input as logits anyway (backend _get_logits)")
            elif c.fn in CROSSENTROPIES:
                add("CROSSENTROPY_FROM_LOGITS", "info", tid,
                    f"{tid}: output '{c.output}' comes out of a softmax/sigmoid, so Keras computes "
                    f"{c.fn} from that activation's logits (no epsilon clipping), although from_logits=False; "
                    "lossmap reproduces this, as the installed backend's _get_logits does")

    compiled = [t for t in terms if t.kind == "compiled"]
    weighted = any(t.weight != 1.0 for t in compiled)
    extra = any(t.kind != "compiled" for t in terms)
    if len(compiled) > 1 and (weighted or extra):
        reasons = []
        if weighted:
            reasons.append("loss weights are applied after logging")
        if extra:
            reasons.append("regularization and add_loss terms are not in any of them")
        where = "LossesContainer.__call__" if info.engine == "tf_keras" else "CompileLoss.call"
        add("PER_OUTPUT_LOGS_UNWEIGHTED", "info", None,
            "the logged 'loss' is not the sum of the '<output>_loss' logs: those are unweighted "
            f"({where}), and {' and '.join(reasons)}")

    for path in frozen_regularized:
        add("REGULARIZER_ON_FROZEN_WEIGHT", "info", f"regularizer/{path}",
            f"{path} has a regularizer but is not trainable, so Keras leaves it out of the loss "
            "(Layer._get_regularization_losses reads trainable_weights only)")

    for note in verification_notes:
        add("VERIFICATION_NOTE", "info", None, note)
    if compute_loss_error:
        add("COMPUTE_LOSS_FAILED", "error", None, f"model.compute_loss raised: {compute_loss_error}")
    if train_step_error and info.compiled:
        add("TRAIN_STEP_UNCHECKED", "warning", None, f"the real train_step could not be checked: {train_step_error}")

    if total.compute_loss is not None or total.train_step is not None:
        if not total.verified:
            worst = _worst_term(terms)
            hint = f"; the largest per-term difference from Keras is on {worst}" if worst else ""
            add("TOTAL_MISMATCH", "error", None,
                f"the reproduced total {total.reproduced:.7g} differs from Keras "
                f"(compute_loss {_fmt(total.compute_loss)}, train_step {_fmt(total.train_step)}) by "
                f"{total.max_abs_diff:.3g}, more than the tolerance{hint}")
    return out


def _worst_term(terms):
    best, best_diff = None, 0.0
    for t in terms:
        if t.keras_value is None or not math.isfinite(t.value) or not math.isfinite(t.keras_value):
            continue
        diff = abs(t.value - t.keras_value) / max(abs(t.keras_value), 1e-12)
        if diff > best_diff:
            best, best_diff = t.id, diff
    return best if best_diff > 1e-5 else None


def _fmt(v):
    return "n/a" if v is None else f"{v:.7g}"
