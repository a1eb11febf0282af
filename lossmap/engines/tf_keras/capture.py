"""tf_keras: the training-mode forward pass that captures every term, and the probe it runs under.

One pass of the model with `Layer.add_loss` and `Layer._handle_activity_regularization`
wrapped (`_LossProbe`), tf_keras's own `compute_loss` on that pass, then what
`LossesContainer.__call__` zips output by output and every entry of `Layer.losses`
(tensors, callables, weight regularizers) as NumPy, ready for `lossmap.terms`.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from lossmap.engines.base import AdditionalCapture, Batch, Capture, CompiledCapture, Signature
from lossmap.engines.common.helpers import (
    as_numpy,
    builtin_fn_name as _builtin_fn_name_in,
    call_regularizer,
    calling_the_model,
    code_origin,
    is_builtin_regularizer as _is_builtin_regularizer_in,
    jsonable,
    keras_fails_too,
    one_line,
    reg_config,
)
from lossmap.engines.tf_keras.rules import BUILTIN_LOSS_FUNCTIONS, BUILTIN_REGULARIZERS, match_dtype_and_rank


def capture(engine, model, batch: Batch, sig: Signature) -> Capture:
    """One training-mode forward pass and everything the terms need from it."""
    xs, ys, sw = engine.packed_tensors(model, sig, batch)
    probe = _LossProbe(engine)
    with probe, calling_the_model(model):
        y_pred = model(xs, training=True)
    normalised = probe.saw_activity and activity_loss_divided_by_batch()

    compute_loss, compute_error = None, None
    try:
        value = model.compute_loss(x=xs, y=ys, y_pred=y_pred, sample_weight=sw)
        compute_loss = None if value is None else np.array(value)
        if value is None:
            compute_error = "compute_loss returned None (no compiled loss and no model.losses)"
    except Exception as exc:
        compute_error = one_line(exc)

    compiled, loss_free = [], []
    with keras_fails_too(model, compute_error):
        for entry in compiled_entries(engine, model, sig, ys, y_pred, sw):
            if entry["loss"] is None or entry["y_true"] is None:
                loss_free.append(entry["output"])
                continue
            compiled.append(_capture_compiled(entry))
        additional = _capture_additional(model, probe, normalised)
    return Capture(
        compiled=compiled,
        additional=additional,
        compute_loss=compute_loss,
        compute_loss_error=compute_error,
        dtype=engine.tfk.backend.floatx(),
        epsilon=float(engine.tfk.backend.epsilon()),
        loss_free_outputs=loss_free,
    )


def compiled_entries(engine, model, sig, ys, y_pred, sw):
    """What LossesContainer.__call__ zips, output by output (zip stops at the shortest list)."""
    tf = engine.tf
    container = getattr(model, "compiled_loss", None)
    if container is None:
        return []
    y_true = container._conform_to_outputs(y_pred, ys)
    s_w = container._conform_to_outputs(y_pred, sw)
    if not container._built:
        container.build(y_pred)
    flat_pred = tf.nest.flatten(y_pred)
    flat_true = tf.nest.flatten(y_true)
    flat_sw = tf.nest.flatten(s_w)
    names = [o.name for o in sig.outputs]
    out = []
    for i, (y_t, y_p, w, loss, weight) in enumerate(
            zip(flat_true, flat_pred, flat_sw, container._losses, container._loss_weights)):
        out.append({"index": i, "output": names[i] if i < len(names) else f"output_{i + 1}",
                    "y_true": y_t, "y_pred": y_p, "sample_weight": w, "loss": loss, "weight": weight})
    return out


def keras_loss_value(loss_obj, y_t, y_p, s_w):
    """What tf_keras's own objects give for this output, before the loss weight (as the container calls it)."""
    from tf_keras.src.engine.compile_utils import match_dtype_and_rank as tf_match
    from tf_keras.src.utils import losses_utils

    y_t, y_p, s_w = tf_match(y_t, y_p, s_w)
    s_w = losses_utils.apply_mask(y_p, s_w, losses_utils.get_mask(y_p))
    return loss_obj(y_t, y_p, sample_weight=s_w), y_t, y_p


