"""Keras 3 (TensorFlow backend): where its training loss comes from.

The total is `Trainer.compute_loss`: `CompileLoss.__call__` (each output's
`Loss.__call__`, times its loss weight, summed) plus `ops.sum` of each entry of
`model.losses` (`Trainer._aggregate_additional_loss`), all added with `ops.sum`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Optional

import numpy as np

from lossmap.engines.base import (
    AdditionalCapture,
    Batch,
    Capture,
    CompiledCapture,
    OutputSpec,
    Signature,
    TensorSpec,
    Verification,
)
from lossmap.engines.common.engine import KerasEngine
from lossmap.engines.common.helpers import (
    VariableSnapshot,
    all_metrics as _all_metrics,
    as_numpy as _np,
    builtin_fn_name,
    call_regularizer as _call_regularizer,
    code_origin,
    dense_grad as _dense_grad,
    is_builtin_regularizer,
    jsonable as _jsonable,
    one_line as _one_line,
    reg_config as _reg_config,
)
from lossmap.errors import UserError
from lossmap.engines.keras3.rules import BUILTIN_LOSS_FUNCTIONS, BUILTIN_REGULARIZERS, KERAS3

# Labels a built-in loss expects, for synthetic batches.
LABEL_KIND = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "onehot",
    "categorical_focal_crossentropy": "onehot",
    "categorical_hinge": "onehot",
    "binary_crossentropy": "binary",
    "binary_focal_crossentropy": "binary",
    "hinge": "binary",
    "squared_hinge": "binary",
    "kl_divergence": "distribution",
    "poisson": "positive",
    "mean_squared_logarithmic_error": "positive",
    "mean_absolute_percentage_error": "positive",
}


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def _layer_path(layer) -> str:
    return getattr(layer, "path", None) or layer.name


class Keras3Engine(KerasEngine):
    name = "keras3"
    label = "Keras 3"
    package = "keras"
    rules = KERAS3  # lossmap.reproduce: Trainer.compute_loss and Loss.__call__ in NumPy

    def __init__(self):
        self.keras = _keras()
        from keras.src import backend

        self.kbackend = backend

    # ------------------------------------------------------------ identity
    def version(self) -> str:
        return self.keras.__version__

    def backend(self) -> str:
        return self.keras.backend.backend()

    def is_model(self, obj) -> bool:
        return isinstance(obj, self.keras.Model)

    def summation(self) -> str:
        return ("Trainer.compute_loss: total = CompileLoss(y, y_pred, sample_weight) "
                "[sum over outputs of loss_weight * Loss.__call__] + "
                "sum over model.losses of ops.sum(loss), added with ops.sum")

    def walkthrough_anchors(self) -> list:
        """The installed Keras functions behind the total, as `lossmap.sources.Anchor`s."""
        from lossmap.engines.keras3 import anchors as keras3_anchors

        return keras3_anchors.anchors()

    # ------------------------------------------------------------ loading
    def load_archive(self, path: str, safe_mode: bool):
        keras = self.keras
        try:
            return keras.saving.load_model(path, safe_mode=safe_mode, compile=True)
        except Exception as exc:  # translated into one line for the user
            raise UserError(_explain_load_error(path, exc)) from exc

    def model_info(self, model, source, saved_with):
        from lossmap.analysis import ModelInfo
        from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
        from keras.src.trainers.trainer import Trainer

        cls = type(model)
        return ModelInfo(
            source=source,
            name=model.name,
            engine=self.name,
            keras_version=self.version(),
            backend=self.backend(),
            saved_with=saved_with,
            compiled=bool(getattr(model, "compiled", False)),
            custom_train_step=cls.train_step is not TensorFlowTrainer.train_step,
            custom_compute_loss=cls.compute_loss is not Trainer.compute_loss,
        )

    # ------------------------------------------------------------ signature
    def signature(self, model) -> Signature:
        inputs, in_struct = self._input_specs(model)
        outputs, out_struct = self._output_specs(model, inputs)
        bound = None
        for layer in model._flatten_layers(include_self=False):
            if type(layer).__name__ == "Embedding":
                dim = int(layer.input_dim)
                bound = dim if bound is None else min(bound, dim)
        return Signature(inputs, in_struct, outputs, out_struct, int_input_bound=bound or 2)

    def _input_specs(self, model):
        struct = getattr(model, "_inputs_struct", None)
        if struct is not None:
            if isinstance(struct, dict):
                return [TensorSpec(k, tuple(v.shape), str(v.dtype)) for k, v in struct.items()], "dict"
            if isinstance(struct, (list, tuple)):
                return [TensorSpec(t.name, tuple(t.shape), str(t.dtype)) for t in struct], "list"
            return [TensorSpec(struct.name, tuple(struct.shape), str(struct.dtype))], "single"
        shapes = getattr(model, "_build_shapes_dict", None) or {}
        if len(shapes) == 1:
            shape = next(iter(shapes.values()))
            if isinstance(shape, (list, tuple)) and all(d is None or isinstance(d, int) for d in shape):
                return [TensorSpec("x", tuple(shape), self.keras.backend.floatx())], "single"
        raise UserError(
            f"cannot tell what input model '{model.name}' takes (it is not a functional model "
            "and was not built with one input shape); pass a batch with --data batch.npz")

    def _output_specs(self, model, inputs):
        names = list(getattr(model, "output_names", None) or [])
        struct = getattr(model, "_outputs_struct", None)
        if struct is None:
            spec_in = [self.keras.KerasTensor(i.shape, i.dtype) for i in inputs]
            struct = model.compute_output_spec(spec_in[0] if len(spec_in) == 1 else spec_in)
        if isinstance(struct, (list, tuple)) and len(struct) == 1:
            # Functional.call returns unpack_singleton(outputs): a one-output list model
            # returns the bare tensor, and CompileLoss must be built (and fed) that way.
            struct = struct[0]
        if isinstance(struct, dict):
            flat = list(struct.items())
            kind = "dict"
        elif isinstance(struct, (list, tuple)):
            kind = "list"
            flat = [(names[i] if i < len(names) else f"output_{i}", t) for i, t in enumerate(struct)]
        else:
            kind = "single"
            flat = [(names[0] if names else "output", struct)]
        fns = self._loss_fn_by_output(model, kind, [n for n, _ in flat], [t for _, t in flat])
        specs = [OutputSpec(n, tuple(t.shape), str(t.dtype), loss_fn=fns.get(n)) for n, t in flat]
        return specs, kind

    def _loss_fn_by_output(self, model, kind, names, tensors):
        """Which built-in loss scores each output, from Keras's own CompileLoss.build."""
        compile_loss = getattr(model, "_compile_loss", None)
        if compile_loss is None:
            return {}
        if not compile_loss.built:
            zeros = [np.zeros([d or 1 for d in t.shape], t.dtype) for t in tensors]
            y_pred = self._pack(kind, names, zeros)
            y_true = self._pack(kind, names, [np.zeros_like(z) for z in zeros])
            try:
                compile_loss.build(y_true, y_pred)
            except Exception as exc:
                raise UserError(f"the model's compiled loss does not fit its outputs: {_one_line(exc)}") from exc
        out = {}
        for path, loss_fn, _, _ in compile_loss._flat_losses:
            out[self._output_name(path, kind, names)] = _builtin_fn_name(loss_fn)
        return out

    @staticmethod
    def _output_name(path, kind, names):
        if kind == "single" or not path:
            return names[0]
        key = path[0]
        return names[key] if isinstance(key, int) else str(key)

    @staticmethod
    def _pack(kind, names, arrays):
        if kind == "single":
            return arrays[0]
        if kind == "dict":
            return dict(zip(names, arrays))
        return list(arrays)

    def pack_batch(self, model, sig: Signature, batch: Batch):
        xs = self._pack(sig.input_structure, [i.name for i in sig.inputs], [batch.x[i.name] for i in sig.inputs])
        onames = [o.name for o in sig.outputs]
        ys = self._pack(sig.output_structure, onames, [batch.y[n] for n in onames])
        sw = None
        if batch.sample_weight:
            sw = self._pack(sig.output_structure, onames, [batch.sample_weight.get(n) for n in onames])
        return xs, ys, sw

    # ------------------------------------------------------------ capture
    def capture(self, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
        """One training-mode forward pass and everything the terms need from it.

        With `keep_tape`, the pass is recorded on a persistent gradient tape, kept on
        the capture for `attribute_gradients`, which then needs no forward pass of its own.
        """
        import tensorflow as tf

        tape = tf.GradientTape(persistent=True) if keep_tape else contextlib.nullcontext()
        with tape:
            capture = self._capture(model, batch, sig, tape if keep_tape else None)
        return capture

    def _capture(self, model, batch: Batch, sig: Signature, tape) -> Capture:
        keras = self.keras
        from keras.src.losses.loss import Loss

        xs, ys, sw = self.pack_batch(model, sig, batch)
        probe = _LossProbe(model)
        with probe:
            y_pred = model(xs, training=True) if model._call_has_training_arg else model(xs)
        # Read from Keras's source (libcst: import and parse, most of a second) only when
        # an activity regularizer is there: no other term depends on it.
        normalised = bool(probe._swapped) and activity_loss_divided_by_batch()

        compute_loss, compute_error = None, None
        try:
            value = model._compute_loss(x=xs, y=ys, y_pred=y_pred, sample_weight=sw, training=True)
            compute_loss = np.array(value)
        except Exception as exc:
            compute_error = _one_line(exc)

        compiled = []
        compile_loss = getattr(model, "_compile_loss", None)
        names = [o.name for o in sig.outputs]
        if compile_loss is not None:
            if not compile_loss.built:
                compile_loss.build(ys, y_pred)
            for path, loss_fn, loss_weight, name in compile_loss._flat_losses:
                y_t, y_p = _resolve(path, ys), _resolve(path, y_pred)
                s_w = _resolve(path, sw) if sw is not None and not _is_leaf(sw) else sw
                compiled.append(self._capture_compiled(
                    loss_fn, loss_weight, name, self._output_name(path, sig.output_structure, names),
                    y_t, y_p, s_w, compile_loss.dtype, Loss))

        additional = self._capture_additional(model, probe, normalised)
        capture = Capture(
            compiled=compiled,
            additional=additional,
            compute_loss=compute_loss,
            compute_loss_error=compute_error,
            dtype=keras.backend.floatx(),
            epsilon=float(keras.backend.epsilon()),
        )
        if tape is not None:
            capture.gradient_context = (tape,) + self._gradient_targets(model, ys, y_pred, sw)
        return capture

    def _gradient_targets(self, model, ys, y_pred, sw):
        """Each term's contribution as a tensor, in inventory order (call inside the tape)."""
        ops = self.keras.ops
        tensors = []
        compile_loss = getattr(model, "_compile_loss", None)
        if compile_loss is not None:
            for path, loss_fn, weight, _ in compile_loss._flat_losses:
                y_t, y_p = _resolve(path, ys), _resolve(path, y_pred)
                s_w = _resolve(path, sw) if sw is not None and not _is_leaf(sw) else sw
                value = ops.cast(loss_fn(y_t, y_p, s_w), compile_loss.dtype)
                if weight is not None:
                    value = ops.multiply(value, weight)
                tensors.append(ops.sum(value))
        for layer in model._flatten_layers(include_self=True):
            tensors.extend(model._aggregate_additional_loss(t) for t in layer._losses)
        regularized = [v for v in model.trainable_variables if getattr(v, "regularizer", None) is not None]
        # Each regularizer reaches only its own variable, so one backward pass of their
        # sum separates them exactly.
        reg_sum = ops.sum(ops.stack([ops.cast(v.regularizer(v), "float32") for v in regularized])) \
            if regularized else None
        return tensors, regularized, reg_sum

    def _capture_compiled(self, loss_fn, weight, name, output, y_t, y_p, s_w, cl_dtype, Loss):
        kb = self.kbackend
        dtype = str(getattr(loss_fn, "dtype", None) or self.keras.backend.floatx())
        logits = getattr(y_p, "_keras_logits", None)
        if logits is not None and self.kbackend.standardize_dtype(y_p.dtype) != dtype:
            logits = None  # Loss.__call__ casts y_pred: the cast tensor carries no logits
        mask = kb.get_keras_mask(y_p)
        keras_value = np.array(self.keras.ops.cast(loss_fn(y_t, y_p, s_w), cl_dtype))
        fn = _builtin_fn_name(loss_fn)
        overrides_call = type(loss_fn).__call__ is not Loss.__call__
        call_user = None
        if fn is None and not overrides_call:
            call_user = functools.partial(_elementwise_user_loss, self.keras, loss_fn, y_t, y_p, dtype)
        try:
            config = _jsonable(loss_fn.get_config())
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
            y_true=np.array(y_t),
            y_pred=np.array(y_p),
            logits=_np(logits),
            mask=_np(mask),
            sample_weight=_np(s_w),
            keras_value=keras_value,
            call_user=call_user,
            overrides_call=overrides_call,
            # a plain function passed to compile() is wrapped: its code is the function itself
            origin=None if fn is not None else code_origin(
                loss_fn.fn if type(loss_fn).__name__ == "LossFunctionWrapper" else loss_fn),
        )

    def _capture_additional(self, model, probe, normalised):
        ops = self.keras.ops
        out = []
        counters = {}
        for layer in model._flatten_layers(include_self=True):
            for tensor in layer._losses:
                info = probe.records.get(id(tensor))
                kind = info["kind"] if info else "add_loss"
                key = (kind, _layer_path(layer))
                index = counters.get(key, 0)
                counters[key] = index + 1
                reg = info.get("regularizer") if info else None
                out.append(AdditionalCapture(
                    kind=kind,
                    layer=_layer_path(layer),
                    variable=None,
                    index=index,
                    regularizer=type(reg).__name__ if reg is not None else None,
                    config=_reg_config(reg),
                    builtin=_is_builtin_regularizer(reg),
                    source_tensor=info.get("source") if info else None,
                    raw=np.array(tensor),
                    keras_value=float(np.array(model._aggregate_additional_loss(tensor))),
                    call_user=(functools.partial(_call_regularizer, reg, info.get("source_tensor"))
                               if reg is not None and not _is_builtin_regularizer(reg) else None),
                    normalised_by_batch=kind == "activity_regularizer" and normalised,
                    origin=(code_origin(layer) if kind == "add_loss"
                            else code_origin(reg) if reg is not None and not _is_builtin_regularizer(reg) else None),
                ))
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
                config=_reg_config(reg),
                builtin=_is_builtin_regularizer(reg),
                source_tensor=np.array(variable),
                raw=np.array(raw),
                keras_value=float(np.array(model._aggregate_additional_loss(ops.convert_to_tensor(raw)))),
                origin=None if _is_builtin_regularizer(reg) else code_origin(reg),
                call_user=(None if _is_builtin_regularizer(reg)
                           else functools.partial(_call_regularizer, reg, variable)),
            ))
        return out

    def frozen_regularized_variables(self, model):
        return [v.path for v in model.non_trainable_weights if getattr(v, "regularizer", None) is not None]

    # ------------------------------------------------------------ verification
    def verify_train_step(self, model, batch: Batch, sig: Signature) -> Verification:
        xs, ys, sw = self.pack_batch(model, sig, batch)
        notes = []
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            return Verification(None, "the model has no optimizer (not compiled)", "eager", notes, True)
        swapped = None
        if not optimizer.built:
            # Building the user's optimizer would add state to their model:
            # a fresh copy of it takes the step instead.
            swapped = optimizer
            clone = type(optimizer).from_config(optimizer.get_config())
            object.__setattr__(model, "optimizer", clone)
            notes.append("the optimizer was not built yet, so a fresh copy of it took the step")
        try:
            # The logged 'loss' is a running Mean (over the epoch, after fit()): from zero it is this
            # step's loss. The state snapshot puts the metrics back afterwards.
            for metric in _all_metrics(model):
                metric.reset_state()
            applied = _GradientRecorder(model.optimizer, model)
            with applied:
                logs = model.train_step((xs, ys, sw))
            loss = logs.get("loss") if isinstance(logs, dict) else None
            if loss is None:
                return Verification(None, "train_step returned no 'loss' in its logs", "eager", notes, True)
            return Verification(float(np.array(loss)), None, "eager", notes, True,
                                total_gradient=applied.gradient)
        except Exception as exc:
            return Verification(None, _one_line(exc), "eager", notes, True)
        finally:
            if swapped is not None:
                object.__setattr__(model, "optimizer", swapped)

    # ------------------------------------------------------------ gradients
    def attribute_gradients(self, model, batch: Batch, sig: Signature, terms, limit: int,
                            total_gradient: Optional[dict] = None, capture: Optional[Capture] = None):
        """Per-term gradients of one taped training-mode forward pass, folded into an Accumulator.

        `terms` are the inventory's terms in capture order; the same pass (same
        seeds) yields the same tensors in the same order. With `total_gradient`
        (what the real train_step applied, same seeds), the largest compiled
        term's gradient is that total minus all the others: one backward pass fewer.
        """
        import tensorflow as tf
        from lossmap import gradients as gmod

        variables = list(model.trainable_variables)
        paths = [v.path for v in variables]
        context = getattr(capture, "gradient_context", None) if capture is not None else None
        if context is not None:
            tape, tensors, regularized, reg_sum = context
            capture.gradient_context = None  # the tape is used once, then released
        else:
            xs, ys, sw = self.pack_batch(model, sig, batch)
            with tf.GradientTape(persistent=True) as tape:
                y_pred = model(xs, training=True) if model._call_has_training_arg else model(xs)
                tensors, regularized, reg_sum = self._gradient_targets(model, ys, y_pred, sw)
        if len(tensors) + len(regularized) != len(terms):
            raise RuntimeError(f"gradient pass found {len(tensors) + len(regularized)} terms, "
                               f"the inventory {len(terms)}")
        shared_terms = terms[: len(tensors)]
        acc = gmod.Accumulator(paths)
        notes = []
        try:
            plan = list(gmod.plan_units(shared_terms, limit, notes))
            derived = gmod.derivable_unit(plan, shared_terms, total_gradient, paths)
            reg_grads = {}
            if regularized:
                grads = tape.gradient(reg_sum, regularized)
                reg_grads = {v.path: _dense_grad(tf, g) for v, g in zip(regularized, grads)}
            for unit, members in plan:
                if unit is derived:
                    continue
                # A list of targets is differentiated as their sum, in one backward pass.
                grads = tape.gradient([tensors[i] for i in members], variables)
                acc.add_shared(unit, {p: _dense_grad(tf, g) for p, g in zip(paths, grads)})
            if derived is not None:
                acc.add_shared(derived, acc.remainder(total_gradient, reg_grads))
                notes.append(f"{derived.label}'s gradient is the gradient the real train_step applied minus "
                             "every other term's (one backward pass saved)")
            for term, v in zip(terms[len(tensors):], regularized):
                unit = gmod.Unit(term.id, term.id, term.kind, [term.id], False)
                acc.add_local(unit, v.path, reg_grads.get(v.path))
        finally:
            del tape
        return acc, notes

    # ------------------------------------------------------------ state
    def state(self, model) -> "ModelState":
        return ModelState(self, model)



