"""Keras 3 (TensorFlow backend): the functions that build a model's training loss, as source anchors.

All Keras-3-specific knowledge of the source walkthrough lives in this folder:
which functions (module + qualified name), which statements in them (libcst
matchers), when a model uses each step (here), and the notes written from this
model's own names and numbers (`notes.py`). `lossmap.sources` finds and
highlights them in the installed Keras.

Order: from `train_step` down to the compiled loss, then `model.losses` and
how each entry is added. One builder per anchor:

    >>> [a.key for a in anchors()][:3]
    ['train_step', 'compute_loss', 'compiled_loss']
"""
from __future__ import annotations

import libcst.matchers as m

from lossmap.engines.common.anchor_kit import (
    assign_to as _assign_to,
    call_attr,
    calls as _calls,
    compiled as _compiled,
    extra as _extra,
    findings as _findings,
    gradient_of_total,
    has_step as _has_step,
    masked as _masked,
    method_call as _method_call,
    of_kind as _kind,
    reduction as _reduction,
    self_attr as _self_attr,
    via_loss_call as _via_loss_call,
)
from lossmap.engines.keras3 import notes
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
REGULARIZER_CLASSES = ("L1", "L2", "L1L2", "OrthogonalRegularizer")


def _ops(name):
    return call_attr("ops", name)


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


# ---------------------------------------------------------------- the anchors, one builder each
def _train_step():
    return Anchor(
        key="train_step", title="TensorFlowTrainer.train_step: one training step",
        module=TF_TRAINER, qualname="TensorFlowTrainer.train_step",
        explanation=EXPLAIN_TRAIN_STEP, when=notes.uses_default_train_step,
        statements=[
            Stmt(_assign_to("loss", m.Call(func=_self_attr("_compute_loss"))), notes.train_compute,
                 "loss = self._compute_loss(...)"),
            Stmt(_method_call(_self_attr("_loss_tracker"), "update_state"),
                 "fit() logs the running mean of this total as 'loss'", "self._loss_tracker.update_state(...)"),
            Stmt(_method_call(m.Name("tape"), "gradient"),
                 gradient_of_total,
                 "tape.gradient(loss, trainable_weights)"),
            Stmt(_method_call(_self_attr("optimizer"), "apply_gradients"), notes.optimizer,
                 "self.optimizer.apply_gradients(...)"),
        ])


def _compute_loss():
    return Anchor(
        key="compute_loss", title="Trainer.compute_loss: the total",
        module=TRAINER, qualname="Trainer.compute_loss",
        explanation=EXPLAIN_COMPUTE_LOSS, when=notes.uses_default_compute_loss,
        statements=[
            Stmt(_assign_to("loss", m.Call(func=_self_attr("_compile_loss"))), notes.compile_call,
                 "loss = self._compile_loss(y, y_pred, sample_weight)", when=lambda a: bool(_compiled(a))),
            Stmt(m.For(iter=_self_attr("losses")), notes.losses_loop, "for loss in self.losses:",
                 when=lambda a: bool(_extra(a))),
            Stmt(m.Call(func=_self_attr("_aggregate_additional_loss")), None,
                 "losses.append(self._aggregate_additional_loss(loss))", when=lambda a: bool(_extra(a))),
            Stmt(_assign_to("total_loss", _ops("sum")), notes.total, "total_loss = ops.sum(losses)",
                 when=lambda a: notes.entries(a) > 1),
            Stmt(_assign_to("total_loss", m.Subscript(value=m.Name("losses"))), notes.single_entry,
                 "total_loss = losses[0]", when=lambda a: notes.entries(a) == 1),
        ])


