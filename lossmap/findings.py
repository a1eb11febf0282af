"""Stage 5: what a person should know about this loss, as coded findings.

Each finding has a stable `code`; levels are info < warning < error. Each rule
is a function `_rule_<name>(analysis, capture, run)` yielding findings; `RULES`
runs them in order, which is the order of the findings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lossmap.analysis import Finding

CROSSENTROPIES = {"binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"}


@dataclass(frozen=True)
class RunFacts:
    """What the engine reported beyond the analysis: the rules' third argument."""

    frozen_regularized: tuple = ()
    verification_notes: tuple = ()
    compute_loss_error: object = None
    train_step_error: object = None


def collect(analysis, capture, frozen_regularized=(), verification_notes=(), compute_loss_error=None,
            train_step_error=None) -> list:
    """Every rule's findings, rule by rule in `RULES` order."""
    run = RunFacts(frozen_regularized, verification_notes, compute_loss_error, train_step_error)
    return [f for rule in RULES for f in rule(analysis, capture, run)]


# ---------------------------------------------------------------- the model

def _rule_model(analysis, capture, run):
    info = analysis.model
    if not info.compiled:
        listed = ", ".join(t.id for t in analysis.terms) or "nothing"
        yield Finding("NOT_COMPILED", "warning", None,
                      "the model is not compiled: there is no compiled loss and no train_step to check; "
                      f"model.losses holds {listed}")
    if info.custom_train_step:
        yield Finding("CUSTOM_TRAIN_STEP", "warning", None,
                      "the model overrides train_step: the loss it trains on may differ from compute_loss; "
                      "the terms here are what compile() and model.losses define")
    if info.custom_compute_loss:
        yield Finding("CUSTOM_COMPUTE_LOSS", "warning", None,
                      "the model overrides compute_loss: its total is the user's code, and the compile-time "
                      "inventory below may not be the whole story")


# ---------------------------------------------------------------- each term

def _rule_terms(analysis, capture, run):
    """The per-term checks, term by term (so a term's findings stay together)."""
    for t in analysis.terms:
        for check in TERM_CHECKS:
            yield from check(t, analysis.model)


def _term_non_finite(t, info):
    if not math.isfinite(t.value) or not math.isfinite(t.contribution):
        yield Finding("NON_FINITE_TERM", "error", t.id, f"{t.id} is {t.value}: the total loss, and every "
                      "gradient through it, is not finite")


def _term_add_loss_non_scalar(t, info):
    if not (t.kind == "add_loss" and t.shape):
        return
    if info.engine == "tf_keras":
        yield Finding("ADD_LOSS_NON_SCALAR", "warning", t.id,
                      f"{t.id} passed a tensor of shape {t.shape} to add_loss; tf_keras does not reduce it: "
                      "LossesContainer.__call__ adds model.losses with tf.add_n, which only adds tensors of "
                      "one shape (see ENGINE_DIFF_ADD_LOSS_NON_SCALAR); reduce it to a scalar "
                      "(e.g. tf.reduce_mean)")
        return
    n = 1
    for d in t.shape:
        n *= d
    yield Finding("ADD_LOSS_NON_SCALAR", "warning", t.id,
                  f"{t.id} passed a tensor of shape {t.shape} to add_loss; Keras sums all {n} entries "
                  "(Trainer._aggregate_additional_loss), so its strength grows with the batch size; "
                  "reduce it to a scalar (e.g. ops.mean) if that is not intended")


def _term_zero_loss_weight(t, info):
    if t.kind == "compiled" and t.weight == 0.0:
        yield Finding("ZERO_LOSS_WEIGHT", "warning", t.id,
                      f"{t.id} has loss weight 0: it is computed and logged but adds nothing to the gradient")


def _term_reduction_none(t, info):
    if t.kind == "compiled" and t.shape:
        yield Finding("REDUCTION_NONE", "warning", t.id,
                      f"{t.id} has reduction {t.config.get('reduction')!r}: the loss is a tensor of shape "
                      f"{t.shape}; the gradient uses its sum while the logged loss shows its mean, and "
                      "adding other terms to it fails")


def _term_opaque(t, info):
    if t.opaque and t.kind != "add_loss":
        yield Finding("OPAQUE_TERM", "info", t.id,
                      f"{t.id} uses user code ({t.fn}); lossmap called it as it is instead of computing it "
                      "independently")