class _GradientRecorder:
    """Keeps a copy of the gradients `train_step` hands to `optimizer.apply_gradients`.

    Set on the optimizer instance for the one step and removed after; only kept
    when they are the plain gradient of the loss (no loss scaling).
    """

    def __init__(self, optimizer, model):
        self.optimizer = optimizer
        self.usable = type(optimizer).__name__ != "LossScaleOptimizer"
        self.paths = {id(v): v.path for v in model.trainable_variables}
        self.gradient = None

    def __enter__(self):
        import tensorflow as tf

        original = self.optimizer.apply_gradients
        recorder = self

        def apply_gradients(grads_and_vars, *args, **kwargs):
            pairs = list(grads_and_vars)
            if recorder.usable and recorder.gradient is None:
                recorder.gradient = {recorder.paths.get(id(v), getattr(v, "path", None)): _dense_grad(tf, g)
                                     for g, v in pairs}
            return original(pairs, *args, **kwargs)

        object.__setattr__(self.optimizer, "apply_gradients", apply_gradients)
        return self

    def __exit__(self, *exc):
        try:
            object.__delattr__(self.optimizer, "apply_gradients")
        except AttributeError:
            pass
        return False


# ---------------------------------------------------------------- state snapshot
class ModelState(VariableSnapshot):
    """Keras 3: weights, BatchNorm statistics, seed-generator states, optimizer and metric variables."""

    def __init__(self, engine, model):
        super().__init__(model, _stateful_variables(model))


