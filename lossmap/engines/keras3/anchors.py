"""Keras 3 (TensorFlow backend): the functions that build a model's training loss, as source anchors.

All Keras-3-specific knowledge of the source walkthrough lives here: which
functions (module + qualified name), which statements in them (libcst
matchers), when a model uses each step, and the notes written from this
model's own names and numbers. `lossmap.sources` finds and highlights them in
the installed Keras; a new engine is one new file like this one.

Order: from `train_step` down to the compiled loss, then `model.losses` and
how each entry is added.
"""
from __future__ import annotations

import libcst.matchers as m

from lossmap.engines.common.anchor_kit import (
    self_attr as _self_attr,
    assign_to as _assign_to,
    number as _n,
    compiled as _compiled,
    extra as _extra,
    of_kind as _kind,
    reduction as _reduction,
    findings as _findings,
)
from lossmap.sources import Anchor, Stmt

TRAINER = "keras.src.trainers.trainer"
TF_TRAINER = "keras.src.backend.tensorflow.trainer"
COMPILE_UTILS = "keras.src.trainers.compile_utils"
LOSS = "keras.src.losses.loss"
LOSSES = "keras.src.losses.losses"
LAYER = "keras.src.layers.layer"
TF_NN = "keras.src.backend.tensorflow.nn"
REGULARIZERS = "keras.src.regularizers.regularizers"

MEANS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


# ---------------------------------------------------------------- matcher shorthands


def _ops(name):
    return m.Call(func=m.Attribute(value=m.Name("ops"), attr=m.Name(name)))


def _calls(name):
    """A call of a plain name, e.g. `reduce_values(...)`."""
    return m.Call(func=m.Name(name))


def _method_call(obj, name):
    return m.Call(func=m.Attribute(value=obj, attr=m.Name(name)))


# ---------------------------------------------------------------- reading the analysis


def _name(t) -> str:
    return t.output or t.id


def _user_call(t) -> bool:
    """The loss object overrides `__call__`: Loss.__call__ and what follows are not used."""
    return any("__call__ is user code" in s for s in t.steps)


def _via_loss_call(a):
    return [t for t in _compiled(a) if not _user_call(t)]


def _has_step(t, words) -> bool:
    return any(words in s for s in t.steps)


def _masked(a):
    return [t for t in _via_loss_call(a) if _has_step(t, "mask")]


def _weighted(a):
    return [t for t in _via_loss_call(a) if _has_step(t, "sample_weight")]


LIST_LIMIT = 8  # a note lists at most this many items, then says how many more


def _join(parts, sep="; ") -> str:
    parts = list(parts)
    if len(parts) > LIST_LIMIT:
        parts = parts[:LIST_LIMIT - 1] + [f"... and {len(parts) - LIST_LIMIT + 1} more"]
    return sep.join(parts)


def _list(parts) -> str:
    return _join(parts, ", ")


def _compiled_sum(a) -> float:
    return sum(t.contribution for t in _compiled(a))


def _entries(a) -> int:
    """How many entries Trainer.compute_loss's `losses` list gets."""
    return (1 if _compiled(a) else 0) + len(_extra(a))


def _uses_default_compute_loss(a) -> bool:
    return not a.model.custom_compute_loss


def _uses_default_train_step(a) -> bool:
    return a.model.compiled and not a.model.custom_train_step


# ---------------------------------------------------------------- notes
def _note_train_compute(a):
    tot = a.total
    keras = f"; the real train_step gave {_n(tot.train_step)}" if tot.train_step is not None else ""
    return f"loss = {_n(tot.reproduced)} for this batch (lossmap's reproduction){keras}"


def _note_optimizer(a):
    opt = (a.gradients or {}).get("optimizer")
    return f"{opt} applies the gradients of {_n(a.total.reproduced)}" if opt else \
        f"the optimizer applies the gradients of {_n(a.total.reproduced)}"


def _note_compile_call(a):
    c = _compiled(a)
    if not c:
        return None
    parts = _join((f"{_name(t)} {_n(t.contribution)}" for t in c), " + ")
    return f"CompileLoss returns {_n(_compiled_sum(a))} here" + (f" ({parts})" if len(c) > 1 else "")


def _note_losses_loop(a):
    extra = _extra(a)
    listed = _list(f"{t.id} {_n(t.contribution)}" for t in extra)
    return f"model.losses holds {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} here: {listed}"


