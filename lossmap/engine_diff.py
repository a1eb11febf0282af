"""Where tf_keras 2.x and Keras 3 give a different loss for the same model definition.

Each difference is a finding with a stable code, raised when the analysed model
has what it is about, and a row of the `--compare-engines` table. Every one
cites the lines of both engines that make the difference, found in the
installed sources by structure (`lossmap.sources.locate`: a class, a method, a
libcst matcher), never by line number; a library that moved or renamed the
code gives "not found" instead of a wrong line. Each engine names its half of
the statements (`Engine.citations`, in its `citations.py`) and the facts about
the model the checks read (`Engine.engine_facts`).

Plain data out: `differences()` returns dicts, `findings()` returns `Finding`s.
One check per difference, `_diff_<name>(model) -> dict | None`, in `CHECKS`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from lossmap.analysis import Finding
from lossmap.engines import engine_class

ENGINES = ("tf_keras", "keras3")


# ---------------------------------------------------------------- citations
@functools.lru_cache(maxsize=None)
def _specs() -> dict:
    """key -> (engine, (module, qualname, statements)), both engines' `Engine.citations()` together."""
    return {key: (name, spec) for name in ENGINES for key, spec in engine_class(name).citations().items()}


@functools.lru_cache(maxsize=None)
def cite(key: str) -> dict:
    """Where the statement `key` of an engine's citations is in the installed library: plain data."""
    engine, (module, qualname, stmts) = _specs()[key]
    return citation(engine, module, qualname, stmts)


def citation(engine: str, module: str, qualname: str, stmts, path: str | None = None) -> dict:
    """Where the first of `stmts` ((matcher, label[, within]), ...) is in `qualname` of the installed
    `module`, found by structure: plain data (`engine` names whose source it is; the backends'
    comparison, `lossmap.backend_diff`, names a backend here). `path`: the module's file, read
    without importing it (another backend's module would import that backend)."""
    from lossmap.sources import Stmt, display_path, locate, locate_in_file

    try:
        wanted = [Stmt(s[0], None, s[1], s[2] if len(s) > 2 else None) for s in stmts]
        step = locate_in_file(path, qualname, wanted) if path else locate(module, qualname, wanted)
    except Exception as exc:  # noqa: BLE001 - a citation never fails an analysis
        return {"engine": engine, "module": module, "qualname": qualname, "path": None, "line": None,
                "text": None, "found": False, "missing": f"{type(exc).__name__}: {exc}"}
    line = next((ln for ln in step.lines if ln.highlight), None)
    return {
        "engine": engine,
        "module": module,
        "qualname": qualname,
        "path": step.display_path or display_path(step.file),
        "line": line.number if line else None,
        "text": line.text.strip() if line else None,
        "found": bool(step.found and line),
        "missing": step.missing,
    }


def where(c: dict) -> str:
    if c["found"]:
        return f"{c['path']}:{c['line']} ({c['qualname']})"
    return f"{c['qualname']} in {c['module']} (statement not found: {c['missing']})"


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.6g}"


# ---------------------------------------------------------------- what every check reads
@dataclass
class _Model:
    """The analysed model as the checks see it: its analysis, capture and facts, and which engine is which."""

    analysis: Any
    capture: Any
    facts: dict

    @property
    def engine(self) -> str:
        return self.facts["engine"]

    @property
    def other(self) -> str:
        return next(name for name in ENGINES if name != self.engine)

    @property
    def legacy(self) -> bool:
        """The model runs in tf_keras (the checks word what it does there, and what it would do)."""
        return self.engine == "tf_keras"

    @property
    def terms(self) -> list:
        return self.analysis.terms

    def of_kind(self, kind) -> list:
        return [t for t in self.terms if t.kind == kind]

    def difference(self, code, level, title, message, cites, term=None, **extra) -> dict:
        return {"code": code, "level": level, "title": title, "term": term, "message": message,
                "cites": cites, "this_engine": self.engine, "other_engine": self.other, **extra}