def _compiled_loss():
    return Anchor(
        key="compiled_loss", title="CompileLoss.call: the compiled loss over all outputs",
        module=COMPILE_UTILS, qualname="CompileLoss.call",
        explanation=EXPLAIN_COMPILE_LOSS, when=lambda a: bool(_compiled(a)),
        statements=[
            Stmt(_calls("loss_fn"), notes.loss_fn, "loss_fn(y_t, y_p, _sample_weight)",
                 within=m.For(iter=m.Call(func=m.Name("zip"))), when=lambda a: len(_compiled(a)) > 1),
            Stmt(_calls("loss_fn"), notes.loss_fn, "loss_fn(y_t, y_p, _sample_weight)",
                 when=lambda a: len(_compiled(a)) == 1),
            Stmt(m.Call(func=m.Attribute(value=m.Name("ops"), attr=m.Name("multiply")),
                        args=[m.Arg(m.Name("value")), m.Arg(m.Name("loss_weight"))]),
                 notes.multiply, "value = ops.multiply(value, loss_weight)",
                 within=m.For(iter=m.Call(func=m.Name("zip"))),
                 when=lambda a: len(_compiled(a)) > 1 and any(t.weight != 1.0 for t in _compiled(a))),
            Stmt(m.Call(func=m.Attribute(value=m.Name("ops"), attr=m.Name("multiply")),
                        args=[m.Arg(m.Name("value")), m.Arg(m.Name("loss_weight"))]),
                 notes.multiply, "value = ops.multiply(value, loss_weight)",
                 when=lambda a: len(_compiled(a)) == 1 and _compiled(a)[0].weight != 1.0),
            Stmt(_method_call(m.Name("metric"), "update_state"), notes.metric, "metric.update_state(...)",
                 when=lambda a: len(_compiled(a)) > 1),
            Stmt(_assign_to("total_loss", _calls("sum")), notes.sum_outputs, "total_loss = sum(loss_values)",
                 when=lambda a: len(_compiled(a)) > 1),
            # one compiled loss: the fast path (one unnested output) returns it, the general
            # loop (e.g. one loss for a two-output model) sums one value; the analysis
            # does not say which, so both are shown
            Stmt(m.Return(value=m.Subscript(value=m.Name("loss_values"))), notes.single_output,
                 "return loss_values[0]", when=lambda a: len(_compiled(a)) == 1),
            Stmt(_assign_to("total_loss", _calls("sum")), None, "total_loss = sum(loss_values)",
                 when=lambda a: len(_compiled(a)) == 1),
        ])


def _loss_call():
    return Anchor(
        key="loss_call", title="Loss.__call__: one output's loss",
        module=LOSS, qualname="Loss.__call__",
        explanation=EXPLAIN_LOSS_CALL, when=lambda a: bool(_via_loss_call(a)),
        statements=[
            Stmt(_assign_to("in_mask"), notes.in_mask, "in_mask = backend.get_keras_mask(y_pred)",
                 when=lambda a: bool(_masked(a))),
            Stmt(_assign_to("losses", m.Call(func=_self_attr("call"))), notes.self_call,
                 "losses = self.call(y_true, y_pred)"),
            Stmt(_calls("reduce_weighted_values"), notes.reduce_weighted, "reduce_weighted_values(...)"),
        ])


def _loss_function_wrapper():
    return Anchor(
        key="loss_function_wrapper", title="LossFunctionWrapper.call: the loss function",
        module=LOSSES, qualname="LossFunctionWrapper.call",
        explanation=EXPLAIN_WRAPPER,
        when=lambda a: any(notes.wrapped(t) for t in _via_loss_call(a)),
        statements=[
            Stmt(m.Return(value=m.Call(func=_self_attr("fn"))), notes.fn,
                 "return self.fn(y_true, y_pred, **self._fn_kwargs)"),
        ])


