"""tf_keras 2.x: the functions that build a model's training loss, as source anchors.

The tf_keras counterpart of `lossmap.engines.keras3.anchors`: which functions
of the installed tf_keras (module + qualified name), which statements in them
(libcst matchers), when a model uses each step, and notes written from this
model's own names and numbers (`notes.py`). `lossmap.sources` finds and
highlights them.

Order: from `Model.train_step` down through `Model.compute_loss` to
`LossesContainer.__call__` and `Loss.__call__` with its reductions, then where
the entries of `model.losses` come from. One builder per anchor:

    >>> [a.key for a in anchors()][:3]
    ['tfk_train_step', 'tfk_compute_loss', 'tfk_container']
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
    masked as _masked,
    method_call as _method_call,
    of_kind as _kind,
    reduction as _reduction,
    self_attr as _self_attr,
    via_loss_call as _via_loss_call,
)
from lossmap.engines.tf_keras import notes
from lossmap.sources import Anchor, Stmt

TRAINING = "tf_keras.src.engine.training"
COMPILE_UTILS = "tf_keras.src.engine.compile_utils"
BASE_LAYER = "tf_keras.src.engine.base_layer"
LOSSES = "tf_keras.src.losses"
LOSSES_UTILS = "tf_keras.src.utils.losses_utils"
BACKEND = "tf_keras.src.backend"


def _tf(name):
    return call_attr("tf", name)


def _utils(name, **kw):
    return call_attr("losses_utils", name, **kw)


# ---------------------------------------------------------------- explanations
EXPLAIN_TRAIN_STEP = (
    "One training step in tf_keras: the model runs forward in training mode under a GradientTape, "
    "`compute_loss` returns the total, and `optimizer.minimize` applies its gradient. The logs come from "
    "`compute_metrics`: the 'loss' there is the Mean tracker LossesContainer updated with the total.")
EXPLAIN_COMPUTE_LOSS = (
    "tf_keras's default `compute_loss` is one call: the compiled `LossesContainer` with this model's "
    "`losses` (add_loss tensors, activity and weight regularizers) as its regularization losses.")
EXPLAIN_CONTAINER = (
    "`LossesContainer.__call__` is what `compile(loss=..., loss_weights=...)` became. Per output it lines up "
    "dtypes and ranks, multiplies the prediction's mask into the sample weights, calls the loss object, records "
    "the unweighted value in the per-output metric, multiplies by the loss weight and scales for the "
    "distribution strategy. The regularization losses are added with one `tf.add_n` (unreduced: every entry must "
    "have one shape), and everything with a second `tf.add_n`. Outputs, losses and loss weights are zipped: the "
    "shortest list decides how many outputs are scored.")
EXPLAIN_LOSS_CALL = (
    "`Loss.__call__`: `self.call` computes one value per sample, the masks on the prediction and on the result "
    "are combined, AUTO becomes SUM_OVER_BATCH_SIZE, the mask is turned into weights (`apply_valid_mask`) and "
    "`compute_weighted_loss` reduces.")
EXPLAIN_WRAPPER = (
    "A loss given by name or function is a `LossFunctionWrapper`: `call` squeezes or expands the last dimension "
    "of y_true/y_pred and calls the function with the arguments it was created with.")
EXPLAIN_LOGITS = (
    "tf_keras's softmax and sigmoid attach their input (`_keras_logits`) to their output; the backend "
    "crossentropies use it, so a crossentropy on such an output is computed from the logits.")
EXPLAIN_VALID_MASK = (
    "With AUTO / SUM_OVER_BATCH_SIZE the valid entries weigh total/valid (a plain division: nothing valid gives "
    "NaN), so dividing by the number of entries later gives the mean over the valid ones.")
EXPLAIN_WEIGHTED = (
    "The loss values times the sample weights (ranks lined up), then `reduce_weighted_loss`: NONE keeps the "
    "tensor, SUM adds, SUM_OVER_BATCH_SIZE divides the sum by the number of entries.")
EXPLAIN_SCALE = ("With N replicas of a tf.distribute strategy, each replica's loss is divided by N so that the "
                 "summed gradients are the global mean. With one replica nothing changes.")
EXPLAIN_ACTIVITY = (
    "After a layer's `call`, each output goes through the activity regularizer; the value is divided by the "
    "batch size (`tf.math.divide_no_nan`) and passed to `add_loss`.")
EXPLAIN_ADD_LOSS = (
    "`add_loss` keeps eager tensors for the current call (`_eager_losses`, cleared at the next top-level call), "
    "symbolic ones in `_losses`, and zero-argument callables (weight regularizers) in `_callable_losses`. "
    "Nothing is reduced here.")
EXPLAIN_LOSSES = (
    "`Layer.losses` walks every layer: the tensors added during the last call, then the callables, evaluated "
    "now: the weight regularizers, of trainable and non-trainable weights alike.")
EXPLAIN_WEIGHT_REG = ("The callable `add_weight(regularizer=...)` registered: the regularizer applied to the "
                      "variable's current value.")


# ---------------------------------------------------------------- the anchors, one builder each
def _train_step():
    return Anchor(
        key="tfk_train_step", title="Model.train_step: one training step (tf_keras)",
        module=TRAINING, qualname="Model.train_step", explanation=EXPLAIN_TRAIN_STEP,
        when=lambda a: a.model.compiled and not a.model.custom_train_step,
        statements=[
            Stmt(_assign_to("loss", m.Call(func=_self_attr("compute_loss"))), notes.forward,
                 "loss = self.compute_loss(x, y, y_pred, sample_weight)"),
            Stmt(_method_call(_self_attr("optimizer"), "minimize"),
                 gradient_of_total,
                 "self.optimizer.minimize(loss, self.trainable_variables, tape=tape)"),
            Stmt(m.Call(func=_self_attr("compute_metrics")), "the logs, 'loss' among them",
                 "return self.compute_metrics(x, y, y_pred, sample_weight)"),
        ])


def _compute_loss():
    return Anchor(
        key="tfk_compute_loss", title="Model.compute_loss: the compiled loss plus model.losses",
        module=TRAINING, qualname="Model.compute_loss", explanation=EXPLAIN_COMPUTE_LOSS,
        when=lambda a: not a.model.custom_compute_loss,
        statements=[
            Stmt(m.Call(func=_self_attr("compiled_loss")), notes.compute_loss_call,
                 "return self.compiled_loss(y, y_pred, sample_weight, regularization_losses=self.losses)"),
        ])


def _container():
    return Anchor(
        key="tfk_container", title="LossesContainer.__call__: per output, weights, add_n",
        module=COMPILE_UTILS, qualname="LossesContainer.__call__", explanation=EXPLAIN_CONTAINER,
        statements=[
            Stmt(_utils("apply_mask"), notes.apply_mask, "sw = losses_utils.apply_mask(...)",
                 when=lambda a: bool(_masked(a))),
            Stmt(_calls("loss_obj"), notes.loss_obj, "loss_value = loss_obj(y_t, y_p, sample_weight=sw)",
                 when=lambda a: bool(_compiled(a))),
            Stmt(_method_call(m.Name("metric_obj"), "update_state"), notes.metric,
                 "metric_obj.update_state(total_loss_mean_value, ...)", when=lambda a: len(_compiled(a)) > 1),
            Stmt(m.AugAssign(target=m.Name("loss_value"), operator=m.MultiplyAssign()), notes.weight,
                 "loss_value *= loss_weight", when=lambda a: any(t.weight != 1.0 for t in _compiled(a))),
            Stmt(_utils("scale_loss_for_distribution", args=[m.Arg(m.Name("loss_value"))]), notes.scale,
                 "losses_utils.scale_loss_for_distribution(loss_value)", when=lambda a: bool(_compiled(a))),
            Stmt(m.Call(func=m.Attribute(value=m.Name("tf"), attr=m.Name("add_n")),
                        args=[m.Arg(m.Name("regularization_losses"))]),
                 notes.reg_add_n, "reg_loss = tf.add_n(regularization_losses)", when=lambda a: bool(_extra(a))),
            Stmt(m.Call(func=m.Attribute(value=m.Name("tf"), attr=m.Name("add_n")),
                        args=[m.Arg(m.Name("loss_values"))]),
                 notes.total, "total_loss = tf.add_n(loss_values)"),
            Stmt(_method_call(_self_attr("_total_loss_mean"), "update_state"), notes.mean_tracker,
                 "self._total_loss_mean.update_state(...)"),
        ])


def _loss_call():
    return Anchor(
        key="tfk_loss_call", title="Loss.__call__: per-sample values, mask, reduction",
        module=LOSSES, qualname="Loss.__call__", explanation=EXPLAIN_LOSS_CALL,
        when=lambda a: bool(_via_loss_call(a)),
        statements=[
            Stmt(_assign_to("losses", _calls("call_fn")), None, "losses = call_fn(y_true, y_pred)"),
            Stmt(_assign_to("reduction"), notes.reduction, "reduction = self._get_reduction()"),
            Stmt(_utils("apply_valid_mask"), None, "losses_utils.apply_valid_mask(...)",
                 when=lambda a: bool(_masked(a))),
            Stmt(_utils("compute_weighted_loss"), notes.weighted, "losses_utils.compute_weighted_loss(...)"),
        ])


def _wrapper():
    return Anchor(
        key="tfk_wrapper", title="LossFunctionWrapper.call: the loss function",
        module=LOSSES, qualname="LossFunctionWrapper.call", explanation=EXPLAIN_WRAPPER,
        when=lambda a: any(not t.opaque for t in _via_loss_call(a)),
        statements=[
            Stmt(_utils("squeeze_or_expand_dimensions"), None, "losses_utils.squeeze_or_expand_dimensions(...)"),
            Stmt(_calls("ag_fn"), notes.fn, "return ag_fn(y_true, y_pred, **self._fn_kwargs)"),
        ])


def _logits():
    return Anchor(
        key="tfk_logits", title="backend._get_logits: crossentropy from the attached logits",
        module=BACKEND, qualname="_get_logits", explanation=EXPLAIN_LOGITS,
        when=lambda a: bool(_findings(a, "CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES")),
        statements=[
            Stmt(_assign_to("output_", m.Attribute(value=m.Name("output"), attr=m.Name("_keras_logits"))),
                 notes.logits, "output_ = output._keras_logits"),
        ])


def _valid_mask():
    return Anchor(
        key="tfk_valid_mask", title="losses_utils.apply_valid_mask: a mask as weights",
        module=LOSSES_UTILS, qualname="apply_valid_mask", explanation=EXPLAIN_VALID_MASK,
        when=lambda a: bool(_masked(a)),
        statements=[Stmt(m.AugAssign(target=m.Name("mask"), operator=m.MultiplyAssign()), None,
                         "mask *= total / valid")])


def _weighted():
    return Anchor(
        key="tfk_weighted", title="losses_utils.compute_weighted_loss and reduce_weighted_loss",
        module=LOSSES_UTILS, qualname="reduce_weighted_loss", explanation=EXPLAIN_WEIGHTED,
        when=lambda a: bool(_via_loss_call(a)),
        statements=[
            Stmt(_assign_to("loss", _tf("reduce_sum")), None, "loss = tf.reduce_sum(weighted_losses)"),
            Stmt(_assign_to("loss", _calls("_safe_mean")), notes.weighted, "loss = _safe_mean(...)",
                 when=lambda a: any(_reduction(t) in ("auto", "sum_over_batch_size", None)
                                    for t in _via_loss_call(a))),
        ])


def _scale():
    return Anchor(
        key="tfk_scale", title="losses_utils.scale_loss_for_distribution",
        module=LOSSES_UTILS, qualname="scale_loss_for_distribution", explanation=EXPLAIN_SCALE,
        when=lambda a: bool(_compiled(a)),
        statements=[Stmt(m.If(test=m.Comparison(left=m.Name("num_replicas"))), notes.scale,
                         "if num_replicas > 1:")])


def _activity():
    return Anchor(
        key="tfk_activity", title="Layer._handle_activity_regularization",
        module=BASE_LAYER, qualname="Layer._handle_activity_regularization", explanation=EXPLAIN_ACTIVITY,
        when=lambda a: bool(_kind(a, "activity_regularizer")),
        statements=[
            Stmt(m.Call(func=m.Attribute(attr=m.Name("divide_no_nan"))), notes.activity,
                 "tf.math.divide_no_nan(activity_loss, batch_size)"),
            Stmt(_method_call(m.Name("self"), "add_loss"), None, "self.add_loss(mean_activity_loss)"),
        ])


def _add_loss():
    return Anchor(
        key="tfk_add_loss", title="Layer.add_loss: where the tensors are kept",
        module=BASE_LAYER, qualname="Layer.add_loss", explanation=EXPLAIN_ADD_LOSS,
        when=lambda a: any(t.kind in ("add_loss", "activity_regularizer") for t in a.terms),
        statements=[Stmt(_method_call(_self_attr("_eager_losses"), "extend"), notes.eager_losses,
                         "self._eager_losses.extend(eager_losses)")])


def _losses():
    return Anchor(
        key="tfk_losses", title="Layer.losses: model.losses, layer by layer",
        module=BASE_LAYER, qualname="Layer.losses", explanation=EXPLAIN_LOSSES,
        when=lambda a: bool(_extra(a)),
        statements=[
            Stmt(_method_call(m.Name("collected_losses"), "extend",
                              args=[m.Arg(m.Attribute(attr=m.Name("_eager_losses")))]), None,
                 "collected_losses.extend(layer._eager_losses)",
                 when=lambda a: any(t.kind in ("add_loss", "activity_regularizer") for t in a.terms)),
            Stmt(m.For(iter=m.Attribute(value=m.Name("layer"), attr=m.Name("_callable_losses"))),
                 notes.callable_losses, "for regularizer in layer._callable_losses:",
                 when=lambda a: bool(_kind(a, "weight_regularizer"))),
        ])


def _weight_reg():
    return Anchor(
        key="tfk_weight_reg", title="Layer._handle_weight_regularization",
        module=BASE_LAYER, qualname="Layer._handle_weight_regularization", explanation=EXPLAIN_WEIGHT_REG,
        when=lambda a: bool(_kind(a, "weight_regularizer")),
        statements=[Stmt(_assign_to("regularization", _calls("regularizer")), notes.regularizer,
                         "regularization = regularizer(v)")])


_BUILDERS = (
    _train_step, _compute_loss, _container, _loss_call, _wrapper, _logits, _valid_mask, _weighted, _scale,
    _activity, _add_loss, _losses, _weight_reg,
)


def anchors() -> list:
    """The tf_keras walkthrough, in reading order (see `lossmap.sources.walkthrough`)."""
    return [build() for build in _BUILDERS]