def _note_total(a):
    parts = []
    if _compiled(a):
        parts.append(f"{_n(_compiled_sum(a))} (compiled)")
    extra = _extra(a)
    shown = extra if len(parts) + len(extra) <= LIST_LIMIT else extra[:LIST_LIMIT - len(parts) - 1]
    parts += [f"{_n(t.contribution)} ({t.id})" for t in shown]
    rest = extra[len(shown):]
    if rest:
        parts.append(f"{_n(sum(t.contribution for t in rest))} ({len(rest)} more terms)")
    return f"here {' + '.join(parts)} = {_n(a.total.reproduced)}"


def _note_single_entry(a):
    only = "the compiled loss" if _compiled(a) else _extra(a)[0].id
    return f"only one entry here ({only}): the total is {_n(a.total.reproduced)}"


def _note_aggregate(a):
    wide = [t for t in _extra(a) if t.shape]
    if not wide:
        return "every entry here is a scalar: ops.sum leaves it as it is"
    parts = []
    for t in wide:
        n = 1
        for d in t.shape:
            n *= d
        parts.append(f"{t.id} has shape {t.shape}: all {n} entries are summed to {_n(t.value)}")
    return _join(parts)


def _note_loss_fn(a):
    parts = []
    for t in _compiled(a):
        sw = " with this batch's sample_weight" if _has_step(t, "sample_weight") else ""
        parts.append(f"{_name(t)}: {t.fn}{sw} -> {_n(t.value)}")
    return _join(parts)


def _note_multiply(a):
    parts = [f"{_name(t)}'s {_n(t.value)} is multiplied by {_n(t.weight)} (= {_n(t.contribution)})"
             for t in _compiled(a)]
    return "here " + _list(parts)


def _note_metric(a):
    parts = [f"{_name(t)}_loss records {_n(t.value)}" for t in _compiled(a)]
    return "per-output logs, before the loss weight (unweighted): " + _list(parts)


def _note_sum_outputs(a):
    c = _compiled(a)
    return f"{_join((_n(t.contribution) for t in c), ' + ')} = {_n(_compiled_sum(a))}"


def _note_single_output(a):
    t = _compiled(a)[0]
    return f"one output: {_name(t)}'s {_n(t.contribution)} is the compiled loss"


def _note_self_call(a):
    parts = []
    for t in _via_loss_call(a):
        if t.opaque:
            parts.append(f"{_name(t)}: {t.fn}.call (user code)")
        else:
            parts.append(f"{_name(t)}: LossFunctionWrapper.call -> {t.fn}, one value per sample")
    return _join(parts)


def _note_reduce_weighted(a):
    return _join(f"{_name(t)}: reduction {_reduction(t)!r} -> {_n(t.value)}" for t in _via_loss_call(a))


def _note_in_mask(a):
    return _join(f"{_name(t)}'s prediction carries a mask" for t in _masked(a))


def _wrapped(t) -> bool:
    """A built-in loss function, or a user function given to compile() (wrapped the same way)."""
    return not t.opaque or t.fn == "LossFunctionWrapper"


def _note_fn(a):
    parts = []
    for t in _via_loss_call(a):
        if not _wrapped(t):
            continue
        fn = t.fn if not t.opaque else f"the user function {(t.origin or {}).get('qualname') or '?'}"
        parts.append(f"self.fn is {fn} for {_name(t)}")
    return _join(parts)


def _note_logits(a):
    ids = [f.term for f in _findings(a, "CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES") if f.term]
    names = [_name(a.term(i)) for i in ids]
    return (f"{_list(names)}: the softmax/sigmoid output carries its logits (_keras_logits), so the "
            "crossentropy is computed from them, with no epsilon clipping")


def _note_from_logits_warning(a):
    ids = [f.term for f in _findings(a, "FROM_LOGITS_ON_PROBABILITIES") if f.term]
    return f"{_list(ids)}: from_logits=True on a softmax/sigmoid output: Keras warns here and uses the logits"


def _note_apply_mask_call(a):
    return _join(f"{_name(t)}: the mask is merged into the sample weights" for t in _masked(a))


def _note_times_weights(a):
    parts = [f"{_name(t)}: each loss value times its sample weight" for t in _weighted(a)]
    parts += [f"{_name(t)}: times the mask weights" for t in _masked(a) if t not in _weighted(a)]
    return _join(parts)


def _note_mask_weight(a):
    parts = []
    for t in _masked(a):
        if _reduction(t) in ("mean", "sum_over_batch_size"):
            step = next(s for s in t.steps if "mask" in s)
            parts.append(f"{_name(t)}: {step}; each counted entry weighs total/valid, so the mean is over them")
    return _join(parts)


