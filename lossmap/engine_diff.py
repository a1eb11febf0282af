"""Where tf_keras 2.x and Keras 3 give a different loss for the same model definition.

Each difference is a finding with a stable code, raised when the analysed model
has what it is about, and a row of the `--compare-engines` table. Every one
cites the lines of both engines that make the difference, found in the
installed sources by structure (`lossmap.sources.locate`: a class, a method, a
libcst matcher), never by line number; a library that moved or renamed the
code gives "not found" instead of a wrong line.

Plain data out: `differences()` returns dicts, `findings()` returns `Finding`s.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

from lossmap.analysis import Finding

ENGINES = ("tf_keras", "keras3")
LABEL = {"tf_keras": "tf_keras", "keras3": "Keras 3"}

TF_COMPILE_UTILS = "tf_keras.src.engine.compile_utils"
TF_BASE_LAYER = "tf_keras.src.engine.base_layer"
TF_BACKEND = "tf_keras.src.backend"
K3_TRAINER = "keras.src.trainers.trainer"
K3_COMPILE_UTILS = "keras.src.trainers.compile_utils"
K3_LAYER = "keras.src.layers.layer"
K3_LOSS = "keras.src.losses.loss"
K3_NN = "keras.src.backend.tensorflow.nn"


# ---------------------------------------------------------------- matchers (built lazily: libcst on demand)
def _m():
    import libcst.matchers as m

    return m


def _call_attr(obj: Optional[str], attr: str, **kw):
    m = _m()
    func = m.Attribute(value=m.Name(obj), attr=m.Name(attr)) if obj else m.Attribute(attr=m.Name(attr))
    return m.Call(func=func, **kw)


def _zip_loop():
    m = _m()
    return m.For(iter=m.Call(func=m.Name("zip")))


def _specs():
    """code -> {engine: (module, qualname, [(matcher, label), ...])}: the statements each difference cites."""
    m = _m()
    return {
        "add_n_regularization": (
            TF_COMPILE_UTILS, "LossesContainer.__call__",
            [(_call_attr("tf", "add_n", args=[m.Arg(m.Name("regularization_losses"))]),
              "reg_loss = tf.add_n(regularization_losses)")]),
        "k3_aggregate": (
            K3_TRAINER, "Trainer._aggregate_additional_loss",
            [(_call_attr("ops", "sum"), "return ops.sum(loss)")]),
        "tf_activity": (
            TF_BASE_LAYER, "Layer._handle_activity_regularization",
            [(_call_attr(None, "divide_no_nan"), "tf.math.divide_no_nan(activity_loss, batch_size)")]),
        "k3_activity": (
            K3_LAYER, "Layer.__call__",
            [(_call_attr("ops", "divide_no_nan"), "ops.divide_no_nan(loss, batch_size)")]),
        "tf_activity_call": (
            TF_BASE_LAYER, "Layer._handle_activity_regularization",
            [(_call_attr("self", "add_loss"), "self.add_loss(mean_activity_loss)")]),
        "k3_activity_call": (
            K3_LAYER, "Layer.__call__",
            [(m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name("activity_regularizer"))),
              "loss = self.activity_regularizer(output)")]),
        "tf_metric": (
            TF_COMPILE_UTILS, "LossesContainer.__call__",
            [(_call_attr("metric_obj", "update_state"), "metric_obj.update_state(total_loss_mean_value, ...)")]),
        "tf_weight": (
            TF_COMPILE_UTILS, "LossesContainer.__call__",
            [(m.AugAssign(target=m.Name("loss_value"), operator=m.MultiplyAssign()), "loss_value *= loss_weight")]),
        # the loop over outputs that also updates the per-output metrics (not the single-output fast path)
        "k3_metric": (
            K3_COMPILE_UTILS, "CompileLoss.call",
            [(_call_attr("metric", "update_state"), "metric.update_state(...)", _zip_loop())]),
        "k3_weight": (
            K3_COMPILE_UTILS, "CompileLoss.call",
            [(_call_attr("ops", "multiply", args=[m.Arg(m.Name("value")), m.Arg(m.Name("loss_weight"))]),
              "value = ops.multiply(value, loss_weight)", _zip_loop())]),
        "tf_zip": (
            TF_COMPILE_UTILS, "LossesContainer.__call__",
            [(m.Call(func=m.Name("zip"), args=[m.Arg(star="*")]), "for ... in zip(*zip_args)")]),
        "k3_weights_check": (
            K3_COMPILE_UTILS, "CompileLoss.build",
            [(_call_attr("tree", "assert_same_structure", args=[m.Arg(m.Name("loss")), m.Arg(m.Name("loss_weights"))]),
              "tree.assert_same_structure(loss, loss_weights)")]),
        "tf_scale": (
            TF_COMPILE_UTILS, "LossesContainer.__call__",
            [(_call_attr("losses_utils", "scale_loss_for_distribution", args=[m.Arg(m.Name("loss_value"))]),
              "loss_value = losses_utils.scale_loss_for_distribution(loss_value)")]),
        "tf_sum_replicas": (
            TF_COMPILE_UTILS, "LossesContainer.__call__",
            [(m.AugAssign(target=m.Name("total_loss_mean_value"), operator=m.MultiplyAssign(),
                          value=m.Attribute(attr=m.Name("num_replicas_in_sync"))),
              "total_loss_mean_value *= ...num_replicas_in_sync")]),
        "k3_scale": (
            K3_LOSS, "reduce_values",
            [(m.Call(func=m.Name("scale_loss_for_distribution")), "loss = scale_loss_for_distribution(loss)")]),
        "tf_callable_losses": (
            TF_BASE_LAYER, "Layer.losses",
            [(m.For(iter=m.Attribute(value=m.Name("layer"), attr=m.Name("_callable_losses"))),
              "for regularizer in layer._callable_losses")]),
        "k3_trainable_only": (
            K3_LAYER, "Layer._get_regularization_losses",
            [(m.For(iter=m.Attribute(value=m.Name("self"), attr=m.Name("trainable_weights"))),
              "for variable in self.trainable_weights")]),
        "tf_bce": (
            TF_BACKEND, "binary_crossentropy",
            [(_call_attr(None, "log", args=[m.Arg(m.BinaryOperation(operator=m.Add()))]),
              "bce = target * tf.math.log(output + epsilon())")]),
        "k3_bce": (
            K3_NN, "binary_crossentropy",
            [(_call_attr(None, "log", args=[m.Arg(m.Name("output"))]), "bce = target * tf.math.log(output)")]),
    }


@functools.lru_cache(maxsize=None)
def cite(key: str) -> dict:
    """Where the statement `key` of `_specs()` is in the installed library: plain data."""
    from lossmap.sources import Stmt, display_path, locate

    module, qualname, stmts = _specs()[key]
    engine = "tf_keras" if module.startswith("tf_keras") else "keras3"
    try:
        step = locate(module, qualname, [Stmt(s[0], None, s[1], s[2] if len(s) > 2 else None) for s in stmts])
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


# ---------------------------------------------------------------- what differs for this model
def differences(analysis, capture, facts: dict) -> list:
    """The differences that concern this model, as dicts.

    `facts` (from the engine, `engine_facts`): `engine` (the analysed model's),
    `loss_weights`/`losses` as the user gave them, `outputs` (their number),
    `frozen_regularized` (paths), `replicas`.
    """
    engine = facts["engine"]
    other = "keras3" if engine == "tf_keras" else "tf_keras"
    terms = analysis.terms
    out = []

    def add(code, level, title, message, cites, term=None, **extra):
        out.append({"code": code, "level": level, "title": title, "term": term, "message": message,
                    "cites": cites, "this_engine": engine, "other_engine": other, **extra})

    # 1. add_loss tensors that are not scalars
    non_scalar = [t for t in terms if t.kind == "add_loss" and t.shape]
    if non_scalar:
        from lossmap.engines.tf_keras.rules import TfKerasRules

        ok, reg_shapes, outer = TfKerasRules.add_n_shapes(terms)
        c_tf, c_k3 = cite("add_n_regularization"), cite("k3_aggregate")
        import numpy as np

        sums = {t.id: (t.value * int(np.prod(t.shape)) if engine == "tf_keras" else t.value) for t in non_scalar}
        means = {t.id: (t.value if engine == "tf_keras" else t.value / int(np.prod(t.shape))) for t in non_scalar}
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
        level = "error" if (engine == "tf_keras" and not ok) else "warning"
        lead = (f"{ids} passed a non-scalar tensor to add_loss. " if engine == "tf_keras" else
                f"{ids} passed a non-scalar tensor to add_loss: in tf_keras this model behaves differently. ")
        add("ENGINE_DIFF_ADD_LOSS_NON_SCALAR", level, "a non-scalar add_loss tensor",
            lead + tf_does + "; " + k3_does + ". Reduce it to a scalar (tf.reduce_mean / ops.mean) so that "
            "both engines agree.", [c_tf, c_k3], term=non_scalar[0].id,
            tf_keras=("add_n fails (mixed shapes)" if not ok else "not reduced: mean of the add_n total"),
            keras3="summed (ops.sum)", add_n_ok=ok)

    # 2. activity regularizers: divided by the batch size or not
    activity = [t for t in terms if t.kind == "activity_regularizer"]
    if activity:
        c_tf, c_k3 = cite("tf_activity"), cite("k3_activity")
        tf_div, k3_div = c_tf["found"], c_k3["found"]
        loc_tf = c_tf if tf_div else cite("tf_activity_call")
        loc_k3 = c_k3 if k3_div else cite("k3_activity_call")
        same = tf_div == k3_div
        verb = lambda d: "divides it by the batch size" if d else "adds it as it is (no division)"  # noqa: E731
        msg = (f"activity regularizers ({', '.join(t.id for t in activity)}): tf_keras {verb(tf_div)} "
               f"({where(loc_tf)}); the installed Keras 3 {verb(k3_div)} ({where(loc_k3)}). ")
        if same:
            msg += ("Both engines give the same value here; a model moved between them keeps its "
                    "activity-regularization strength (Keras 3 skips the division for a scalar output).")
        else:
            msg += ("The same model's activity terms differ by a factor of the batch size between the two; "
                    "rescale the regularizer's factor when moving the model.")
        add("ENGINE_DIFF_ACTIVITY_NORMALISATION", "info" if same else "warning",
            "activity regularizer normalisation", msg, [loc_tf, loc_k3], term=activity[0].id,
            tf_keras=verb(tf_div), keras3=verb(k3_div), same=same)

    # 3. per-output logged losses
    compiled = [t for t in terms if t.kind == "compiled"]
    if len(compiled) > 1:
        t_metric, t_weight = cite("tf_metric"), cite("tf_weight")
        k_metric, k_weight = cite("k3_metric"), cite("k3_weight")

        def unweighted(mc, wc):
            if not (mc["found"] and wc["found"]):
                return None
            return mc["line"] < wc["line"]

        tf_unw, k3_unw = unweighted(t_metric, t_weight), unweighted(k_metric, k_weight)
        word = {True: "unweighted (recorded before the loss weight)", False: "weighted (recorded after the loss weight)",
                None: "not determined (statements not found)"}
        same = tf_unw == k3_unw
        weights = ", ".join(f"{t.output} x {_fmt(t.weight)}" for t in compiled)
        msg = (f"the '<output>_loss' logs ({weights}): tf_keras's are {word[tf_unw]}, metric_obj.update_state at "
               f"{where(t_metric)} before loss_value *= loss_weight at line {t_weight['line']}; Keras 3's are "
               f"{word[k3_unw]}, metric.update_state at {where(k_metric)} before ops.multiply(value, loss_weight) "
               f"at line {k_weight['line']}. ")
        msg += ("Both engines log the same per-output numbers; in both the logged 'loss' is the weighted sum "
                "plus every regularization and add_loss term." if same else
                "The per-output logs of the same model differ between the engines.")
        add("ENGINE_DIFF_PER_OUTPUT_LOGS", "info" if same else "warning", "per-output logged losses",
            msg, [t_metric, k_metric], tf_keras=word[tf_unw], keras3=word[k3_unw], same=same)

    # 4. loss_weights (and loss lists) that do not match the outputs
    n_out = facts.get("outputs")
    lw, ls = facts.get("loss_weights"), facts.get("losses")
    short = []
    if n_out and isinstance(lw, (list, tuple)) and len(lw) != n_out:
        short.append(("loss_weights", len(lw)))
    if n_out and isinstance(ls, (list, tuple)) and len(ls) != n_out:
        short.append(("loss", len(ls)))
    if short:
        c_tf, c_k3 = cite("tf_zip"), cite("k3_weights_check")
        k = min(n for _, n in short)
        names = facts.get("output_names") or []
        dropped = names[k:] if k < n_out else []
        what = " and ".join(f"{arg} has {n} entr{'y' if n == 1 else 'ies'}" for arg, n in short)
        if engine == "tf_keras":
            tf_does = (f"tf_keras zips the outputs with them and stops at the shortest list ({where(c_tf)}): "
                       + (f"the loss of {', '.join(repr(d) for d in dropped)} is silently left out of the total"
                          if dropped else "the extra entries are silently ignored"))
        else:
            tf_does = (f"tf_keras would zip the outputs with them and stop at the shortest list ({where(c_tf)})"
                       + (f", leaving out the loss of {', '.join(repr(d) for d in dropped)}" if dropped else ""))
        k3_does = (f"Keras 3 checks them against the losses in CompileLoss.build ({where(c_k3)}) and raises "
                   "ValueError when the counts differ (a single loss takes a single weight for every output)")
        add("ENGINE_DIFF_LOSS_WEIGHTS_VALIDATION", "warning" if engine == "tf_keras" else "info",
            "loss_weights validation", f"the model has {n_out} outputs but {what}: {tf_does}; {k3_does}.",
            [c_tf, c_k3], tf_keras="zip: shortest list wins, no error", keras3="validated (ValueError)",
            dropped=list(dropped))

    # 5. distribution scaling
    replicas = int(facts.get("replicas") or 1)
    sums = [t for t in compiled if (t.config or {}).get("reduction") == "sum"]
    if compiled and (sums or replicas > 1):
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
        add("ENGINE_DIFF_DISTRIBUTION_SCALING", "warning" if replicas > 1 else "info", "distribution scaling",
            msg, [c_tf, c_k3], tf_keras="scale_loss_for_distribution in LossesContainer.__call__",
            keras3="scale_loss_for_distribution in reduce_values")

    # 6. regularizers of non-trainable weights
    frozen = list(facts.get("frozen_regularized") or [])
    if frozen:
        c_tf, c_k3 = cite("tf_callable_losses"), cite("k3_trainable_only")
        ids = ", ".join(frozen)
        if engine == "tf_keras":
            msg = (f"{ids} is not trainable, but tf_keras still adds its regularizer to model.losses "
                   f"(Layer.losses evaluates every layer's _callable_losses, {where(c_tf)}): a constant in the "
                   f"logged loss that trains nothing; Keras 3 reads trainable_weights only ({where(c_k3)}) and "
                   "leaves it out, so the same model logs a smaller loss there.")
        else:
            msg = (f"{ids} is not trainable and Keras 3 leaves its regularizer out ({where(c_k3)}); tf_keras "
                   f"would add it to model.losses anyway ({where(c_tf)}), a constant in its logged loss.")
        add("ENGINE_DIFF_FROZEN_REGULARIZER", "warning" if engine == "tf_keras" else "info",
            "regularizers of frozen weights", msg, [c_tf, c_k3], term=f"regularizer/{frozen[0]}",
            tf_keras="counted (constant)", keras3="left out")

    # 7. binary crossentropy from probabilities
    bce = [c for c in getattr(capture, "compiled", []) if c.fn == "binary_crossentropy" and c.logits is None
           and not c.fn_kwargs.get("from_logits")]
    if bce:
        c_tf, c_k3 = cite("tf_bce"), cite("k3_bce")
        alt = _other_engine_values(bce, capture, engine)
        vals = "; ".join(f"compiled/{c.name}: {LABEL[engine]} {_fmt(a)}, {LABEL[other]} {_fmt(b)}"
                         for c, (a, b) in zip(bce, alt))
        add("ENGINE_DIFF_CROSSENTROPY_EPSILON", "info", "binary crossentropy from probabilities",
            f"binary_crossentropy on probabilities (no sigmoid logits to use): tf_keras clips to [eps, 1-eps] and "
            f"then takes log(p + eps) and log(1 - p + eps) ({where(c_tf)}); Keras 3 takes log(p) of the clipped "
            f"value ({where(c_k3)}). On this batch: {vals}.", [c_tf, c_k3], term=f"compiled/{bce[0].name}",
            tf_keras="log(clip(p) + eps)", keras3="log(clip(p))")
    return out


def _other_engine_values(compiled_captures, capture, engine):
    """(this engine's, the other engine's) value of each compiled capture, both from the NumPy mirrors."""
    from lossmap.engines import engine_class

    rules = {name: engine_class(name).rules for name in ENGINES}
    out = []
    for c in compiled_captures:
        pair = []
        for eng in (engine, "keras3" if engine == "tf_keras" else "tf_keras"):
            r = rules[eng]
            try:
                values, out_mask = r.elementwise_loss(c.fn, c.y_true, c.y_pred, c.logits, c.fn_kwargs, c.dtype,
                                                      capture.epsilon)
                reduction = c.reduction if eng == engine else (
                    "sum_over_batch_size" if c.reduction in (None, "auto") else c.reduction)
                raw = r.reduce_weighted(values, c.sample_weight, out_mask if c.mask is None else c.mask, reduction)
                import numpy as np

                pair.append(float(np.mean(raw)))
            except Exception:  # noqa: BLE001
                pair.append(None)
        out.append(tuple(pair))
    return out


def facts(eng, model, sig) -> dict:
    """What `differences` needs to know about the model beyond its terms, read from the engine's objects."""
    import tensorflow as tf

    out = {"engine": eng.name, "outputs": len(sig.outputs), "output_names": [o.name for o in sig.outputs],
           "replicas": int(tf.distribute.get_strategy().num_replicas_in_sync)}
    if eng.name == "tf_keras":
        container = getattr(model, "compiled_loss", None)
        out["loss_weights"] = getattr(container, "_user_loss_weights", None)
        out["losses"] = getattr(container, "_user_losses", None)
        out["frozen_regularized"] = eng.frozen_regularized_counted(model)
    else:
        compile_loss = getattr(model, "_compile_loss", None)
        out["loss_weights"] = getattr(compile_loss, "_user_loss_weights", None)
        out["losses"] = getattr(compile_loss, "_user_loss", None)
        out["frozen_regularized"] = eng.frozen_regularized_variables(model)
    return out


def as_findings(diffs) -> list:
    return [Finding(d["code"], d["level"], d["term"], d["message"]) for d in diffs]


def findings(analysis, capture, facts: dict) -> list:
    return as_findings(differences(analysis, capture, facts))