def _capture_compiled(e):
    from tf_keras.src.losses import Loss, LossFunctionWrapper

    loss_obj, y_t, y_p, s_w = e["loss"], e["y_true"], e["y_pred"], e["sample_weight"]
    keras_value, y_t_m, y_p_m = keras_loss_value(loss_obj, y_t, y_p, s_w)
    y_true_np, sw_np = match_dtype_and_rank(np.array(y_t), np.array(y_p), as_numpy(s_w))
    logits = getattr(y_p, "_keras_logits", None)
    mask = getattr(y_p, "_keras_mask", None)
    fn = builtin_fn_name(loss_obj)
    overrides_call = type(loss_obj).__call__ is not Loss.__call__
    call_user = None
    if fn is None and not overrides_call:
        call_user = functools.partial(_elementwise_user_loss, loss_obj, y_t_m, y_p_m)
    try:
        config = jsonable(loss_obj.get_config())
    except Exception:
        config = None
    if isinstance(config, dict):
        config.pop("fn", None)
    weight = e["weight"]
    is_wrapper = type(loss_obj) is LossFunctionWrapper
    return CompiledCapture(
        name=e["output"],
        output=e["output"],
        loss_class=type(loss_obj).__name__,
        fn=fn,
        fn_kwargs=dict(getattr(loss_obj, "_fn_kwargs", {}) or {}),
        config=config,
        reduction=getattr(loss_obj, "reduction", None),
        dtype=y_p.dtype.name,
        weight=None if weight is None else float(weight),
        y_true=y_true_np,
        y_pred=np.array(y_p),
        logits=as_numpy(logits),
        mask=as_numpy(mask),
        sample_weight=sw_np,
        keras_value=np.array(keras_value),
        call_user=call_user,
        overrides_call=overrides_call,
        origin=None if fn is not None else code_origin(loss_obj.fn if is_wrapper else loss_obj),
    )


def loss_entries(model):
    """`Layer.losses`, entry by entry, with the layer each belongs to (same loop as the property).

    Returns three lists in `model.losses` terms: tensors added during the call
    (add_loss, activity regularizers), zero-argument callables that are not
    weight regularizers, and weight regularizers `(layer, variable, regularizer, callable)`.
    """
    from tf_keras.src.engine import base_layer_utils

    tensors, callables, regs = [], [], []
    for layer in model._flatten_layers():
        eager = layer._eager_losses
        if eager:
            if eager[0] is not base_layer_utils.REVIVED_LOSS_PLACEHOLDER:
                tensors.extend((layer, t) for t in eager)
        else:
            tensors.extend((layer, t) for t in layer._losses)
        for c in layer._callable_losses:
            var, reg = _regularized_variable(c)
            if var is not None:
                regs.append((layer, var, reg, c))
            else:
                callables.append((layer, c))
    return tensors, callables, regs


def _capture_additional(model, probe, normalised) -> list:
    counters = {}
    tensors, callables, regs = loss_entries(model)

    def index(kind, layer):
        key = (kind, layer.name)
        counters[key] = counters.get(key, 0) + 1
        return counters[key] - 1

    return (_added_tensors(tensors, probe, normalised, index) + _added_callables(callables, index)
            + _weight_regularizers(regs))


def _added_tensors(tensors, probe, normalised, index) -> list:
    """The tensors added during the call: `add_loss` and activity regularizers."""
    out = []
    for layer, tensor in tensors:
        info = probe.records.get(id(tensor))
        kind = info["kind"] if info else "add_loss"
        reg = info.get("regularizer") if info else None
        raw = np.array(tensor)
        builtin = is_builtin_regularizer(reg)
        out.append(AdditionalCapture(
            kind=kind,
            layer=layer.name,
            variable=None,
            index=index(kind, layer),
            regularizer=type(reg).__name__ if reg is not None else None,
            config=reg_config(reg),
            builtin=builtin,
            source_tensor=info.get("source") if info else None,
            raw=raw,
            keras_value=_keras_additional(raw),
            call_user=(functools.partial(call_regularizer, reg, info.get("source_tensor"))
                       if reg is not None and not builtin else None),
            normalised_by_batch=kind == "activity_regularizer" and normalised,
            origin=(code_origin(layer) if kind == "add_loss"
                    else code_origin(reg) if reg is not None and not builtin else None),
        ))
    return out


def _added_callables(callables, index) -> list:
    """Zero-argument callables passed to `add_loss` (not weight regularizers), evaluated now."""
    out = []
    for layer, c in callables:
        raw = np.array(c())
        fn = getattr(c, "args", None)
        user_fn = fn[0] if fn else c
        out.append(AdditionalCapture(
            kind="add_loss", layer=layer.name, variable=None, index=index("add_loss", layer),
            regularizer=None, config=None, builtin=False, source_tensor=None, raw=raw,
            keras_value=_keras_additional(raw), origin=code_origin(user_fn),
        ))
    return out


def _weight_regularizers(regs) -> list:
    """Every weight regularizer `Layer.losses` evaluates, trainable or not."""
    out = []
    for layer, var, reg, c in regs:
        raw = np.array(c())
        builtin = is_builtin_regularizer(reg)
        out.append(AdditionalCapture(
            kind="weight_regularizer",
            layer=layer.name,
            variable=f"{layer.name}/{short_var_name(var)}",
            index=0,
            regularizer=type(reg).__name__ if reg is not None else None,
            config=reg_config(reg),
            builtin=builtin,
            source_tensor=np.array(var),
            raw=raw,
            keras_value=_keras_additional(raw),
            call_user=None if builtin else functools.partial(call_regularizer, reg, var),
            origin=None if builtin else code_origin(reg),
        ))
    return out


