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

This file: the engine's identity, loading, `model_info`, the signature and
batch packing; the stages are in `capture.py`, `train_step.py`, `state.py`,
the NumPy reproduction in `rules.py`, the report's anchors in `anchors.py`
(notes in `notes.py`) and the engine-difference citations and facts in
`citations.py`.
"""
from __future__ import annotations

import os
from typing import Optional

from lossmap.engines.base import Batch, Capture, OutputSpec, Signature, TensorSpec, Verification
from lossmap.engines.common.engine import KerasEngine
from lossmap.engines.common.helpers import explain_load_error, ignore_class_of, int_input_bound, one_line, pack
from lossmap.engines.tf_keras import capture as _capture, state as _state, steps as _steps, train_step as _train_step
from lossmap.engines.tf_keras.rules import TF_KERAS
from lossmap.errors import UserError

INSTALL_HINT = "pip install tf_keras (or pip install 'lossmap[legacy]')"


def _tf_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tf_keras
    except ImportError as exc:
        raise UserError(f"the tf_keras engine needs the tf_keras package, which is not installed: "
                        f"{INSTALL_HINT}") from exc
    return tf_keras


class TfKerasEngine(KerasEngine):
    """tf_keras 2.x, the legacy Keras (see the module docstring); making one needs tf_keras installed."""

    name = "tf_keras"
    label = "tf_keras"
    package = "tf_keras"
    engine_diffs_by_default = True  # a tf_keras model is told where Keras 3 would differ
    rules = TF_KERAS  # rules.py: LossesContainer.__call__ and Loss.__call__ in NumPy
    steps_module = _steps  # steps.py: what lossmap.steps needs for custom training code

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
        from lossmap.engines.tf_keras import anchors

        return anchors.anchors()

    @classmethod
    def citations(cls) -> dict:
        from lossmap.engines.tf_keras import citations

        return citations.specs()

    def engine_facts(self, model, sig: Signature) -> dict:
        from lossmap.engines.tf_keras import citations

        return citations.facts(self, model, sig)

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
            raise UserError(explain_load_error(path, exc).replace("as a Keras 3 model", "with tf_keras")) from exc

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
        return Signature(inputs, in_struct, outputs, out_struct, int_input_bound=int_input_bound(model))

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
            struct = model(pack(in_struct, [i.name for i in inputs], zeros), training=False)
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
            fn, ignore = fns[i] if i < len(fns) else (None, None)
            specs.append(OutputSpec(spec.name, spec.shape, spec.dtype, loss_fn=fn, ignore_class=ignore))
        return specs, kind

    def _loss_fn_by_output(self, model, tensors, kind, names):
        """(built-in loss name, ignore_class) for each flat output, from tf_keras's own LossesContainer.build."""
        container = getattr(model, "compiled_loss", None)
        if container is None:
            return []
        if not container._built:
            zeros = [self.tf.zeros([d or 1 for d in t.shape], t.dtype) for t in tensors]
            try:
                container.build(pack(kind, names, zeros))
            except Exception as exc:
                raise UserError(f"the model's compiled loss does not fit its outputs: {one_line(exc)}") from exc
        return [(_capture.builtin_fn_name(loss), ignore_class_of(loss)) if loss is not None else (None, None)
                for loss in container._losses]

    def pack_batch(self, model, sig: Signature, batch: Batch):
        xs = pack(sig.input_structure, [i.name for i in sig.inputs], [batch.x[i.name] for i in sig.inputs])
        onames = [o.name for o in sig.outputs]
        ys = None
        if all(n in batch.y for n in onames):
            ys = pack(sig.output_structure, onames, [batch.y[n] for n in onames])
        elif batch.y:
            ys = pack(sig.output_structure, onames, [batch.y.get(n) for n in onames])
        sw = None
        if batch.sample_weight:
            sw = pack(sig.output_structure, onames, [batch.sample_weight.get(n) for n in onames])
        return xs, ys, sw

    def _tensors(self, structure):
        tf = self.tf
        return tf.nest.map_structure(lambda a: None if a is None else tf.convert_to_tensor(a), structure)

    def packed_tensors(self, model, sig, batch):
        xs, ys, sw = self.pack_batch(model, sig, batch)
        return self._tensors(xs), self._tensors(ys), self._tensors(sw)

    # ------------------------------------------------------------ the stages
    def capture(self, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
        # keep_tape is an optimisation this engine does not take: attribute_gradients runs its own pass
        return _capture.capture(self, model, batch, sig)

    def verify_train_step(self, model, batch: Batch, sig: Signature, record_gradient: bool = False) -> Verification:
        return _train_step.verify_train_step(self, model, batch, sig, record_gradient)

    def begin_attribution(self, model, batch: Batch, sig: Signature, terms, limit: int,
                          capture: Optional[Capture] = None, derive: bool = True):
        return _train_step.begin_attribution(self, model, batch, sig, terms, limit, capture, derive)

    def attribute_gradients(self, model, batch: Batch, sig: Signature, terms, limit: int,
                            total_gradient: Optional[dict] = None, capture: Optional[Capture] = None):
        return _train_step.attribute_gradients(self, model, batch, sig, terms, limit, total_gradient, capture)

    def frozen_regularized_variables(self, model):
        """None for REGULARIZER_ON_FROZEN_WEIGHT: tf_keras counts frozen weights' regularizers
        (see `frozen_regularized_counted` and ENGINE_DIFF_FROZEN_REGULARIZER)."""
        return []

    def frozen_regularized_counted(self, model):
        """Paths of non-trainable variables whose regularizer tf_keras still puts in model.losses."""
        trainable = {id(v) for v in model.trainable_weights}
        _, _, regs = _capture.loss_entries(model)
        return [f"{layer.name}/{_capture.short_var_name(v)}" for layer, v, _, _ in regs if id(v) not in trainable]

    # ------------------------------------------------------------ state
    def state(self, model) -> _state.ModelState:
        return _state.ModelState(model)


def _tensor_name(t) -> str:
    name = getattr(t, "name", None) or "x"
    return name.split(":")[0]
