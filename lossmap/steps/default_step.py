"""Keras's default training step, written out, for models that override only `compute_loss`.

Keras's own `train_step` runs the forward pass on a tape, calls `self.compute_loss`, takes
the gradient with respect to the trainable variables and applies it. When a model overrides
`compute_loss` alone, lossmap decomposes this function (whose `compute_loss` call expands into
the user's override) and verifies against the model's real `train_step`.
"""
from lossmap.engines import keras_backend

if keras_backend() == "torch":  # torch autograd, in the words of tf.GradientTape (keras3_torch/capture.py)
    from lossmap.engines.keras3_torch.capture import AUTOGRAD as tf
elif keras_backend() == "jax":  # the block replayed and differentiated with jax.vjp (keras3_jax/steps.py)
    from lossmap.engines.keras3_jax.steps import REPLAY as tf
else:
    import tensorflow as tf


def keras_train_step(model, x, y, sample_weight=None):
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x, y, y_pred, sample_weight)
    grads = tape.gradient(loss, model.trainable_variables)
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss
