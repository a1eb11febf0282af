"""Keras 3: the training-mode forward pass that captures every term, and the probes it runs under.

One pass of the model (`model(x, training=True)`) with `Layer.add_loss` and each
activity regularizer wrapped (`_LossProbe`), Keras's own `_compute_loss` on that
pass, then every compiled loss (per output, from `CompileLoss._flat_losses`) and
every entry of `model.losses` as NumPy, ready for `lossmap.terms`.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

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
from lossmap.engines.keras3.rules import BUILTIN_LOSS_FUNCTIONS, BUILTIN_REGULARIZERS


def capture(engine, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
    """One training-mode forward pass and everything the terms need from it.

    With `keep_tape`, the pass is recorded on a persistent gradient tape, kept on
    the capture for `begin_attribution`, which then needs no forward pass of its own.
    """
    import tensorflow as tf

    tape = tf.GradientTape(persistent=True) if keep_tape else None
    with tape if tape is not None else contextlib.nullcontext():
        return _capture(engine, model, batch, sig, tape)


def _capture(engine, model, batch: Batch, sig: Signature, tape) -> Capture:
    keras = engine.keras
    xs, ys, sw = engine.pack_batch(model, sig, batch)
    probe = _LossProbe(model)
    with probe, calling_the_model(model):
        y_pred = model(xs, training=True) if model._call_has_training_arg else model(xs)
    # The tape records the pass and the terms' tensors only: the rest would stay on it until attribution.
    with tape.stop_recording() if tape is not None else contextlib.nullcontext():
        # Read from Keras's source (libcst: import and parse, most of a second) only when
        # an activity regularizer is there: no other term depends on it.
        normalised = probe.saw_activity and activity_loss_divided_by_batch()
        compute_loss, compute_error = None, None
        try:
            value = model._compute_loss(x=xs, y=ys, y_pred=y_pred, sample_weight=sw, training=True)
            compute_loss = as_numpy(value)
        except Exception as exc:
            compute_error = one_line(exc)
        with keras_fails_too(model, compute_error):
            compiled = _compiled_captures(engine, model, sig, ys, y_pred, sw)
            additional = _layer_losses(model, probe, normalised) + _weight_regularizers(engine, model)
        result = Capture(
            compiled=compiled,
            additional=additional,
            compute_loss=compute_loss,
            compute_loss_error=compute_error,
            dtype=keras.backend.floatx(),
            epsilon=float(keras.backend.epsilon()),
        )
    if tape is not None:
        result.gradient_context = (tape,) + term_targets(engine, model, ys, y_pred, sw)
    return result


def _per_output(path, ys, y_pred, sw):
    """(y_true, y_pred, sample_weight) of the output at `path` of `CompileLoss._flat_losses`."""
    y_t, y_p = resolve(path, ys), resolve(path, y_pred)
    s_w = resolve(path, sw) if sw is not None and not is_leaf(sw) else sw
    return y_t, y_p, s_w


def _compiled_captures(engine, model, sig, ys, y_pred, sw) -> list:
    from keras.src.losses.loss import Loss

    compiled = []
    compile_loss = getattr(model, "_compile_loss", None)
    names = [o.name for o in sig.outputs]
    if compile_loss is not None:
        if not compile_loss.built:
            compile_loss.build(ys, y_pred)
        for path, loss_fn, loss_weight, name in compile_loss._flat_losses:
            y_t, y_p, s_w = _per_output(path, ys, y_pred, sw)
            compiled.append(_capture_compiled(
                engine, loss_fn, loss_weight, name, output_name(path, sig.output_structure, names),
                y_t, y_p, s_w, compile_loss.dtype, Loss))
    return compiled


def term_targets(engine, model, ys, y_pred, sw):
    """(each trunk-sharing term's contribution as a tensor in inventory order, the regularized variables).

    Call inside the tape. Weight regularizers are not computed here: each reaches only its
    own variable, so attribution differentiates them from the variables alone.
    """
    ops = engine.keras.ops
    tensors = []
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is not None:
        for path, loss_fn, weight, _ in compile_loss._flat_losses:
            y_t, y_p, s_w = _per_output(path, ys, y_pred, sw)
            value = ops.cast(loss_fn(y_t, y_p, s_w), compile_loss.dtype)
            if weight is not None:
                value = ops.multiply(value, weight)
            tensors.append(ops.sum(value))
    for layer in model._flatten_layers(include_self=True):
        tensors.extend(model._aggregate_additional_loss(t) for t in layer._losses)
    regularized = [v for v in model.trainable_variables if getattr(v, "regularizer", None) is not None]
    return tensors, regularized


def gradient_targets(engine, model, ys, y_pred, sw):
    """`term_targets`, and the sum of the weight regularizers as a tensor (one backward pass of it
    separates them exactly, since each reaches only its own variable)."""
    ops = engine.keras.ops
    tensors, regularized = term_targets(engine, model, ys, y_pred, sw)
    reg_sum = ops.sum(ops.stack([ops.cast(v.regularizer(v), "float32") for v in regularized])) \
        if regularized else None
    return tensors, regularized, reg_sum


def _capture_compiled(engine, loss_fn, weight, name, output, y_t, y_p, s_w, cl_dtype, Loss):
    kb = engine.kbackend
    dtype = str(getattr(loss_fn, "dtype", None) or engine.keras.backend.floatx())
    # the logits a softmax/sigmoid attaches, where this backend's crossentropies read them
    logits = getattr(y_p, "_keras_logits", None) if engine.rules.reads_attached_logits else None
    if logits is not None and kb.standardize_dtype(y_p.dtype) != dtype:
        logits = None  # Loss.__call__ casts y_pred: the cast tensor carries no logits
    mask = kb.get_keras_mask(y_p)
    keras_value = as_numpy(engine.keras.ops.cast(loss_fn(y_t, y_p, s_w), cl_dtype))
    fn = builtin_fn_name(loss_fn)
    overrides_call = type(loss_fn).__call__ is not Loss.__call__
    call_user = None
    if fn is None and not overrides_call:
        call_user = functools.partial(_elementwise_user_loss, engine.keras, loss_fn, y_t, y_p, dtype)
    try:
        config = jsonable(loss_fn.get_config())
    except Exception:
        config = None
    kwargs = dict(getattr(loss_fn, "_fn_kwargs", {}) or {})
    return CompiledCapture(
        name=name,
        output=output,
        loss_class=type(loss_fn).__name__,
        fn=fn,
        fn_kwargs=kwargs,
        config=config,
        reduction=getattr(loss_fn, "reduction", None),
        dtype=dtype,
        weight=None if weight is None else float(weight),
        y_true=as_numpy(y_t),
        y_pred=as_numpy(y_p),
        logits=as_numpy(logits),
        mask=as_numpy(mask),
        sample_weight=as_numpy(s_w),
        keras_value=keras_value,
        call_user=call_user,
        overrides_call=overrides_call,
        # a plain function passed to compile() is wrapped: its code is the function itself
        origin=None if fn is not None else code_origin(
            loss_fn.fn if type(loss_fn).__name__ == "LossFunctionWrapper" else loss_fn),
    )


def _layer_losses(model, probe, normalised) -> list:
    """The tensors each layer passed to `add_loss` in the pass (activity regularizers among them)."""
    out = []
    counters = {}
    for layer in model._flatten_layers(include_self=True):
        for tensor in layer._losses:
            info = probe.records.get(id(tensor))
            kind = info["kind"] if info else "add_loss"
            key = (kind, layer_path(layer))
            index = counters.get(key, 0)
            counters[key] = index + 1
            reg = info.get("regularizer") if info else None
            out.append(AdditionalCapture(
                kind=kind,
                layer=layer_path(layer),
                variable=None,
                index=index,
                regularizer=type(reg).__name__ if reg is not None else None,
                config=reg_config(reg),
                builtin=is_builtin_regularizer(reg),
                source_tensor=info.get("source") if info else None,
                raw=as_numpy(tensor),
                keras_value=float(as_numpy(model._aggregate_additional_loss(tensor))),
                call_user=(functools.partial(call_regularizer, reg, info.get("source_tensor"))
                           if reg is not None and not is_builtin_regularizer(reg) else None),
                normalised_by_batch=kind == "activity_regularizer" and normalised,
                origin=(code_origin(layer) if kind == "add_loss"
                        else code_origin(reg) if reg is not None and not is_builtin_regularizer(reg) else None),
            ))
    return out


def _weight_regularizers(engine, model) -> list:
    """Each trainable variable's regularizer (`Layer._get_regularization_losses`)."""
    ops = engine.keras.ops
    out = []
    for variable in model.trainable_weights:
        reg = getattr(variable, "regularizer", None)
        if reg is None:
            continue
        raw = reg(variable)
        path = variable.path
        out.append(AdditionalCapture(
            kind="weight_regularizer",
            layer=path.rsplit("/", 1)[0] if "/" in path else None,
            variable=path,
            index=0,
            regularizer=type(reg).__name__,
            config=reg_config(reg),
            builtin=is_builtin_regularizer(reg),
            source_tensor=as_numpy(ops.convert_to_tensor(variable), copy=False),  # the value read, not a copy
            raw=as_numpy(raw),
            keras_value=float(as_numpy(model._aggregate_additional_loss(ops.convert_to_tensor(raw)))),
            origin=None if is_builtin_regularizer(reg) else code_origin(reg),
            call_user=(None if is_builtin_regularizer(reg)
                       else functools.partial(call_regularizer, reg, variable)),
        ))
    return out


# ---------------------------------------------------------------- probing a forward pass
class _LossProbe:
    """Records, during one forward pass, which `add_loss` calls came from activity regularizers.

    Keras's `Layer.__call__` calls `self.activity_regularizer(output)` and then
    `self.add_loss(...)`; wrapping both (and nothing else) for the duration of
    the pass tells the two apart and keeps the regularized output.
    """

    def __init__(self, model):
        self.model = model
        self.records = {}
        self._pending = {}
        self._swapped = []

    @property
    def saw_activity(self) -> bool:
        """Whether the model has an activity regularizer (its layers' were wrapped)."""
        return bool(self._swapped)

    def __enter__(self):
        from keras.src.layers.layer import Layer

        self._Layer = Layer
        self._orig_add_loss = Layer.add_loss
        probe = self

        def add_loss(layer, loss):
            pending = probe._pending.pop(id(layer), None)
            for t in self._flatten(loss):
                if pending is not None:
                    probe.records[id(t)] = dict(pending, kind="activity_regularizer")
                else:
                    probe.records[id(t)] = {"kind": "add_loss"}
            return probe._orig_add_loss(layer, loss)

        add_loss.__wrapped__ = self._orig_add_loss  # a pass that must not be probed unwraps it (JAX's replay)
        Layer.add_loss = add_loss
        for layer in self.model._flatten_layers(include_self=True):
            reg = getattr(layer, "activity_regularizer", None)
            if reg is not None:
                self._swapped.append((layer, reg))
                layer.activity_regularizer = _ActivityRecorder(reg, layer, self._pending)
        return self

    @staticmethod
    def _flatten(loss):
        from keras.src import tree

        return tree.flatten(loss)

    def __exit__(self, *exc):
        self._Layer.add_loss = self._orig_add_loss
        for layer, reg in self._swapped:
            layer.activity_regularizer = reg
        return False


class _ActivityRecorder:
    def __init__(self, regularizer, layer, pending):
        self.regularizer = regularizer
        self.layer = layer
        self.pending = pending

    def __call__(self, output):
        result = self.regularizer(output)
        self.pending[id(self.layer)] = {
            "regularizer": self.regularizer,
            "source": as_numpy(output),
            "source_tensor": output,
            "result": result,
        }
        return result


# ---------------------------------------------------------------- helpers
def builtin_fn_name(loss_fn) -> Optional[str]:
    """The Keras 3 built-in loss function `loss_fn` wraps, or None for user code."""
    from keras.src.losses.loss import Loss
    from keras.src.losses.losses import LossFunctionWrapper

    return _builtin_fn_name_in(loss_fn, Loss, LossFunctionWrapper, "keras.src.losses.losses",
                               BUILTIN_LOSS_FUNCTIONS)


def is_builtin_regularizer(reg) -> bool:
    return _is_builtin_regularizer_in(reg, "keras.src.regularizers.regularizers", BUILTIN_REGULARIZERS)


def layer_path(layer) -> str:
    return getattr(layer, "path", None) or layer.name


def output_name(path, kind, names):
    """The output a `CompileLoss._flat_losses` path scores."""
    if kind == "single" or not path:
        return names[0]
    key = path[0]
    return names[key] if isinstance(key, int) else str(key)


def resolve(path, obj):
    for key in path:
        obj = obj[key]
    return obj


def is_leaf(obj):
    return not isinstance(obj, (list, tuple, dict))


def _elementwise_user_loss(keras, loss_fn, y_t, y_p, dtype):
    """What `Loss.__call__` computes before reducing: the user's `call`, and its mask."""
    ops = keras.ops
    from keras.src import tree
    from keras.src import backend

    y_pred = tree.map_structure(lambda x: ops.convert_to_tensor(x, dtype=dtype), y_p)
    y_true = tree.map_structure(lambda x: ops.convert_to_tensor(x, dtype=dtype), y_t)
    values = loss_fn.call(y_true, y_pred)
    return as_numpy(values), as_numpy(backend.get_keras_mask(values))


# ---------------------------------------------------------------- reading Keras's source
@functools.lru_cache(maxsize=None)
def activity_loss_divided_by_batch() -> bool:
    """Whether the installed `Layer.__call__` divides activity losses by the batch size.

    Read from the installed source with libcst (Keras added the division in 3.x;
    older releases add the raw regularizer value).
    """
    import libcst as cst
    import libcst.matchers as m
    from keras.src.layers import layer as layer_module

    with open(layer_module.__file__, encoding="utf-8") as fh:
        source = fh.read()
    try:  # libcst parses Layer.__call__ alone: the whole module takes it about a second
        tree = cst.parse_module(_layer_call_source(source))
    except Exception:
        tree = cst.parse_module(source)
    layer_cls = next(c for c in m.findall(tree, m.ClassDef(name=m.Name("Layer"))))
    call = next(f for f in m.findall(layer_cls, m.FunctionDef(name=m.Name("__call__"))))
    activity_ifs = m.findall(call, m.If(test=m.Comparison(left=m.Attribute(attr=m.Name("activity_regularizer")))))
    if not activity_ifs:
        raise RuntimeError("activity-regularizer block not found in Layer.__call__ of the installed Keras")
    divides = m.findall(activity_ifs[0], m.Call(func=m.Attribute(attr=m.Name("divide_no_nan")))) or \
        m.findall(activity_ifs[0], m.BinaryOperation(operator=m.Divide()))
    return bool(divides)


def _layer_call_source(source: str) -> str:
    """The first `__call__` of the first `class Layer` in `source`, as `class Layer:` + that method.

    Python's `ast` finds the lines (the same first-in-source-order matches libcst's
    findall gives); the method's own lines are kept verbatim, decorators included.
    """
    import ast

    def first(nodes):
        return min(nodes, key=lambda n: (n.lineno, n.col_offset))

    layer_cls = first([n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == "Layer"])
    call = first([n for n in ast.walk(layer_cls)
                  if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "__call__"])
    start = min([call.lineno] + [d.lineno for d in call.decorator_list])
    lines = source.splitlines(keepends=True)[start - 1: call.end_lineno]
    if not lines or not lines[0][:1].isspace():
        raise ValueError("Layer.__call__ is not indented inside its class")
    return "class Layer:\n" + "".join(lines)