def _get_logits():
    return Anchor(
        key="get_logits", title="_get_logits (TensorFlow backend): crossentropy from the logits",
        module=TF_NN, qualname="_get_logits",
        explanation=EXPLAIN_LOGITS,
        when=lambda a: bool(_findings(a, "CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES")),
        statements=[
            Stmt(_assign_to("has_keras_logits", m.Call(func=m.Name("hasattr"))), None,
                 "has_keras_logits = hasattr(output, '_keras_logits')"),
            Stmt(_assign_to("output_", m.Attribute(attr=m.Name("_keras_logits"))), notes.logits,
                 "output_ = output._keras_logits"),
            Stmt(_method_call(m.Name("warnings"), "warn"), notes.from_logits_warning, "warnings.warn(...)",
                 when=lambda a: bool(_findings(a, "FROM_LOGITS_ON_PROBABILITIES"))),
        ])


def _reduce_weighted_values():
    return Anchor(
        key="reduce_weighted_values", title="reduce_weighted_values: sample weights and mask",
        module=LOSS, qualname="reduce_weighted_values",
        explanation=EXPLAIN_REDUCE_WEIGHTED, when=lambda a: bool(_via_loss_call(a)),
        statements=[
            Stmt(_assign_to("sample_weight", _calls("apply_mask")), notes.apply_mask_call,
                 "sample_weight = apply_mask(...)", when=lambda a: bool(_masked(a))),
            Stmt(_assign_to("values", m.BinaryOperation(left=m.Name("values"), operator=m.Multiply(),
                                                        right=m.Name("sample_weight"))),
                 notes.times_weights, "values = values * sample_weight",
                 when=lambda a: bool(_masked(a) or notes.weighted(a))),
            Stmt(_assign_to("loss", _calls("reduce_values")), None, "loss = reduce_values(...)"),
        ])


def _apply_mask():
    return Anchor(
        key="apply_mask", title="apply_mask: the mask as weights",
        module=LOSS, qualname="apply_mask",
        explanation=EXPLAIN_APPLY_MASK, when=lambda a: bool(_masked(a)),
        statements=[
            Stmt(_assign_to("mask_weight", _ops("divide_no_nan")), notes.mask_weight,
                 "mask_weight = ops.divide_no_nan(total, valid)",
                 when=lambda a: any(_reduction(t) in ("mean", "sum_over_batch_size") for t in _masked(a))),
            Stmt(_assign_to("float_mask", _ops("where")), None, "float_mask = ops.where(mask, mask_weight, 0)",
                 when=lambda a: any(_reduction(t) in ("mean", "sum_over_batch_size") for t in _masked(a))),
            Stmt(_assign_to("float_mask", _ops("cast")), notes.plain_mask, "float_mask = ops.cast(mask, ...)",
                 when=lambda a: any(_reduction(t) not in ("mean", "sum_over_batch_size") for t in _masked(a))),
            Stmt(m.AugAssign(target=m.Name("sample_weight"), operator=m.MultiplyAssign(),
                             value=m.Name("float_mask")),
                 notes.mask_times_sample_weights,
                 "sample_weight *= float_mask", when=lambda a: any(t in notes.weighted(a) for t in _masked(a))),
            Stmt(_assign_to("sample_weight", m.Name("float_mask")), None, "sample_weight = float_mask",
                 when=lambda a: any(t not in notes.weighted(a) for t in _masked(a))),
        ])