def _note_plain_mask(a):
    return _join(f"{_name(t)} (reduction {_reduction(t)!r}): the mask is used as 0/1 weights"
                 for t in _masked(a) if _reduction(t) not in ("mean", "sum_over_batch_size"))


def _note_reduce_sum(a):
    return _join(f"{_name(t)}: {_reduction(t)!r}" for t in _via_loss_call(a) if _reduction(t) not in (None, "none"))


def _note_divisor_count(a):
    names = [_name(t) for t in _via_loss_call(a) if _reduction(t) in ("sum_over_batch_size", "mean")
             or _reduction(t) == "mean_with_sample_weight" and not _has_step(t, "sample_weight")]
    return (f"{_list(names)}: the sum is divided by the number of loss values "
            f"(this batch has {a.batch.size} samples)")


def _note_divisor_weights(a):
    names = [_name(t) for t in _via_loss_call(a)
             if _reduction(t) == "mean_with_sample_weight" and _has_step(t, "sample_weight")]
    return f"{_list(names)}: the sum is divided by the sum of the sample weights"


def _note_no_reduction(a):
    return _join(f"{_name(t)}: reduction {_reduction(t)!r}: the per-sample tensor is returned as it is"
                 for t in _via_loss_call(a) if _reduction(t) in (None, "none"))


def _note_replicas(a):
    return "lossmap's run uses the default strategy: 1 replica, so the value is unchanged"


def _note_activity_call(a):
    return _join(f"{t.layer}: {t.fn}{_cfg(t)} of the layer output" for t in _kind(a, "activity_regularizer"))


def _note_activity_divide(a):
    parts = [f"{t.layer}: {s} -> {_n(t.value)}" for t in _kind(a, "activity_regularizer")
             for s in t.steps if "divided by the batch size" in s]
    return _join(parts)


def _note_activity_add(a):
    return _list(f"{t.layer} -> {t.id}" for t in _kind(a, "activity_regularizer"))


def _note_add_loss_extend(a):
    parts = [f"{t.id} {_n(t.value)}" + (f" (shape {t.shape})" if t.shape else "")
             for t in a.terms if t.kind in ("add_loss", "activity_regularizer")]
    return "appended to the layer's own list: " + _list(parts)


def _note_own_losses(a):
    own = [t.id for t in a.terms if t.kind in ("add_loss", "activity_regularizer") and t.layer == a.model.name]
    return ("the model's own add_loss tensors: " + _list(own)) if own else \
        "the model itself added nothing"


def _note_sublayer_losses(a):
    ids = [t.id for t in a.terms if t.kind in ("add_loss", "activity_regularizer") and t.layer != a.model.name]
    return "every sublayer's add_loss and activity-regularizer tensors, in layer order: " + _list(ids)


def _sublayer_losses(a) -> bool:
    return any(t.kind in ("add_loss", "activity_regularizer") and t.layer != a.model.name for t in a.terms)


def _note_weight_losses(a):
    return "then the weight regularizers: " + _list(t.id for t in _kind(a, "weight_regularizer"))


def _note_trainable_loop(a):
    regs = _kind(a, "weight_regularizer")
    frozen = _findings(a, "REGULARIZER_ON_FROZEN_WEIGHT")
    text = f"{len(regs)} regularized trainable variable{'s' if len(regs) != 1 else ''} here"
    if frozen:
        text += "; left out because not trainable: " + _list(f.term.split("/", 1)[-1] for f in frozen if f.term)
    return text


def _note_regularizer_append(a):
    return _join(f"{t.variable}: {t.fn}{_cfg(t)} -> {_n(t.value)}" for t in _kind(a, "weight_regularizer"))


def _cfg(t) -> str:
    cfg = t.config or {}
    inner = _list(f"{k}={_n(v) if isinstance(v, float) else v}" for k, v in cfg.items())
    return f"({inner})" if inner else ""


def _regularizer_terms(name):
    def terms(a):
        return [t for t in a.terms if t.kind in ("weight_regularizer", "activity_regularizer")
                and t.fn == name and not t.opaque]
    return terms


def _note_regularizer_return(name):
    def note(a):
        return _join(f"{t.variable or t.layer}: {name}{_cfg(t)} -> "
                     f"{_n(t.value) if t.kind == 'weight_regularizer' else 'the value before the batch division'}"
                     for t in _regularizer_terms(name)(a))
    return note