def _stateful_variables(model):
    from keras.src.backend.common import global_state

    found, seen = [], set()

    def add(vs):
        for v in vs:
            if id(v) not in seen:
                seen.add(id(v))
                found.append(v)

    add(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        add(optimizer.variables)
    for m in _all_metrics(model):
        add(m.variables)
    gen = global_state.get_global_attribute("global_seed_generator")
    if gen is not None:
        add([gen.state])
    return found


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
            "source": np.array(output),
            "source_tensor": output,
            "result": result,
        }
        return result


# ---------------------------------------------------------------- helpers
def _builtin_fn_name(loss_fn) -> Optional[str]:
    from keras.src.losses.loss import Loss
    from keras.src.losses.losses import LossFunctionWrapper

    return builtin_fn_name(loss_fn, Loss, LossFunctionWrapper, "keras.src.losses.losses", BUILTIN_LOSS_FUNCTIONS)


def _is_builtin_regularizer(reg) -> bool:
    return is_builtin_regularizer(reg, "keras.src.regularizers.regularizers", BUILTIN_REGULARIZERS)


def _resolve(path, obj):
    for key in path:
        obj = obj[key]
    return obj


def _is_leaf(obj):
    return not isinstance(obj, (list, tuple, dict))


def _elementwise_user_loss(keras, loss_fn, y_t, y_p, dtype):
    """What `Loss.__call__` computes before reducing: the user's `call`, and its mask."""
    ops = keras.ops
    from keras.src import tree
    from keras.src import backend

    y_pred = tree.map_structure(lambda x: ops.convert_to_tensor(x, dtype=dtype), y_p)
    y_true = tree.map_structure(lambda x: ops.convert_to_tensor(x, dtype=dtype), y_t)
    values = loss_fn.call(y_true, y_pred)
    return np.array(values), _np(backend.get_keras_mask(values))