def _reduce_values():
    return Anchor(
        key="reduce_values", title="reduce_values: the reduction",
        module=LOSS, qualname="reduce_values",
        explanation=EXPLAIN_REDUCE_VALUES, when=lambda a: bool(_via_loss_call(a)),
        statements=[
            Stmt(m.Return(value=m.Name("values")), notes.no_reduction, "return values",
                 when=lambda a: any(_reduction(t) in (None, "none") for t in _via_loss_call(a))),
            Stmt(_assign_to("loss", m.Call(func=m.Attribute(value=m.Name("ops"), attr=m.Name("sum")),
                                           args=[m.Arg(m.Name("values"))])),
                 notes.reduce_sum, "loss = ops.sum(values)",
                 when=lambda a: any(_reduction(t) not in (None, "none") for t in _via_loss_call(a))),
            Stmt(_assign_to("divisor", m.Call(args=[m.Arg(_ops("sum")), m.ZeroOrMore()])),
                 notes.divisor_weights, "divisor = ops.cast(ops.sum(sample_weight), ...)",
                 when=lambda a: any(_reduction(t) == "mean_with_sample_weight" and _has_step(t, "sample_weight")
                                    for t in _via_loss_call(a))),
            Stmt(_assign_to("divisor", m.Call(args=[m.Arg(_ops("prod")), m.ZeroOrMore()])),
                 notes.divisor_count, "divisor = ops.cast(ops.prod(ops.shape(values)), ...)",
                 when=lambda a: any(_reduction(t) in ("sum_over_batch_size", "mean") or
                                    _reduction(t) == "mean_with_sample_weight" and not _has_step(t, "sample_weight")
                                    for t in _via_loss_call(a))),
            Stmt(_assign_to("loss", _ops("divide_no_nan")), None, "loss = ops.divide_no_nan(loss, divisor)",
                 when=lambda a: any(_reduction(t) in MEANS for t in _via_loss_call(a))),
            Stmt(_assign_to("loss", _calls("scale_loss_for_distribution")), None,
                 "loss = scale_loss_for_distribution(loss)",
                 when=lambda a: any(_reduction(t) in MEANS for t in _via_loss_call(a))),
        ])


def _scale_loss_for_distribution():
    return Anchor(
        key="scale_loss_for_distribution", title="scale_loss_for_distribution: replicas",
        module=LOSS, qualname="scale_loss_for_distribution",
        explanation=EXPLAIN_SCALE,
        when=lambda a: any(_reduction(t) in MEANS for t in _via_loss_call(a)),
        statements=[
            Stmt(_assign_to("num_replicas"), notes.replicas,
                 "num_replicas = tf.distribute.get_strategy().num_replicas_in_sync"),
            Stmt(_assign_to("value", _ops("multiply")), None, "value = ops.multiply(value, 1 / num_replicas)"),
        ])


def _layer_call_activity():
    activity_if = m.If(test=m.Comparison(left=_self_attr("activity_regularizer")))
    return Anchor(
        key="layer_call_activity", title="Layer.__call__: the activity regularizer",
        module=LAYER, qualname="Layer.__call__",
        explanation=EXPLAIN_LAYER_CALL, when=lambda a: bool(_kind(a, "activity_regularizer")),
        statements=[
            Stmt(_assign_to("loss", m.Call(func=_self_attr("activity_regularizer"))), notes.activity_call,
                 "loss = self.activity_regularizer(output)"),
            Stmt(_assign_to("loss", m.Call(func=m.Attribute(attr=m.Name("divide_no_nan")),
                                           args=[m.Arg(m.Name("loss")), m.Arg(m.Name("batch_size"))])),
                 notes.activity_divide, "loss = ops.divide_no_nan(loss, batch_size)",
                 within=activity_if,
                 when=lambda a: any(_has_step(t, "divided by the batch size")
                                    for t in _kind(a, "activity_regularizer"))),
            Stmt(m.Call(func=_self_attr("add_loss")), notes.activity_add, "self.add_loss(loss)",
                 within=activity_if),
        ])


def _layer_add_loss():
    return Anchor(
        key="layer_add_loss", title="Layer.add_loss: the layer's own list",
        module=LAYER, qualname="Layer.add_loss",
        explanation=EXPLAIN_ADD_LOSS,
        when=lambda a: bool(_kind(a, "add_loss") or _kind(a, "activity_regularizer")),
        statements=[
            Stmt(_assign_to("losses", m.Call(func=m.Attribute(value=m.Name("tree"), attr=m.Name("flatten")))),
                 None, "losses = tree.flatten(loss)"),
            Stmt(_method_call(_self_attr("_losses"), "extend"), notes.add_loss_extend,
                 "self._losses.extend(losses)"),
        ])


