"""tf_keras 2.x (the legacy Keras, `pip install tf_keras`): where its training loss comes from.

`Model.train_step` calls `Model.compute_loss`, which is
`self.compiled_loss(y, y_pred, sample_weight, regularization_losses=self.losses)`:
`LossesContainer.__call__` (engine/compile_utils.py) takes each output's
`Loss.__call__`, multiplies it by its loss weight, scales it for the
distribution strategy (AUTO / SUM_OVER_BATCH_SIZE), adds every entry of
`model.losses` with one `tf.add_n`, and adds the lot with another `tf.add_n`.
`model.losses` (`Layer.losses`, engine/base_layer.py) holds, layer by layer,
the tensors passed to `add_loss` during the last call (activity regularizers
among them, divided by the batch size in `_handle_activity_regularization`)
and the weight regularizers, evaluated when the property is read, trainable
or not.

The NumPy reproduction of all of this is `lossmap.reproduce_tf_keras`.
"""
from __future__ import annotations

import functools
import os
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
from lossmap.engines.keras3.engine import _explain_load_error
from lossmap.errors import UserError
from lossmap.engines.tf_keras.rules import (
    BUILTIN_LOSS_FUNCTIONS,
    BUILTIN_REGULARIZERS,
    TF_KERAS,
    match_dtype_and_rank,
)

INSTALL_HINT = "pip install tf_keras (or pip install 'lossmap[legacy]')"


def tf_keras_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tf_keras") is not None


def _tf_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tf_keras
    except ImportError as exc:
        raise UserError(f"the tf_keras engine needs the tf_keras package, which is not installed: "
                        f"{INSTALL_HINT}") from exc
    return tf_keras


def is_tf_keras_object(obj) -> bool:
    """Whether `obj` is a tf_keras model, by its classes' modules (tf_keras is not imported for this)."""
    return any((c.__module__ or "").split(".")[0] == "tf_keras" for c in type(obj).__mro__)


def _short_var_name(v) -> str:
    return v.name.split("/")[-1].split(":")[0]


