"""Keras 3 on JAX: the training-mode forward pass that captures every term, and the terms as a function.

The capture is the TensorFlow engine's (`lossmap.engines.keras3.capture`): one eager pass of the
model with the loss probes, Keras's own `_compute_loss` on it, each compiled loss and each entry of
`model.losses` as NumPy. JAX records no tape: `keep_tape` is ignored, and the gradient stage
differentiates `term_function` (the same terms, from the trainable variables' values, through
`stateless_call` as `JAXTrainer.compute_loss_and_updates` runs the model) with `jax.vjp`.
"""
from __future__ import annotations

import contextlib
import sys

from lossmap.engines.base import Batch, Capture, Signature
from lossmap.engines.keras3 import capture as _keras3


def capture(engine, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
    """One training-mode forward pass and everything the terms need from it (no recorded pass).

    A softmax/sigmoid may leave `_keras_logits` on its output, but the JAX backend's crossentropies
    never read them: the captured logits are dropped, as Keras drops them here.
    """
    with tensorflow_left_out():
        result = _keras3._capture(engine, model, batch, sig, None)
    for c in result.compiled:
        c.logits = None
    return result


@contextlib.contextmanager
def tensorflow_left_out():
    """Keras's `tf.available` answered False while TensorFlow is not imported.

    Keras asks it where an object might be a TensorFlow one (`serialize_keras_object`, which a
    loss's `get_config` calls, checks for a `tf.TensorShape`), and answering imports TensorFlow
    (3 s). While TensorFlow is not imported no object is a TensorFlow one, so False is the same
    answer; Keras asks again afterwards.
    """
    from keras.src.utils import module_utils

    lazy = module_utils.tensorflow
    if "tensorflow" in sys.modules or lazy._available is not None:
        yield
        return
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = None


def compiled_targets(engine, model, ys, y_pred, sw) -> list:
    """Each compiled loss times its weight, summed to a scalar, in `CompileLoss._flat_losses` order."""
    ops = engine.keras.ops
    out = []
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is not None:
        if not compile_loss.built:
            compile_loss.build(ys, y_pred)
        for path, loss_fn, weight, _ in compile_loss._flat_losses:
            y_t, y_p, s_w = _keras3._per_output(path, ys, y_pred, sw)
            value = ops.cast(loss_fn(y_t, y_p, s_w), compile_loss.dtype)
            if weight is not None:
                value = ops.multiply(value, weight)
            out.append(ops.sum(value))
    return out


def term_function(engine, model, xs, ys, sw):
    """(f, trainable variables, regularized ones): `f(trainable values)` is the vector of the trunk-sharing terms'
    contributions (compiled, then each add_loss and activity entry of `model.losses`), in inventory
    order, computed with `stateless_call` from the non-trainable variables' current values."""
    import jax.numpy as jnp
    from keras.src import backend

    trainable = list(model.trainable_variables)
    non_trainable = [v.value for v in model.non_trainable_variables]
    regularized = [v for v in trainable if getattr(v, "regularizer", None) is not None]
    kwargs = {"training": True} if model._call_has_training_arg else {}

    def f(values):
        y_pred, _, losses = model.stateless_call(values, non_trainable, xs, return_losses=True, **kwargs)
        mapping = list(zip(trainable, values)) + list(zip(model.non_trainable_variables, non_trainable))
        with backend.StatelessScope(state_mapping=mapping):
            tensors = compiled_targets(engine, model, ys, y_pred, sw)
            # model.losses in the scope: the layers' add_loss entries, then one per regularized variable
            layer_losses = losses[: len(losses) - len(regularized)]
            tensors += [model._aggregate_additional_loss(t) for t in layer_losses]
        return jnp.stack([jnp.asarray(t, jnp.float32) for t in tensors]) if tensors else jnp.zeros((0,))

    return f, trainable, regularized