# ---------------------------------------------------------------- the differences, one check each
def _diff_add_loss_non_scalar(mdl: _Model) -> Optional[dict]:
    """add_loss tensors that are not scalars: Keras 3 sums them, tf_keras's add_n does not reduce."""
    non_scalar = [t for t in mdl.terms if t.kind == "add_loss" and t.shape]
    if not non_scalar:
        return None
    legacy = mdl.legacy
    ok, reg_shapes, outer = engine_class("tf_keras").rules.add_n_shapes(mdl.terms)
    c_tf, c_k3 = cite("add_n_regularization"), cite("k3_aggregate")
    sums = {t.id: (t.value * int(np.prod(t.shape)) if legacy else t.value) for t in non_scalar}
    means = {t.id: (t.value if legacy else t.value / int(np.prod(t.shape))) for t in non_scalar}
    ids = ", ".join(f"{t.id} (shape {t.shape})" for t in non_scalar)
    shapes = ", ".join(str(list(s)) for s in sorted(set(reg_shapes), key=len))
    if ok:
        tf_does = (f"tf_keras adds model.losses unreduced with tf.add_n ({where(c_tf)}); here every addend has "
                   f"the shape {list(reg_shapes[0])}, so the total is a tensor and its mean is logged "
                   f"({', '.join(f'{k} counts {_fmt(v)}' for k, v in means.items())})")
    else:
        tf_does = (f"tf_keras adds model.losses unreduced with tf.add_n ({where(c_tf)}), which only adds tensors "
                   f"of one shape: the addends here have shapes {shapes} (and the compiled losses are scalars), "
                   "so compute_loss and train_step fail with 'Inputs to operation AddN ... must have the same "
                   "size and shape'")
    k3_does = (f"Keras 3 sums each entry to a scalar first ({where(c_k3)}): "
               f"{', '.join(f'{k} = {_fmt(v)}' for k, v in sums.items())}")
    level = "error" if (legacy and not ok) else "warning"
    lead = (f"{ids} passed a non-scalar tensor to add_loss. " if legacy else
            f"{ids} passed a non-scalar tensor to add_loss: in tf_keras this model behaves differently. ")
    return mdl.difference(
        "ENGINE_DIFF_ADD_LOSS_NON_SCALAR", level, "a non-scalar add_loss tensor",
        lead + tf_does + "; " + k3_does + ". Reduce it to a scalar (tf.reduce_mean / ops.mean) so that "
        "both engines agree.", [c_tf, c_k3], term=non_scalar[0].id,
        tf_keras=("add_n fails (mixed shapes)" if not ok else "not reduced: mean of the add_n total"),
        keras3="summed (ops.sum)", add_n_ok=ok)


def _divides(d) -> str:
    return "divides it by the batch size" if d else "adds it as it is (no division)"


def _diff_activity_normalisation(mdl: _Model) -> Optional[dict]:
    """Activity regularizers: whether each engine divides them by the batch size."""
    activity = mdl.of_kind("activity_regularizer")
    if not activity:
        return None
    c_tf, c_k3 = cite("tf_activity"), cite("k3_activity")
    tf_div, k3_div = c_tf["found"], c_k3["found"]
    loc_tf = c_tf if tf_div else cite("tf_activity_call")
    loc_k3 = c_k3 if k3_div else cite("k3_activity_call")
    same = tf_div == k3_div
    msg = (f"activity regularizers ({', '.join(t.id for t in activity)}): tf_keras {_divides(tf_div)} "
           f"({where(loc_tf)}); the installed Keras 3 {_divides(k3_div)} ({where(loc_k3)}). ")
    if same:
        msg += ("Both engines give the same value here; a model moved between them keeps its "
                "activity-regularization strength (Keras 3 skips the division for a scalar output).")
    else:
        msg += ("The same model's activity terms differ by a factor of the batch size between the two; "
                "rescale the regularizer's factor when moving the model.")
    return mdl.difference(
        "ENGINE_DIFF_ACTIVITY_NORMALISATION", "info" if same else "warning",
        "activity regularizer normalisation", msg, [loc_tf, loc_k3], term=activity[0].id,
        tf_keras=_divides(tf_div), keras3=_divides(k3_div), same=same)


def _metric_before_weight(metric, weight) -> Optional[bool]:
    """Whether the per-output metric is updated before the loss weight (None: a statement not found)."""
    if not (metric["found"] and weight["found"]):
        return None
    return metric["line"] < weight["line"]


_LOGGED = {True: "unweighted (recorded before the loss weight)", False: "weighted (recorded after the loss weight)",
           None: "not determined (statements not found)"}