TERM_CHECKS = (_term_non_finite, _term_add_loss_non_scalar, _term_zero_loss_weight, _term_reduction_none,
               _term_opaque)


# ---------------------------------------------------------------- how Keras combines them

def _rule_crossentropy_logits(analysis, capture, run):
    for c in capture.compiled:
        if not (c.fn in CROSSENTROPIES | {"binary_focal_crossentropy"} and c.logits is not None):
            continue
        tid = f"compiled/{c.name}"
        if c.fn_kwargs.get("from_logits"):
            yield Finding("FROM_LOGITS_ON_PROBABILITIES", "warning", tid,
                          f"{tid}: from_logits=True but output '{c.output}' comes out of a softmax/sigmoid; "
                          "Keras notices and uses the activation's input as logits anyway (backend _get_logits)")
        elif c.fn in CROSSENTROPIES:
            yield Finding("CROSSENTROPY_FROM_LOGITS", "info", tid,
                          f"{tid}: output '{c.output}' comes out of a softmax/sigmoid, so Keras computes "
                          f"{c.fn} from that activation's logits (no epsilon clipping), although "
                          "from_logits=False; lossmap reproduces this, as the installed backend's _get_logits does")


def _rule_per_output_logs_unweighted(analysis, capture, run):
    terms = analysis.terms
    compiled = [t for t in terms if t.kind == "compiled"]
    weighted = any(t.weight != 1.0 for t in compiled)
    extra = any(t.kind != "compiled" for t in terms)
    if not (len(compiled) > 1 and (weighted or extra)):
        return
    reasons = []
    if weighted:
        reasons.append("loss weights are applied after logging")
    if extra:
        reasons.append("regularization and add_loss terms are not in any of them")
    where = "LossesContainer.__call__" if analysis.model.engine == "tf_keras" else "CompileLoss.call"
    yield Finding("PER_OUTPUT_LOGS_UNWEIGHTED", "info", None,
                  "the logged 'loss' is not the sum of the '<output>_loss' logs: those are unweighted "
                  f"({where}), and {' and '.join(reasons)}")


def _rule_regularizer_on_frozen_weight(analysis, capture, run):
    for path in run.frozen_regularized:
        yield Finding("REGULARIZER_ON_FROZEN_WEIGHT", "info", f"regularizer/{path}",
                      f"{path} has a regularizer but is not trainable, so Keras leaves it out of the loss "
                      "(Layer._get_regularization_losses reads trainable_weights only)")


# ---------------------------------------------------------------- the verification

def _rule_verification_notes(analysis, capture, run):
    for note in run.verification_notes:
        yield Finding("VERIFICATION_NOTE", "info", None, note)


def _rule_compute_loss_failed(analysis, capture, run):
    if run.compute_loss_error:
        yield Finding("COMPUTE_LOSS_FAILED", "error", None, f"model.compute_loss raised: {run.compute_loss_error}")


def _rule_train_step_unchecked(analysis, capture, run):
    if run.train_step_error and analysis.model.compiled:
        yield Finding("TRAIN_STEP_UNCHECKED", "warning", None,
                      f"the real train_step could not be checked: {run.train_step_error}")


def _rule_total_mismatch(analysis, capture, run):
    total = analysis.total
    if (total.compute_loss is None and total.train_step is None) or total.verified:
        return
    worst = _worst_term(analysis.terms)
    hint = f"; the largest per-term difference from Keras is on {worst}" if worst else ""
    yield Finding("TOTAL_MISMATCH", "error", None,
                  f"the reproduced total {total.reproduced:.7g} differs from Keras "
                  f"(compute_loss {_fmt(total.compute_loss)}, train_step {_fmt(total.train_step)}) by "
                  f"{total.max_abs_diff:.3g}, more than the tolerance{hint}")


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


RULES = (
    _rule_model,
    _rule_terms,
    _rule_crossentropy_logits,
    _rule_per_output_logs_unweighted,
    _rule_regularizer_on_frozen_weight,
    _rule_verification_notes,
    _rule_compute_loss_failed,
    _rule_train_step_unchecked,
    _rule_total_mismatch,
)