def _explain_load_error(path, exc) -> str:
    text = str(exc)
    name = os.path.basename(path)
    if "safe_mode" in text or "unsafe" in text.lower() and "lambda" in text.lower():
        return (f"{name} contains code (such as a Lambda layer) that Keras's safe mode refuses to "
                "load; if you trust the file, run again with --unsafe")
    missing = re.search(r"Could not locate (class|function) '([^']+)'", text)
    if missing:
        module = re.search(r"Full object config: \{'module': '([^']+)'", text)
        module = module.group(1) if module and module.group(1) not in ("builtins", "__main__") else None
        where = f" (defined in module {module})" if module else ""
        how = f"--import {module}" if module else "--import MODULE"
        return (f"{name} uses a custom {missing.group(1)} '{missing.group(2)}'{where} that Keras does not know; "
                f"import the module that defines and registers it with {how} (a module name or path/to/file.py), "
                "or load the model through a factory file.py:function")
    if "Could not locate" in text or "Unknown" in text and ("layer" in text or "object" in text or "loss" in text):
        first = _one_line(exc)
        return (f"{name} uses a custom object Keras does not know ({first}); register it with "
                "--import MODULE (the module that defines it) or load through a factory file.py:function")
    return f"could not load {name} as a Keras 3 model: {_one_line(exc)}"


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