def _diff_per_output_logs(mdl: _Model) -> Optional[dict]:
    """Several outputs: whether each engine logs `<output>_loss` before or after the loss weight."""
    compiled = mdl.of_kind("compiled")
    if len(compiled) <= 1:
        return None
    t_metric, t_weight = cite("tf_metric"), cite("tf_weight")
    k_metric, k_weight = cite("k3_metric"), cite("k3_weight")
    tf_unw, k3_unw = _metric_before_weight(t_metric, t_weight), _metric_before_weight(k_metric, k_weight)
    same = tf_unw == k3_unw
    weights = ", ".join(f"{t.output} x {_fmt(t.weight)}" for t in compiled)
    msg = (f"the '<output>_loss' logs ({weights}): tf_keras's are {_LOGGED[tf_unw]}, metric_obj.update_state at "
           f"{where(t_metric)} before loss_value *= loss_weight at line {t_weight['line']}; Keras 3's are "
           f"{_LOGGED[k3_unw]}, metric.update_state at {where(k_metric)} before ops.multiply(value, loss_weight) "
           f"at line {k_weight['line']}. ")
    msg += ("Both engines log the same per-output numbers; in both the logged 'loss' is the weighted sum "
            "plus every regularization and add_loss term." if same else
            "The per-output logs of the same model differ between the engines.")
    return mdl.difference(
        "ENGINE_DIFF_PER_OUTPUT_LOGS", "info" if same else "warning", "per-output logged losses",
        msg, [t_metric, k_metric], tf_keras=_LOGGED[tf_unw], keras3=_LOGGED[k3_unw], same=same)


def _diff_loss_weights_validation(mdl: _Model) -> Optional[dict]:
    """`loss_weights` (or a `loss` list) of another length than the outputs: tf_keras drops, Keras 3 raises."""
    facts = mdl.facts
    n_out = facts.get("outputs")
    lw, ls = facts.get("loss_weights"), facts.get("losses")
    short = []
    if n_out and isinstance(lw, (list, tuple)) and len(lw) != n_out:
        short.append(("loss_weights", len(lw)))
    if n_out and isinstance(ls, (list, tuple)) and len(ls) != n_out:
        short.append(("loss", len(ls)))
    if not short:
        return None
    c_tf, c_k3 = cite("tf_zip"), cite("k3_weights_check")
    k = min(n for _, n in short)
    names = facts.get("output_names") or []
    dropped = names[k:] if k < n_out else []
    what = " and ".join(f"{arg} has {n} entr{'y' if n == 1 else 'ies'}" for arg, n in short)
    if mdl.legacy:
        tf_does = (f"tf_keras zips the outputs with them and stops at the shortest list ({where(c_tf)}): "
                   + (f"the loss of {', '.join(repr(d) for d in dropped)} is silently left out of the total"
                      if dropped else "the extra entries are silently ignored"))
    else:
        tf_does = (f"tf_keras would zip the outputs with them and stop at the shortest list ({where(c_tf)})"
                   + (f", leaving out the loss of {', '.join(repr(d) for d in dropped)}" if dropped else ""))
    k3_does = (f"Keras 3 checks them against the losses in CompileLoss.build ({where(c_k3)}) and raises "
               "ValueError when the counts differ (a single loss takes a single weight for every output)")
    return mdl.difference(
        "ENGINE_DIFF_LOSS_WEIGHTS_VALIDATION", "warning" if mdl.legacy else "info",
        "loss_weights validation", f"the model has {n_out} outputs but {what}: {tf_does}; {k3_does}.",
        [c_tf, c_k3], tf_keras="zip: shortest list wins, no error", keras3="validated (ValueError)",
        dropped=list(dropped))


def _diff_distribution_scaling(mdl: _Model) -> Optional[dict]:
    """A SUM-reduced loss, or more than one replica: where each engine divides by the replica count."""
    compiled = mdl.of_kind("compiled")
    replicas = int(mdl.facts.get("replicas") or 1)
    sums = [t for t in compiled if (t.config or {}).get("reduction") == "sum"]
    if not (compiled and (sums or replicas > 1)):
        return None
    c_tf, c_sum, c_k3 = cite("tf_scale"), cite("tf_sum_replicas"), cite("k3_scale")
    msg = (f"under a tf.distribute strategy with N replicas, tf_keras divides each AUTO/SUM_OVER_BATCH_SIZE "
           f"loss (after its loss weight) and the add_n of the regularization losses by N in "
           f"LossesContainer.__call__ ({where(c_tf)}), and multiplies a SUM-reduced loss's logged value by N "
           f"({where(c_sum)}); Keras 3 scales inside reduce_values for the mean reductions only "
           f"({where(c_k3)}) and in _aggregate_additional_loss, and unscales what it logs. ")
    if sums:
        msg += (f"{', '.join(t.id for t in sums)} use reduction 'sum': with more than one replica the two "
                "engines log different numbers for them. ")
    msg += (f"This run has {replicas} replica{'s' if replicas != 1 else ''}"
            + (": no effect on the numbers here." if replicas == 1 else ": the totals are scaled."))
    return mdl.difference(
        "ENGINE_DIFF_DISTRIBUTION_SCALING", "warning" if replicas > 1 else "info", "distribution scaling",
        msg, [c_tf, c_k3], tf_keras="scale_loss_for_distribution in LossesContainer.__call__",
        keras3="scale_loss_for_distribution in reduce_values")