# ---------------------------------------------------------------- explanations
EXPLAIN_TRAIN_STEP = (
    "One training step with the TensorFlow backend: the model runs forward in training mode, "
    "`_compute_loss` adds up every term of the loss into one number, the loss tracker records it "
    "(that is the 'loss' fit() prints), and the gradient of that one number with respect to every "
    "trainable weight is what the optimizer applies. Every term below reaches the weights only "
    "through this sum.")
EXPLAIN_COMPUTE_LOSS = (
    "The total is built here. The compiled loss (one number for all outputs together) comes first, "
    "then every entry of `model.losses` (add_loss tensors, activity and weight regularizers), each "
    "reduced to a scalar by `_aggregate_additional_loss`; the list is added with `ops.sum`. Nothing is "
    "averaged or weighted at this level: a term's strength is whatever value it arrives with.")
EXPLAIN_AGGREGATE = (
    "Each entry of `model.losses` is reduced with `ops.sum` (after a cast to float if needed). A "
    "scalar stays as it is; a tensor passed to `add_loss` is summed over all its entries, batch "
    "included, so its strength grows with the batch size.")
EXPLAIN_COMPILE_LOSS = (
    "`CompileLoss` is what `compile(loss=..., loss_weights=...)` became. For each output that has "
    "a loss it calls that loss object on (y_true, y_pred, sample_weight), casts the result, records "
    "it in the per-output metric (before the weight), multiplies it by the output's loss weight, "
    "and adds the outputs with Python's `sum`. A single unnested output takes a shorter path with "
    "the same arithmetic.")
EXPLAIN_LOSS_CALL = (
    "Every built-in loss object goes through `Loss.__call__`: the inputs are converted to the "
    "loss's dtype, `self.call` computes one value per sample (or per step), any Keras mask on the "
    "prediction is picked up, and `reduce_weighted_values` turns those values into the loss with "
    "the sample weights, the mask and the loss's reduction.")
EXPLAIN_WRAPPER = (
    "A loss given by name or as a function is wrapped in `LossFunctionWrapper`, whose `call` lines "
    "up the ranks of y_true and y_pred and calls the function with the extra arguments it was "
    "created with (such as from_logits).")
EXPLAIN_LOGITS = (
    "With the TensorFlow backend, a softmax or sigmoid layer attaches its input (the logits) to its "
    "output. The backend crossentropies look for them here and, when present, compute the loss "
    "from the logits instead of the probabilities, even though from_logits=False. This avoids the "
    "epsilon clipping that would otherwise bound the loss.")
EXPLAIN_REDUCE_WEIGHTED = (
    "The per-sample loss values are combined with the sample weights: a mask is first merged into "
    "the sample weights (`apply_mask`), the values are multiplied by the weights, and "
    "`reduce_values` applies the reduction.")
EXPLAIN_APPLY_MASK = (
    "A mask becomes weights. With 'sum_over_batch_size' (or 'mean') the entries that count get the "
    "weight total/valid and the others 0, so that dividing by the total number of entries later "
    "gives the mean over the valid entries only. With other reductions the mask is used as 0/1 "
    "weights. When there are sample weights, the two are multiplied.")
EXPLAIN_REDUCE_VALUES = (
    "The reduction: 'sum' adds the weighted values; 'sum_over_batch_size' and 'mean' then divide by "
    "the number of values (not by the sum of the weights); 'mean_with_sample_weight' divides by the "
    "sum of the sample weights; 'none' returns the tensor unreduced.")
EXPLAIN_SCALE = (
    "Under a `tf.distribute` strategy with several replicas, each replica's mean loss is divided by "
    "the number of replicas so that the gradients add up to the mean over the global batch. With "
    "one replica this does nothing.")
EXPLAIN_LAYER_CALL = (
    "When a layer with an activity regularizer is called, the regularizer is applied to each of its "
    "outputs, and the result is passed to `add_loss`. This Keras divides it by the batch size first, "
    "so the penalty is a per-sample average rather than a sum over the batch.")
EXPLAIN_ADD_LOSS = (
    "`add_loss` flattens what it is given and appends the tensors to the layer's own list; they are "
    "cleared at the start of the next call. Whatever shape a tensor has, it is kept as it is here and "
    "only reduced later, by `ops.sum`.")