# ---------------------------------------------------------------- probing a forward pass
class _LossProbe:
    """Records, during one forward pass, which `add_loss` calls come from activity regularizers.

    tf_keras's `Layer.__call__` calls `_handle_activity_regularization(inputs,
    outputs)`, which calls the regularizer on each output, divides by the batch
    size and calls `add_loss`; wrapping those two methods of the base `Layer`
    for the duration of the pass tells the entries apart and keeps each output.
    """

    def __init__(self, engine):
        self.engine = engine
        self.records = {}
        self.active = {}
        self.saw_activity = False

    def __enter__(self):
        from tf_keras.src.engine.base_layer import Layer

        tf = self.engine.tf
        self._Layer = Layer
        self._orig_add_loss = Layer.add_loss
        self._orig_handle = Layer._handle_activity_regularization
        probe = self

        def add_loss(layer, losses, **kwargs):
            ctx = probe.active.get(id(layer))
            for t in tf.nest.flatten(losses):
                if t is None or callable(t):
                    continue
                if ctx is not None and ctx["i"] < len(ctx["outputs"]):
                    output = ctx["outputs"][ctx["i"]]
                    ctx["i"] += 1
                    probe.records[id(t)] = {"kind": "activity_regularizer", "regularizer": ctx["regularizer"],
                                            "source": np.array(output), "source_tensor": output}
                else:
                    probe.records[id(t)] = {"kind": "add_loss"}
            return probe._orig_add_loss(layer, losses, **kwargs)

        def handle(layer, inputs, outputs):
            reg = getattr(layer, "_activity_regularizer", None)
            if reg:
                probe.saw_activity = True
                probe.active[id(layer)] = {"outputs": tf.nest.flatten(outputs), "i": 0, "regularizer": reg}
            try:
                return probe._orig_handle(layer, inputs, outputs)
            finally:
                probe.active.pop(id(layer), None)

        Layer.add_loss = add_loss
        Layer._handle_activity_regularization = handle
        return self

    def __exit__(self, *exc):
        self._Layer.add_loss = self._orig_add_loss
        self._Layer._handle_activity_regularization = self._orig_handle
        return False


# ---------------------------------------------------------------- helpers
def builtin_fn_name(loss_obj) -> Optional[str]:
    """The tf_keras built-in loss function `loss_obj` wraps, or None for user code."""
    from tf_keras.src.losses import Loss, LossFunctionWrapper

    return _builtin_fn_name_in(loss_obj, Loss, LossFunctionWrapper, "tf_keras.src.losses", BUILTIN_LOSS_FUNCTIONS)


def is_builtin_regularizer(reg) -> bool:
    return _is_builtin_regularizer_in(reg, "tf_keras.src.regularizers", BUILTIN_REGULARIZERS)


def short_var_name(v) -> str:
    return v.name.split("/")[-1].split(":")[0]


def _keras_additional(raw) -> float:
    raw = np.asarray(raw, np.float64)
    return float(raw) if raw.ndim == 0 else float(np.mean(raw))


def _regularized_variable(c):
    """(variable, regularizer) behind a weight-regularization callable of `Layer._callable_losses`.

    `Layer._handle_weight_regularization` adds
    `functools.partial(_tag_callable, functools.partial(_loss_for_variable, variable))`,
    where `_loss_for_variable` closes over the regularizer.
    """
    inner = c.args[0] if isinstance(c, functools.partial) and c.args else None
    if not isinstance(inner, functools.partial) or not inner.args:
        return None, None
    fn = inner.func
    if getattr(fn, "__name__", "") != "_loss_for_variable":
        return None, None
    cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
    reg = cells["regularizer"].cell_contents if "regularizer" in cells else None
    return inner.args[0], reg


def _elementwise_user_loss(loss_obj, y_t, y_p):
    """What `Loss.__call__` computes before reducing: the user's `call`, and the mask on its result."""
    values = loss_obj.call(y_t, y_p)
    return np.array(values), as_numpy(getattr(values, "_keras_mask", None))


# ---------------------------------------------------------------- reading tf_keras's source
@functools.lru_cache(maxsize=None)
def activity_loss_divided_by_batch() -> bool:
    """Whether the installed `Layer._handle_activity_regularization` divides by the batch size.

    Read from the installed tf_keras source with libcst (the division is a
    `tf.math.divide_no_nan` call inside the method).
    """
    step = activity_normalisation_step()
    if step.lines:
        return True
    if step.start_line is None:
        raise RuntimeError(f"Layer._handle_activity_regularization not found in the installed tf_keras: "
                           f"{step.missing}")
    return False


def activity_normalisation_step():
    """`lossmap.sources.Step` of tf_keras's activity-regularization method, its division highlighted."""
    import libcst.matchers as m
    from lossmap.sources import Stmt, locate

    divide = m.Call(func=m.Attribute(attr=m.Name("divide_no_nan")))
    return locate("tf_keras.src.engine.base_layer", "Layer._handle_activity_regularization",
                  [Stmt(divide, None, "tf.math.divide_no_nan(activity_loss, batch_size)")],
                  key="tf_keras_activity", title="Layer._handle_activity_regularization")