def _diff_frozen_regularizer(mdl: _Model) -> Optional[dict]:
    """A regularizer on a non-trainable weight: tf_keras counts it, Keras 3 does not."""
    frozen = list(mdl.facts.get("frozen_regularized") or [])
    if not frozen:
        return None
    c_tf, c_k3 = cite("tf_callable_losses"), cite("k3_trainable_only")
    ids = ", ".join(frozen)
    if mdl.legacy:
        msg = (f"{ids} is not trainable, but tf_keras still adds its regularizer to model.losses "
               f"(Layer.losses evaluates every layer's _callable_losses, {where(c_tf)}): a constant in the "
               f"logged loss that trains nothing; Keras 3 reads trainable_weights only ({where(c_k3)}) and "
               "leaves it out, so the same model logs a smaller loss there.")
    else:
        msg = (f"{ids} is not trainable and Keras 3 leaves its regularizer out ({where(c_k3)}); tf_keras "
               f"would add it to model.losses anyway ({where(c_tf)}), a constant in its logged loss.")
    return mdl.difference(
        "ENGINE_DIFF_FROZEN_REGULARIZER", "warning" if mdl.legacy else "info",
        "regularizers of frozen weights", msg, [c_tf, c_k3], term=f"regularizer/{frozen[0]}",
        tf_keras="counted (constant)", keras3="left out")


def _diff_crossentropy_epsilon(mdl: _Model) -> Optional[dict]:
    """Binary crossentropy on probabilities: tf_keras adds epsilon inside the logs (both values given)."""
    bce = [c for c in getattr(mdl.capture, "compiled", []) if c.fn == "binary_crossentropy" and c.logits is None
           and not c.fn_kwargs.get("from_logits")]
    if not bce:
        return None
    c_tf, c_k3 = cite("tf_bce"), cite("k3_bce")
    alt = _both_engines_values(bce, mdl.capture, mdl.engine, mdl.other)
    this, other = engine_class(mdl.engine).label, engine_class(mdl.other).label
    vals = "; ".join(f"compiled/{c.name}: {this} {_fmt(a)}, {other} {_fmt(b)}" for c, (a, b) in zip(bce, alt))
    return mdl.difference(
        "ENGINE_DIFF_CROSSENTROPY_EPSILON", "info", "binary crossentropy from probabilities",
        f"binary_crossentropy on probabilities (no sigmoid logits to use): tf_keras clips to [eps, 1-eps] and "
        f"then takes log(p + eps) and log(1 - p + eps) ({where(c_tf)}); Keras 3 takes log(p) of the clipped "
        f"value ({where(c_k3)}). On this batch: {vals}.", [c_tf, c_k3], term=f"compiled/{bce[0].name}",
        tf_keras="log(clip(p) + eps)", keras3="log(clip(p))")


def _both_engines_values(compiled_captures, capture, engine, other):
    """(this engine's, the other engine's) value of each compiled capture, both from the NumPy mirrors."""
    out = []
    for c in compiled_captures:
        pair = []
        for eng in (engine, other):
            r = engine_class(eng).rules
            try:
                values, out_mask = r.elementwise_loss(c.fn, c.y_true, c.y_pred, c.logits, c.fn_kwargs, c.dtype,
                                                      capture.epsilon)
                reduction = c.reduction if eng == engine else (
                    "sum_over_batch_size" if c.reduction in (None, "auto") else c.reduction)
                raw = r.reduce_weighted(values, c.sample_weight, out_mask if c.mask is None else c.mask, reduction)
                pair.append(float(np.mean(raw)))
            except Exception:  # noqa: BLE001
                pair.append(None)
        out.append(tuple(pair))
    return out


CHECKS = (
    _diff_add_loss_non_scalar,
    _diff_activity_normalisation,
    _diff_per_output_logs,
    _diff_loss_weights_validation,
    _diff_distribution_scaling,
    _diff_frozen_regularizer,
    _diff_crossentropy_epsilon,
)


# ---------------------------------------------------------------- what differs for this model
def differences(analysis, capture, facts: dict) -> list:
    """The differences that concern this model, as dicts, in the order of `CHECKS`.

    `facts` (`Engine.engine_facts`): `engine` (the analysed model's),
    `loss_weights`/`losses` as the user gave them, `outputs` (their number),
    `frozen_regularized` (paths), `replicas`.
    """
    mdl = _Model(analysis, capture, facts)
    return [d for d in (check(mdl) for check in CHECKS) if d is not None]


def as_findings(diffs) -> list:
    return [Finding(d["code"], d["level"], d["term"], d["message"]) for d in diffs]


def findings(analysis, capture, facts: dict) -> list:
    return as_findings(differences(analysis, capture, facts))