EXPLAIN_LAYER_LOSSES = (
    "`model.losses` is computed on every access: the model's own add_loss tensors, then every "
    "sublayer's (add_loss and activity regularizers), then the weight regularizers of the "
    "trainable weights. `compute_loss` iterates over this list.")
EXPLAIN_REGULARIZATION = (
    "Weight regularizers are not stored: the penalty of each variable is recomputed from its "
    "current value on every access to `losses`, and only for trainable weights, so a frozen layer's "
    "regularizer adds nothing.")
EXPLAIN_REGULARIZER = (
    "The built-in regularizer itself: its penalty is computed from the whole tensor it is given "
    "(the variable, or the layer output for an activity regularizer).")


# ---------------------------------------------------------------- the anchors
def anchors() -> list:
    """The Keras 3 walkthrough, in reading order (see `lossmap.sources.walkthrough`)."""
    activity_if = m.If(test=m.Comparison(left=_self_attr("activity_regularizer")))
    return [
        Anchor(
            key="train_step", title="TensorFlowTrainer.train_step: one training step",
            module=TF_TRAINER, qualname="TensorFlowTrainer.train_step",
            explanation=EXPLAIN_TRAIN_STEP, when=_uses_default_train_step,
            statements=[
                Stmt(_assign_to("loss", m.Call(func=_self_attr("_compute_loss"))), _note_train_compute,
                     "loss = self._compute_loss(...)"),
                Stmt(_method_call(_self_attr("_loss_tracker"), "update_state"),
                     "fit() logs the running mean of this total as 'loss'", "self._loss_tracker.update_state(...)"),
                Stmt(_method_call(m.Name("tape"), "gradient"),
                     lambda a: f"the gradient of {_n(a.total.reproduced)} for every trainable weight",
                     "tape.gradient(loss, trainable_weights)"),
                Stmt(_method_call(_self_attr("optimizer"), "apply_gradients"), _note_optimizer,
                     "self.optimizer.apply_gradients(...)"),
            ]),
        Anchor(
            key="compute_loss", title="Trainer.compute_loss: the total",
            module=TRAINER, qualname="Trainer.compute_loss",
            explanation=EXPLAIN_COMPUTE_LOSS, when=_uses_default_compute_loss,
            statements=[
                Stmt(_assign_to("loss", m.Call(func=_self_attr("_compile_loss"))), _note_compile_call,
                     "loss = self._compile_loss(y, y_pred, sample_weight)", when=lambda a: bool(_compiled(a))),
                Stmt(m.For(iter=_self_attr("losses")), _note_losses_loop, "for loss in self.losses:",
                     when=lambda a: bool(_extra(a))),
                Stmt(m.Call(func=_self_attr("_aggregate_additional_loss")), None,
                     "losses.append(self._aggregate_additional_loss(loss))", when=lambda a: bool(_extra(a))),
                Stmt(_assign_to("total_loss", _ops("sum")), _note_total, "total_loss = ops.sum(losses)",
                     when=lambda a: _entries(a) > 1),
                Stmt(_assign_to("total_loss", m.Subscript(value=m.Name("losses"))), _note_single_entry,
                     "total_loss = losses[0]", when=lambda a: _entries(a) == 1),
            ]),
        Anchor(
            key="compiled_loss", title="CompileLoss.call: the compiled loss over all outputs",
            module=COMPILE_UTILS, qualname="CompileLoss.call",
            explanation=EXPLAIN_COMPILE_LOSS, when=lambda a: bool(_compiled(a)),
            statements=[
                Stmt(_calls("loss_fn"), _note_loss_fn, "loss_fn(y_t, y_p, _sample_weight)",
                     within=m.For(iter=m.Call(func=m.Name("zip"))), when=lambda a: len(_compiled(a)) > 1),
                Stmt(_calls("loss_fn"), _note_loss_fn, "loss_fn(y_t, y_p, _sample_weight)",
                     when=lambda a: len(_compiled(a)) == 1),
                Stmt(m.Call(func=m.Attribute(value=m.Name("ops"), attr=m.Name("multiply")),
                            args=[m.Arg(m.Name("value")), m.Arg(m.Name("loss_weight"))]),
                     _note_multiply, "value = ops.multiply(value, loss_weight)",
                     within=m.For(iter=m.Call(func=m.Name("zip"))),
                     when=lambda a: len(_compiled(a)) > 1 and any(t.weight != 1.0 for t in _compiled(a))),
                Stmt(m.Call(func=m.Attribute(value=m.Name("ops"), attr=m.Name("multiply")),
                            args=[m.Arg(m.Name("value")), m.Arg(m.Name("loss_weight"))]),
                     _note_multiply, "value = ops.multiply(value, loss_weight)",
                     when=lambda a: len(_compiled(a)) == 1 and _compiled(a)[0].weight != 1.0),
                Stmt(_method_call(m.Name("metric"), "update_state"), _note_metric, "metric.update_state(...)",
                     when=lambda a: len(_compiled(a)) > 1),
                Stmt(_assign_to("total_loss", _calls("sum")), _note_sum_outputs, "total_loss = sum(loss_values)",
                     when=lambda a: len(_compiled(a)) > 1),
                # one compiled loss: the fast path (one unnested output) returns it, the general
                # loop (e.g. one loss for a two-output model) sums one value; the analysis
                # does not say which, so both are shown
                Stmt(m.Return(value=m.Subscript(value=m.Name("loss_values"))), _note_single_output,
                     "return loss_values[0]", when=lambda a: len(_compiled(a)) == 1),
                Stmt(_assign_to("total_loss", _calls("sum")), None, "total_loss = sum(loss_values)",
                     when=lambda a: len(_compiled(a)) == 1),
            ]),
        Anchor(
            key="loss_call", title="Loss.__call__: one output's loss",
            module=LOSS, qualname="Loss.__call__",
            explanation=EXPLAIN_LOSS_CALL, when=lambda a: bool(_via_loss_call(a)),
            statements=[
                Stmt(_assign_to("in_mask"), _note_in_mask, "in_mask = backend.get_keras_mask(y_pred)",
                     when=lambda a: bool(_masked(a))),
                Stmt(_assign_to("losses", m.Call(func=_self_attr("call"))), _note_self_call,
                     "losses = self.call(y_true, y_pred)"),
                Stmt(_calls("reduce_weighted_values"), _note_reduce_weighted, "reduce_weighted_values(...)"),
            ]),
        Anchor(
            key="loss_function_wrapper", title="LossFunctionWrapper.call: the loss function",
            module=LOSSES, qualname="LossFunctionWrapper.call",
            explanation=EXPLAIN_WRAPPER,
            when=lambda a: any(_wrapped(t) for t in _via_loss_call(a)),
            statements=[
                Stmt(m.Return(value=m.Call(func=_self_attr("fn"))), _note_fn,
                     "return self.fn(y_true, y_pred, **self._fn_kwargs)"),
            ]),
        Anchor(
            key="get_logits", title="_get_logits (TensorFlow backend): crossentropy from the logits",
            module=TF_NN, qualname="_get_logits",
            explanation=EXPLAIN_LOGITS,
            when=lambda a: bool(_findings(a, "CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES")),
            statements=[
                Stmt(_assign_to("has_keras_logits", m.Call(func=m.Name("hasattr"))), None,
                     "has_keras_logits = hasattr(output, '_keras_logits')"),
                Stmt(_assign_to("output_", m.Attribute(attr=m.Name("_keras_logits"))), _note_logits,
                     "output_ = output._keras_logits"),
                Stmt(_method_call(m.Name("warnings"), "warn"), _note_from_logits_warning, "warnings.warn(...)",
                     when=lambda a: bool(_findings(a, "FROM_LOGITS_ON_PROBABILITIES"))),
            ]),
        Anchor(
            key="reduce_weighted_values", title="reduce_weighted_values: sample weights and mask",
            module=LOSS, qualname="reduce_weighted_values",
            explanation=EXPLAIN_REDUCE_WEIGHTED, when=lambda a: bool(_via_loss_call(a)),
            statements=[
                Stmt(_assign_to("sample_weight", _calls("apply_mask")), _note_apply_mask_call,
                     "sample_weight = apply_mask(...)", when=lambda a: bool(_masked(a))),
                Stmt(_assign_to("values", m.BinaryOperation(left=m.Name("values"), operator=m.Multiply(),
                                                            right=m.Name("sample_weight"))),
                     _note_times_weights, "values = values * sample_weight",
                     when=lambda a: bool(_masked(a) or _weighted(a))),
                Stmt(_assign_to("loss", _calls("reduce_values")), None, "loss = reduce_values(...)"),
            ]),
        Anchor(
            key="apply_mask", title="apply_mask: the mask as weights",
            module=LOSS, qualname="apply_mask",
            explanation=EXPLAIN_APPLY_MASK, when=lambda a: bool(_masked(a)),
            statements=[
                Stmt(_assign_to("mask_weight", _ops("divide_no_nan")), _note_mask_weight,
                     "mask_weight = ops.divide_no_nan(total, valid)",
                     when=lambda a: any(_reduction(t) in ("mean", "sum_over_batch_size") for t in _masked(a))),
                Stmt(_assign_to("float_mask", _ops("where")), None, "float_mask = ops.where(mask, mask_weight, 0)",
                     when=lambda a: any(_reduction(t) in ("mean", "sum_over_batch_size") for t in _masked(a))),
                Stmt(_assign_to("float_mask", _ops("cast")), _note_plain_mask, "float_mask = ops.cast(mask, ...)",
                     when=lambda a: any(_reduction(t) not in ("mean", "sum_over_batch_size") for t in _masked(a))),
                Stmt(m.AugAssign(target=m.Name("sample_weight"), operator=m.MultiplyAssign(),
                                 value=m.Name("float_mask")),
                     lambda a: _join(f"{_name(t)}: mask weights times sample weights"
                                     for t in _masked(a) if t in _weighted(a)),
                     "sample_weight *= float_mask", when=lambda a: any(t in _weighted(a) for t in _masked(a))),
                Stmt(_assign_to("sample_weight", m.Name("float_mask")), None, "sample_weight = float_mask",
                     when=lambda a: any(t not in _weighted(a) for t in _masked(a))),
            ]),
        Anchor(
            key="reduce_values", title="reduce_values: the reduction",
            module=LOSS, qualname="reduce_values",
            explanation=EXPLAIN_REDUCE_VALUES, when=lambda a: bool(_via_loss_call(a)),
            statements=[
                Stmt(m.Return(value=m.Name("values")), _note_no_reduction, "return values",
                     when=lambda a: any(_reduction(t) in (None, "none") for t in _via_loss_call(a))),
                Stmt(_assign_to("loss", m.Call(func=m.Attribute(value=m.Name("ops"), attr=m.Name("sum")),
                                               args=[m.Arg(m.Name("values"))])),
                     _note_reduce_sum, "loss = ops.sum(values)",
                     when=lambda a: any(_reduction(t) not in (None, "none") for t in _via_loss_call(a))),
                Stmt(_assign_to("divisor", m.Call(args=[m.Arg(_ops("sum")), m.ZeroOrMore()])),
                     _note_divisor_weights, "divisor = ops.cast(ops.sum(sample_weight), ...)",
                     when=lambda a: any(_reduction(t) == "mean_with_sample_weight" and _has_step(t, "sample_weight")
                                        for t in _via_loss_call(a))),
                Stmt(_assign_to("divisor", m.Call(args=[m.Arg(_ops("prod")), m.ZeroOrMore()])),
                     _note_divisor_count, "divisor = ops.cast(ops.prod(ops.shape(values)), ...)",
                     when=lambda a: any(_reduction(t) in ("sum_over_batch_size", "mean") or
                                        _reduction(t) == "mean_with_sample_weight" and not _has_step(t, "sample_weight")
                                        for t in _via_loss_call(a))),
                Stmt(_assign_to("loss", _ops("divide_no_nan")), None, "loss = ops.divide_no_nan(loss, divisor)",
                     when=lambda a: any(_reduction(t) in MEANS for t in _via_loss_call(a))),
                Stmt(_assign_to("loss", _calls("scale_loss_for_distribution")), None,
                     "loss = scale_loss_for_distribution(loss)",
                     when=lambda a: any(_reduction(t) in MEANS for t in _via_loss_call(a))),
            ]),
        Anchor(
            key="scale_loss_for_distribution", title="scale_loss_for_distribution: replicas",
            module=LOSS, qualname="scale_loss_for_distribution",
            explanation=EXPLAIN_SCALE,
            when=lambda a: any(_reduction(t) in MEANS for t in _via_loss_call(a)),
            statements=[
                Stmt(_assign_to("num_replicas"), _note_replicas,
                     "num_replicas = tf.distribute.get_strategy().num_replicas_in_sync"),
                Stmt(_assign_to("value", _ops("multiply")), None, "value = ops.multiply(value, 1 / num_replicas)"),
            ]),
        Anchor(
            key="layer_call_activity", title="Layer.__call__: the activity regularizer",
            module=LAYER, qualname="Layer.__call__",
            explanation=EXPLAIN_LAYER_CALL, when=lambda a: bool(_kind(a, "activity_regularizer")),
            statements=[
                Stmt(_assign_to("loss", m.Call(func=_self_attr("activity_regularizer"))), _note_activity_call,
                     "loss = self.activity_regularizer(output)"),
                Stmt(_assign_to("loss", m.Call(func=m.Attribute(attr=m.Name("divide_no_nan")),
                                               args=[m.Arg(m.Name("loss")), m.Arg(m.Name("batch_size"))])),
                     _note_activity_divide, "loss = ops.divide_no_nan(loss, batch_size)",
                     within=activity_if,
                     when=lambda a: any(_has_step(t, "divided by the batch size")
                                        for t in _kind(a, "activity_regularizer"))),
                Stmt(m.Call(func=_self_attr("add_loss")), _note_activity_add, "self.add_loss(loss)",
                     within=activity_if),
            ]),
        Anchor(
            key="layer_add_loss", title="Layer.add_loss: the layer's own list",
            module=LAYER, qualname="Layer.add_loss",
            explanation=EXPLAIN_ADD_LOSS,
            when=lambda a: bool(_kind(a, "add_loss") or _kind(a, "activity_regularizer")),
            statements=[
                Stmt(_assign_to("losses", m.Call(func=m.Attribute(value=m.Name("tree"), attr=m.Name("flatten")))),
                     None, "losses = tree.flatten(loss)"),
                Stmt(_method_call(_self_attr("_losses"), "extend"), _note_add_loss_extend,
                     "self._losses.extend(losses)"),
            ]),
        Anchor(
            key="layer_losses", title="Layer.losses: what model.losses holds",
            module=LAYER, qualname="Layer.losses",
            explanation=EXPLAIN_LAYER_LOSSES, when=lambda a: bool(_extra(a)),
            statements=[
                Stmt(_assign_to("losses", m.Call(func=_self_attr("_get_own_losses"))), _note_own_losses,
                     "losses = self._get_own_losses()"),
                Stmt(m.For(iter=m.Call(func=_self_attr("_flatten_layers"))), _note_sublayer_losses,
                     "for layer in self._flatten_layers(include_self=False):", when=_sublayer_losses),
                Stmt(_method_call(m.Name("losses"), "extend"), None, "losses.extend(layer._get_own_losses())",
                     within=m.For(iter=m.Call(func=_self_attr("_flatten_layers"))), when=_sublayer_losses),
                Stmt(_assign_to("weight_regularization_losses", m.Call(func=_self_attr("_get_regularization_losses"))),
                     _note_weight_losses, "weight_regularization_losses = self._get_regularization_losses()",
                     when=lambda a: bool(_kind(a, "weight_regularizer"))),
                Stmt(m.Call(func=m.Attribute(value=m.Name("losses"), attr=m.Name("extend")),
                            args=[m.Arg(m.Name("weight_regularization_losses"))]),
                     None, "losses.extend(weight_regularization_losses)",
                     when=lambda a: bool(_kind(a, "weight_regularizer"))),
            ]),
        Anchor(
            key="regularization_losses", title="Layer._get_regularization_losses: weight regularizers",
            module=LAYER, qualname="Layer._get_regularization_losses",
            explanation=EXPLAIN_REGULARIZATION, when=lambda a: bool(_kind(a, "weight_regularizer")),
            statements=[
                Stmt(m.For(iter=_self_attr("trainable_weights")), _note_trainable_loop,
                     "for variable in self.trainable_weights:"),
                Stmt(_method_call(m.Name("weight_regularization_losses"), "append"), _note_regularizer_append,
                     "weight_regularization_losses.append(variable.regularizer(v))"),
            ]),
        *[Anchor(
            key=f"regularizer_{name}", title=f"{name}.__call__: the penalty",
            module=REGULARIZERS, qualname=f"{name}.__call__",
            explanation=EXPLAIN_REGULARIZER, when=lambda a, name=name: bool(_regularizer_terms(name)(a)),
            statements=[Stmt(m.Return(), _note_regularizer_return(name), "return ...")],
        ) for name in ("L1", "L2", "L1L2", "OrthogonalRegularizer")],
        Anchor(
            key="aggregate_additional_loss", title="Trainer._aggregate_additional_loss: each entry to a scalar",
            module=TRAINER, qualname="Trainer._aggregate_additional_loss",
            explanation=EXPLAIN_AGGREGATE, when=lambda a: bool(_extra(a)) and _uses_default_compute_loss(a),
            statements=[
                Stmt(m.Return(value=_ops("sum")), _note_aggregate, "return ops.sum(loss)"),
            ]),
    ]
