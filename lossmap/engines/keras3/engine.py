"""Keras 3 (TensorFlow backend): where its training loss comes from.

The total is `Trainer.compute_loss`: `CompileLoss.__call__` (each output's
`Loss.__call__`, times its loss weight, summed) plus `ops.sum` of each entry of
`model.losses` (`Trainer._aggregate_additional_loss`), all added with `ops.sum`.

This file: the engine's identity, loading, `model_info`, the signature and
batch packing; the stages are in `capture.py`, `train_step.py`, `state.py`,
the NumPy mirror in `rules.py`, the report's anchors in `anchors.py` (notes in
`notes.py`) and the engine-difference citations and facts in `citations.py`.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import numpy as np

from lossmap.engines.base import Batch, Capture, OutputSpec, Signature, TensorSpec, Verification
from lossmap.engines.common.engine import KerasEngine
from lossmap.engines.common.helpers import explain_load_error, ignore_class_of, int_input_bound, one_line, pack
from lossmap.engines.keras3 import capture as _capture, state as _state, steps as _steps, train_step as _train_step
from lossmap.engines.keras3.rules import KERAS3
from lossmap.errors import UserError


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


class Keras3Engine(KerasEngine):
    """Keras 3 on the TensorFlow backend (see the module docstring)."""

    name = "keras3"
    label = "Keras 3"
    package = "keras"
    rules = KERAS3  # rules.py: Trainer.compute_loss and Loss.__call__ in NumPy
    steps_module = _steps  # steps.py: what lossmap.steps needs for custom training code
    # The backend's own stages (a backend's engine subclasses this one and sets its folder's modules):
    capture_module, train_step_module, state_module = _capture, _train_step, _state
    folder = "lossmap.engines.keras3"  # where anchors.py and citations.py are imported from, when needed

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
        return importlib.import_module(f"{self.folder}.anchors").anchors()

    @classmethod
    def citations(cls) -> dict:
        return importlib.import_module(f"{cls.folder}.citations").specs()

    def engine_facts(self, model, sig: Signature) -> dict:
        return importlib.import_module(f"{self.folder}.citations").facts(self, model, sig)

    # ------------------------------------------------------------ loading
    def load_archive(self, path: str, safe_mode: bool):
        keras = self.keras
        try:
            return keras.saving.load_model(path, safe_mode=safe_mode, compile=True)
        except Exception as exc:  # translated into one line for the user
            raise UserError(explain_load_error(path, exc)) from exc

    def model_info(self, model, source, saved_with):
        from lossmap.analysis import ModelInfo

        overridden = self.steps_module.overrides(model)  # against this backend's trainer
        return ModelInfo(
            source=source,
            name=model.name,
            engine=self.name,
            keras_version=self.version(),
            backend=self.backend(),
            saved_with=saved_with,
            compiled=bool(getattr(model, "compiled", False)),
            custom_train_step=overridden["train_step"] is not None,
            custom_compute_loss=overridden["compute_loss"] is not None,
        )

    # ------------------------------------------------------------ signature
    def signature(self, model) -> Signature:
        inputs, in_struct = self._input_specs(model)
        outputs, out_struct = self._output_specs(model, inputs)
        return Signature(inputs, in_struct, outputs, out_struct, int_input_bound=int_input_bound(model))

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
        # Keras's own output names: a Sequential keeps them on the functional model it builds inside
        names = list(getattr(model, "output_names", None) or
                     getattr(getattr(model, "_functional", None), "output_names", None) or [])
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
        specs = [OutputSpec(n, tuple(t.shape), str(t.dtype), loss_fn=fns.get(n, (None, None))[0],
                            ignore_class=fns.get(n, (None, None))[1]) for n, t in flat]
        return specs, kind

    def _loss_fn_by_output(self, model, kind, names, tensors):
        """{output: (built-in loss name, ignore_class)}, from Keras's own CompileLoss.build."""
        compile_loss = getattr(model, "_compile_loss", None)
        if compile_loss is None:
            return {}
        if not compile_loss.built:
            # build reads shapes only: zero-stride views of one zero, however large the outputs
            zeros = [np.broadcast_to(np.zeros((), t.dtype), [d or 1 for d in t.shape]) for t in tensors]
            y_pred = pack(kind, names, zeros)
            y_true = pack(kind, names, list(zeros))
            try:
                compile_loss.build(y_true, y_pred)
            except Exception as exc:
                raise UserError(f"the model's compiled loss does not fit its outputs: {one_line(exc)}") from exc
        out = {}
        for path, loss_fn, _, _ in compile_loss._flat_losses:
            out[_capture.output_name(path, kind, names)] = (_capture.builtin_fn_name(loss_fn), ignore_class_of(loss_fn))
        return out

    def pack_batch(self, model, sig: Signature, batch: Batch):
        xs = pack(sig.input_structure, [i.name for i in sig.inputs], [batch.x[i.name] for i in sig.inputs])
        onames = [o.name for o in sig.outputs]
        ys = pack(sig.output_structure, onames, [batch.y[n] for n in onames])
        sw = None
        if batch.sample_weight:
            sw = pack(sig.output_structure, onames, [batch.sample_weight.get(n) for n in onames])
        return xs, ys, sw

    # ------------------------------------------------------------ the stages
    def capture(self, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
        return self.capture_module.capture(self, model, batch, sig, keep_tape)

    def verify_train_step(self, model, batch: Batch, sig: Signature, record_gradient: bool = False) -> Verification:
        return self.train_step_module.verify_train_step(self, model, batch, sig, record_gradient)

    def begin_attribution(self, model, batch: Batch, sig: Signature, terms, limit: int,
                          capture: Optional[Capture] = None, derive: bool = True):
        return self.train_step_module.begin_attribution(self, model, batch, sig, terms, limit, capture, derive)


    def frozen_regularized_variables(self, model):
        return [v.path for v in model.non_trainable_weights if getattr(v, "regularizer", None) is not None]

    # ------------------------------------------------------------ state
    def state(self, model) -> _state.ModelState:
        return self.state_module.ModelState(model)