def _layer_losses():
    return Anchor(
        key="layer_losses", title="Layer.losses: what model.losses holds",
        module=LAYER, qualname="Layer.losses",
        explanation=EXPLAIN_LAYER_LOSSES, when=lambda a: bool(_extra(a)),
        statements=[
            Stmt(_assign_to("losses", m.Call(func=_self_attr("_get_own_losses"))), notes.own_losses,
                 "losses = self._get_own_losses()"),
            Stmt(m.For(iter=m.Call(func=_self_attr("_flatten_layers"))), notes.sublayer_losses,
                 "for layer in self._flatten_layers(include_self=False):", when=notes.has_sublayer_losses),
            Stmt(_method_call(m.Name("losses"), "extend"), None, "losses.extend(layer._get_own_losses())",
                 within=m.For(iter=m.Call(func=_self_attr("_flatten_layers"))), when=notes.has_sublayer_losses),
            Stmt(_assign_to("weight_regularization_losses", m.Call(func=_self_attr("_get_regularization_losses"))),
                 notes.weight_losses, "weight_regularization_losses = self._get_regularization_losses()",
                 when=lambda a: bool(_kind(a, "weight_regularizer"))),
            Stmt(m.Call(func=m.Attribute(value=m.Name("losses"), attr=m.Name("extend")),
                        args=[m.Arg(m.Name("weight_regularization_losses"))]),
                 None, "losses.extend(weight_regularization_losses)",
                 when=lambda a: bool(_kind(a, "weight_regularizer"))),
        ])


def _regularization_losses():
    return Anchor(
        key="regularization_losses", title="Layer._get_regularization_losses: weight regularizers",
        module=LAYER, qualname="Layer._get_regularization_losses",
        explanation=EXPLAIN_REGULARIZATION, when=lambda a: bool(_kind(a, "weight_regularizer")),
        statements=[
            Stmt(m.For(iter=_self_attr("trainable_weights")), notes.trainable_loop,
                 "for variable in self.trainable_weights:"),
            Stmt(_method_call(m.Name("weight_regularization_losses"), "append"), notes.regularizer_append,
                 "weight_regularization_losses.append(variable.regularizer(v))"),
        ])


def _aggregate_additional_loss():
    return Anchor(
        key="aggregate_additional_loss", title="Trainer._aggregate_additional_loss: each entry to a scalar",
        module=TRAINER, qualname="Trainer._aggregate_additional_loss",
        explanation=EXPLAIN_AGGREGATE, when=lambda a: bool(_extra(a)) and notes.uses_default_compute_loss(a),
        statements=[
            Stmt(m.Return(value=_ops("sum")), notes.aggregate, "return ops.sum(loss)"),
        ])


def _regularizer(name):
    return Anchor(
        key=f"regularizer_{name}", title=f"{name}.__call__: the penalty",
        module=REGULARIZERS, qualname=f"{name}.__call__",
        explanation=EXPLAIN_REGULARIZER, when=lambda a: bool(notes.regularizer_terms(name)(a)),
        statements=[Stmt(m.Return(), notes.regularizer_return(name), "return ...")],
    )


_FROM_TRAIN_STEP_DOWN = (
    _train_step, _compute_loss, _compiled_loss, _loss_call, _loss_function_wrapper, _get_logits,
    _reduce_weighted_values, _apply_mask, _reduce_values, _scale_loss_for_distribution,
    _layer_call_activity, _layer_add_loss, _layer_losses, _regularization_losses,
)


def anchors() -> list:
    """The Keras 3 walkthrough, in reading order (see `lossmap.sources.walkthrough`)."""
    return ([build() for build in _FROM_TRAIN_STEP_DOWN] + [_regularizer(n) for n in REGULARIZER_CLASSES]
            + [_aggregate_additional_loss()])