class TfKerasEngine(KerasEngine):
    name = "tf_keras"
    label = "tf_keras"
    package = "tf_keras"
    rules = TF_KERAS  # lossmap.reproduce_tf_keras: LossesContainer.__call__ and Loss.__call__ in NumPy

    def __init__(self):
        self.tfk = _tf_keras()
        import tensorflow as tf

        self.tf = tf

    # ------------------------------------------------------------ identity
    def version(self) -> str:
        return self.tfk.__version__

    def backend(self) -> str:
        return "tensorflow"

    def is_model(self, obj) -> bool:
        return isinstance(obj, self.tfk.Model)

    def summation(self) -> str:
        return ("Model.compute_loss -> LossesContainer.__call__: total = tf.add_n([loss_weight * Loss.__call__ "
                "per output (scale_loss_for_distribution for AUTO/SUM_OVER_BATCH_SIZE), ..., "
                "tf.add_n(model.losses)]); model.losses entries are added unreduced")

    def walkthrough_anchors(self) -> list:
        """The installed tf_keras functions behind the total, as `lossmap.sources.Anchor`s."""
        from lossmap.engines.tf_keras import anchors as tf_keras_anchors

        return tf_keras_anchors.anchors()

    # ------------------------------------------------------------ loading
    def load_archive(self, path: str, safe_mode: bool):
        from tf_keras.src.saving import serialization_lib

        try:
            if path.endswith((".h5", ".hdf5")):
                # The legacy HDF5 loader takes no safe_mode argument; the scope is what
                # Lambda.from_config reads (without it, lambdas load from bytecode).
                with serialization_lib.SafeModeScope(safe_mode):
                    return self.tfk.models.load_model(path, compile=True)
            return self.tfk.models.load_model(path, compile=True, safe_mode=safe_mode)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(_explain_load_error(path, exc).replace("as a Keras 3 model", "with tf_keras")) from exc

    def model_info(self, model, source, saved_with):
        from lossmap.analysis import ModelInfo
        from tf_keras.src.engine.training import Model

        cls = type(model)
        return ModelInfo(
            source=source,
            name=model.name,
            engine=self.name,
            keras_version=self.version(),
            backend=self.backend(),
            saved_with=saved_with,
            compiled=bool(getattr(model, "_is_compiled", False)),
            custom_train_step=cls.train_step is not Model.train_step,
            custom_compute_loss=cls.compute_loss is not Model.compute_loss,
        )

    # ------------------------------------------------------------ signature
    def signature(self, model) -> Signature:
        inputs, in_struct = self._input_specs(model)
        outputs, out_struct = self._output_specs(model, inputs, in_struct)
        bound = None
        for layer in model._flatten_layers(include_self=False):
            if type(layer).__name__ == "Embedding":
                dim = int(layer.input_dim)
                bound = dim if bound is None else min(bound, dim)
        return Signature(inputs, in_struct, outputs, out_struct, int_input_bound=bound or 2)

    @staticmethod
    def _spec(name, t):
        shape = tuple(t.shape.as_list()) if hasattr(t.shape, "as_list") else tuple(t.shape)
        return TensorSpec(name, shape, t.dtype.name if hasattr(t.dtype, "name") else str(t.dtype))

    def _input_specs(self, model):
        struct = getattr(model, "_nested_inputs", None)
        if struct is not None:
            if isinstance(struct, dict):
                return [self._spec(k, v) for k, v in struct.items()], "dict"
            if isinstance(struct, (list, tuple)):
                return [self._spec(_tensor_name(t), t) for t in struct], "list"
            return [self._spec(_tensor_name(struct), struct)], "single"
        shape = getattr(model, "_build_input_shape", None)
        if shape is not None:
            shape = tuple(shape.as_list()) if hasattr(shape, "as_list") else tuple(shape)
            if all(d is None or isinstance(d, int) for d in shape):
                return [TensorSpec("x", shape, self.tfk.backend.floatx())], "single"
        raise UserError(
            f"cannot tell what input model '{model.name}' takes (it is not a functional model "
            "and was not built with one input shape); pass a batch with --data batch.npz")

    def _output_specs(self, model, inputs, in_struct):
        tf = self.tf
        struct = getattr(model, "_nested_outputs", None)
        if struct is None:
            zeros = [tf.zeros([d or 1 for d in i.shape], i.dtype) for i in inputs]
            struct = model(self._pack(in_struct, [i.name for i in inputs], zeros), training=False)
        names = list(getattr(model, "output_names", None) or [])
        if isinstance(struct, (list, tuple)) and len(struct) == 1:
            struct = struct[0]
        if isinstance(struct, dict):
            kind = "dict"
            keys = sorted(struct)  # tf.nest.flatten order
            flat = [(k, struct[k]) for k in keys]
        elif isinstance(struct, (list, tuple)):
            kind = "list"
            flat = [(names[i] if i < len(names) else f"output_{i + 1}", t) for i, t in enumerate(struct)]
        else:
            kind = "single"
            flat = [(names[0] if names else "output_1", struct)]
        fns = self._loss_fn_by_output(model, [t for _, t in flat], kind, [n for n, _ in flat])
        specs = []
        for i, (n, t) in enumerate(flat):
            spec = self._spec(n, t)
            specs.append(OutputSpec(spec.name, spec.shape, spec.dtype, loss_fn=fns[i] if i < len(fns) else None))
        return specs, kind

    def _loss_fn_by_output(self, model, tensors, kind, names):
        """The built-in loss function scoring each flat output, from tf_keras's own LossesContainer.build."""
        container = getattr(model, "compiled_loss", None)
        if container is None:
            return []
        if not container._built:
            zeros = [self.tf.zeros([d or 1 for d in t.shape], t.dtype) for t in tensors]
            try:
                container.build(self._pack(kind, names, zeros))
            except Exception as exc:
                raise UserError(f"the model's compiled loss does not fit its outputs: {_one_line(exc)}") from exc
        return [_builtin_fn_name(loss) if loss is not None else None for loss in container._losses]

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
        ys = None
        if all(n in batch.y for n in onames):
            ys = self._pack(sig.output_structure, onames, [batch.y[n] for n in onames])
        elif batch.y:
            ys = self._pack(sig.output_structure, onames, [batch.y.get(n) for n in onames])
        sw = None
        if batch.sample_weight:
            sw = self._pack(sig.output_structure, onames, [batch.sample_weight.get(n) for n in onames])
        return xs, ys, sw

    def _tensors(self, structure):
        tf = self.tf
        return tf.nest.map_structure(lambda a: None if a is None else tf.convert_to_tensor(a), structure)

    def packed_tensors(self, model, sig, batch):
        xs, ys, sw = self.pack_batch(model, sig, batch)
        return self._tensors(xs), self._tensors(ys), self._tensors(sw)

    # ------------------------------------------------------------ capture
    def capture(self, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
        # keep_tape is an optimisation this engine does not take: attribute_gradients runs its own pass
        xs, ys, sw = self.packed_tensors(model, sig, batch)
        probe = _LossProbe(self)
        with probe:
            y_pred = model(xs, training=True)
        normalised = probe.saw_activity and activity_loss_divided_by_batch()

        compute_loss, compute_error = None, None
        try:
            value = model.compute_loss(x=xs, y=ys, y_pred=y_pred, sample_weight=sw)
            compute_loss = None if value is None else np.array(value)
            if value is None:
                compute_error = "compute_loss returned None (no compiled loss and no model.losses)"
        except Exception as exc:
            compute_error = _one_line(exc)

        compiled, loss_free = [], []
        for entry in self._compiled_entries(model, sig, ys, y_pred, sw):
            if entry["loss"] is None or entry["y_true"] is None:
                loss_free.append(entry["output"])
                continue
            compiled.append(self._capture_compiled(entry))
        additional = self._capture_additional(model, probe, normalised)
        return Capture(
            compiled=compiled,
            additional=additional,
            compute_loss=compute_loss,
            compute_loss_error=compute_error,
            dtype=self.tfk.backend.floatx(),
            epsilon=float(self.tfk.backend.epsilon()),
            loss_free_outputs=loss_free,
        )

    def _compiled_entries(self, model, sig, ys, y_pred, sw):
        """What LossesContainer.__call__ zips, output by output (zip stops at the shortest list)."""
        tf = self.tf
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

    def _keras_loss_value(self, loss_obj, y_t, y_p, s_w):
        """What tf_keras's own objects give for this output, before the loss weight (as the container calls it)."""
        from tf_keras.src.engine.compile_utils import match_dtype_and_rank as tf_match
        from tf_keras.src.utils import losses_utils

        y_t, y_p, s_w = tf_match(y_t, y_p, s_w)
        s_w = losses_utils.apply_mask(y_p, s_w, losses_utils.get_mask(y_p))
        return loss_obj(y_t, y_p, sample_weight=s_w), y_t, y_p

    def _capture_compiled(self, e):
        from tf_keras.src.losses import Loss, LossFunctionWrapper

        loss_obj, y_t, y_p, s_w = e["loss"], e["y_true"], e["y_pred"], e["sample_weight"]
        keras_value, y_t_m, y_p_m = self._keras_loss_value(loss_obj, y_t, y_p, s_w)
        y_true_np, sw_np = match_dtype_and_rank(np.array(y_t), np.array(y_p), _np(s_w))
        logits = getattr(y_p, "_keras_logits", None)
        mask = getattr(y_p, "_keras_mask", None)
        fn = _builtin_fn_name(loss_obj)
        overrides_call = type(loss_obj).__call__ is not Loss.__call__
        call_user = None
        if fn is None and not overrides_call:
            call_user = functools.partial(_elementwise_user_loss, loss_obj, y_t_m, y_p_m)
        try:
            config = _jsonable(loss_obj.get_config())
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
            logits=_np(logits),
            mask=_np(mask),
            sample_weight=sw_np,
            keras_value=np.array(keras_value),
            call_user=call_user,
            overrides_call=overrides_call,
            origin=None if fn is not None else code_origin(loss_obj.fn if is_wrapper else loss_obj),
        )

    def _loss_entries(self, model):
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

    def _capture_additional(self, model, probe, normalised):
        out = []
        counters = {}
        tensors, callables, regs = self._loss_entries(model)

        def index(kind, layer):
            key = (kind, layer.name)
            counters[key] = counters.get(key, 0) + 1
            return counters[key] - 1

        for layer, tensor in tensors:
            info = probe.records.get(id(tensor))
            kind = info["kind"] if info else "add_loss"
            reg = info.get("regularizer") if info else None
            raw = np.array(tensor)
            builtin = _is_builtin_regularizer(reg)
            out.append(AdditionalCapture(
                kind=kind,
                layer=layer.name,
                variable=None,
                index=index(kind, layer),
                regularizer=type(reg).__name__ if reg is not None else None,
                config=_reg_config(reg),
                builtin=builtin,
                source_tensor=info.get("source") if info else None,
                raw=raw,
                keras_value=_keras_additional(raw),
                call_user=(functools.partial(_call_regularizer, reg, info.get("source_tensor"))
                           if reg is not None and not builtin else None),
                normalised_by_batch=kind == "activity_regularizer" and normalised,
                origin=(code_origin(layer) if kind == "add_loss"
                        else code_origin(reg) if reg is not None and not builtin else None),
            ))
        for layer, c in callables:
            raw = np.array(c())
            fn = getattr(c, "args", None)
            user_fn = fn[0] if fn else c
            out.append(AdditionalCapture(
                kind="add_loss", layer=layer.name, variable=None, index=index("add_loss", layer),
                regularizer=None, config=None, builtin=False, source_tensor=None, raw=raw,
                keras_value=_keras_additional(raw), origin=code_origin(user_fn),
            ))
        for layer, var, reg, c in regs:
            raw = np.array(c())
            builtin = _is_builtin_regularizer(reg)
            out.append(AdditionalCapture(
                kind="weight_regularizer",
                layer=layer.name,
                variable=f"{layer.name}/{_short_var_name(var)}",
                index=0,
                regularizer=type(reg).__name__ if reg is not None else None,
                config=_reg_config(reg),
                builtin=builtin,
                source_tensor=np.array(var),
                raw=raw,
                keras_value=_keras_additional(raw),
                call_user=None if builtin else functools.partial(_call_regularizer, reg, var),
                origin=None if builtin else code_origin(reg),
            ))
        return out

    def frozen_regularized_variables(self, model):
        """None for REGULARIZER_ON_FROZEN_WEIGHT: tf_keras counts frozen weights' regularizers
        (see `frozen_regularized_counted` and ENGINE_DIFF_FROZEN_REGULARIZER)."""
        return []

    def frozen_regularized_counted(self, model):
        """Paths of non-trainable variables whose regularizer tf_keras still puts in model.losses."""
        trainable = {id(v) for v in model.trainable_weights}
        _, _, regs = self._loss_entries(model)
        return [f"{layer.name}/{_short_var_name(v)}" for layer, v, _, _ in regs if id(v) not in trainable]

    # ------------------------------------------------------------ verification
    def verify_train_step(self, model, batch: Batch, sig: Signature) -> Verification:
        xs, ys, sw = self.packed_tensors(model, sig, batch)
        notes = []
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            return Verification(None, "the model has no optimizer (not compiled)", "eager", notes, True)
        swapped = None
        if not getattr(optimizer, "_built", False):
            # Building the user's optimizer would add state to their model:
            # a fresh copy of it takes the step instead.
            swapped = optimizer
            try:
                clone = type(optimizer).from_config(optimizer.get_config())
            except Exception as exc:
                return Verification(None, f"could not copy the optimizer: {_one_line(exc)}", "eager", notes, True)
            object.__setattr__(model, "optimizer", clone)
            notes.append("the optimizer was not built yet, so a fresh copy of it took the step")
        try:
            # The logged 'loss' is a Mean over the epoch so far: from zero it is this step's loss.
            for metric in _all_metrics(model):
                metric.reset_state()
            logs = model.train_step((xs, ys, sw))
            loss = logs.get("loss") if isinstance(logs, dict) else None
            if loss is None:
                return Verification(None, "train_step returned no 'loss' in its logs", "eager", notes, True)
            return Verification(float(np.array(loss)), None, "eager", notes, True)
        except Exception as exc:
            return Verification(None, _one_line(exc), "eager", notes, True)
        finally:
            if swapped is not None:
                object.__setattr__(model, "optimizer", swapped)

    # ------------------------------------------------------------ gradients
    def attribute_gradients(self, model, batch: Batch, sig: Signature, terms, limit: int,
                            total_gradient: Optional[dict] = None, capture: Optional[Capture] = None):
        """Per-term gradients of one taped training-mode forward pass (see Keras3Engine.attribute_gradients).

        `total_gradient` (what the real train_step applied) is accepted for the common interface and not
        used: every trunk-sharing term here gets its own backward pass.
        """
        tf = self.tf
        from lossmap import gradients as gmod

        xs, ys, sw = self.packed_tensors(model, sig, batch)
        variables = list(model.trainable_variables)
        owner = {}
        for layer in model._flatten_layers():
            for v in layer._trainable_weights:
                owner.setdefault(id(v), f"{layer.name}/{_short_var_name(v)}")
        paths = [owner.get(id(v), _short_var_name(v)) for v in variables]
        trainable = {id(v) for v in variables}
        with tf.GradientTape(persistent=True) as tape:
            y_pred = model(xs, training=True)
            tensors = []
            for e in self._compiled_entries(model, sig, ys, y_pred, sw):
                if e["loss"] is None or e["y_true"] is None:
                    continue
                value, _, _ = self._keras_loss_value(e["loss"], e["y_true"], e["y_pred"], e["sample_weight"])
                if e["weight"] is not None:
                    value = value * e["weight"]
                tensors.append(tf.reduce_sum(value))
            entries, callables, regs = self._loss_entries(model)
            tensors.extend(tf.reduce_sum(t) for _, t in entries)
            tensors.extend(tf.reduce_sum(c()) for _, c in callables)
            regularized = [(v, c) for _, v, _, c in regs if id(v) in trainable]
            reg_sum = tf.add_n([tf.cast(c(), "float32") for _, c in regularized]) if regularized else None
        if len(tensors) + len(regs) != len(terms):
            raise RuntimeError(f"gradient pass found {len(tensors) + len(regs)} terms, the inventory {len(terms)}")
        shared_terms = terms[: len(tensors)]
        reg_terms = [t for (_, v, _, _), t in zip(regs, terms[len(tensors):]) if id(v) in trainable]
        acc = gmod.Accumulator(paths)
        notes = []
        if len(regularized) < len(regs):
            notes.append("regularizers on non-trainable weights (which tf_keras still adds to the loss) "
                         "have no gradient and were left out of the attribution")
        try:
            for unit, members in gmod.plan_units(shared_terms, limit, notes):
                grads = tape.gradient([tensors[i] for i in members], variables)
                acc.add_shared(unit, {p: _dense_grad(tf, g) for p, g in zip(paths, grads)})
            if regularized:
                grads = tape.gradient(reg_sum, [v for v, _ in regularized])
                path_of = {id(v): p for v, p in zip(variables, paths)}
                for term, (v, _), g in zip(reg_terms, regularized, grads):
                    unit = gmod.Unit(term.id, term.id, term.kind, [term.id], False)
                    acc.add_local(unit, path_of[id(v)], _dense_grad(tf, g))
        finally:
            del tape
        return acc, notes

    # ------------------------------------------------------------ state
    def state(self, model) -> "ModelState":
        return ModelState(model)



def _tensor_name(t) -> str:
    name = getattr(t, "name", None) or "x"
    return name.split(":")[0]


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


def _builtin_fn_name(loss_obj) -> Optional[str]:
    from tf_keras.src.losses import Loss, LossFunctionWrapper

    return builtin_fn_name(loss_obj, Loss, LossFunctionWrapper, "tf_keras.src.losses", BUILTIN_LOSS_FUNCTIONS)


def _is_builtin_regularizer(reg) -> bool:
    return is_builtin_regularizer(reg, "tf_keras.src.regularizers", BUILTIN_REGULARIZERS)


def _elementwise_user_loss(loss_obj, y_t, y_p):
    """What `Loss.__call__` computes before reducing: the user's `call`, and the mask on its result."""
    values = loss_obj.call(y_t, y_p)
    return np.array(values), _np(getattr(values, "_keras_mask", None))


# ---------------------------------------------------------------- state snapshot
class ModelState(VariableSnapshot):
    """Every variable a forward pass or a train step can touch, by value (weights, BatchNorm
    statistics, optimizer variables including `iterations`, metric state, stateful RNG generators),
    and the Python op-seed counters of seeded layers."""

    def __init__(self, model):
        super().__init__(model, _stateful_variables(model))
        # backend.RandomGenerator with a user seed counts its legacy op seeds in Python (make_legacy_seed)
        self.seeds = [(g, g._seed) for g in _random_generators(model)]

    def restore(self):
        super().restore()
        for g, seed in self.seeds:
            g._seed = seed

    def identical(self) -> bool:
        return all(g._seed == seed for g, seed in self.seeds) and super().identical()


def _random_generators(model):
    from tf_keras.src.backend import RandomGenerator

    found, seen = [], set()
    for layer in model._flatten_layers():
        for value in list(vars(layer).values()):
            if isinstance(value, RandomGenerator) and id(value) not in seen and hasattr(value, "_seed"):
                seen.add(id(value))
                found.append(value)
    return found


def _stateful_variables(model):
    found, seen = [], set()

    def add(vs):
        for v in vs or ():
            if v is not None and id(v) not in seen and hasattr(v, "assign"):
                seen.add(id(v))
                found.append(v)

    add(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        opt_vars = getattr(optimizer, "variables", None)
        if callable(opt_vars) and not isinstance(opt_vars, (list, tuple)):
            opt_vars = opt_vars()
        add(list(opt_vars or ()))
        iterations = getattr(optimizer, "_iterations", None)
        add([iterations])
    for m in _all_metrics(model):
        add(m.variables)
    for layer in model._flatten_layers():
        gen = getattr(getattr(layer, "_random_generator", None), "_generator", None)
        if gen is not None and hasattr(gen, "state"):
            add([gen.state])
    return found


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
