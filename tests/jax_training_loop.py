"""A training loop written as Keras's guide "Writing a training loop from scratch in JAX" writes it (for
`lossmap check --step tests/jax_training_loop.py:train_step` on JAX): a model, a loss object and an
optimizer at module level, `compute_loss_and_updates` differentiated by a module-level
`grad_fn = jax.value_and_grad(..., has_aux=True)`, and a jitted `train_step(state, data)` that applies the
gradients with `optimizer.stateless_apply` and returns the loss and the new state. The loss here adds a
smoothness penalty to the data loss; the model's L2 regularizer is in `model.losses`, which the loop never
reads (as in the guide). `train_step_with_metrics` is the guide's second form, whose state also carries a
metric's variables.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
from keras import layers, regularizers  # noqa: E402

keras.utils.set_random_seed(11)
inputs = keras.Input(shape=(4,), name="x")
hidden = layers.Dense(6, activation="tanh", kernel_regularizer=regularizers.L2(1e-2), name="hidden")(inputs)
model = keras.Model(inputs, layers.Dense(3, name="out")(hidden), name="loop_model")
loss_fn = keras.losses.MeanSquaredError()
optimizer = keras.optimizers.Adam(learning_rate=1e-3)
optimizer.build(model.trainable_variables)


def compute_loss_and_updates(trainable_variables, non_trainable_variables, x, y):
    y_pred, non_trainable_variables = model.stateless_call(trainable_variables, non_trainable_variables, x,
                                                           training=True)
    data_loss = loss_fn(y, y_pred)
    smooth = keras.ops.mean(keras.ops.square(y_pred[:, 1:] - y_pred[:, :-1]))
    loss = data_loss + 0.3 * smooth
    return loss, non_trainable_variables


grad_fn = jax.value_and_grad(compute_loss_and_updates, has_aux=True)


@jax.jit
def train_step(state, data):
    trainable_variables, non_trainable_variables, optimizer_variables = state
    x, y = data
    (loss, non_trainable_variables), grads = grad_fn(trainable_variables, non_trainable_variables, x, y)
    trainable_variables, optimizer_variables = optimizer.stateless_apply(
        optimizer_variables, grads, trainable_variables)
    return loss, (trainable_variables, non_trainable_variables, optimizer_variables)


train_mae = keras.metrics.MeanAbsoluteError()


@jax.jit
def train_step_with_metrics(state, data):
    """The guide's second form: the state carries the metric's variables, updated statelessly."""
    trainable_variables, non_trainable_variables, optimizer_variables, metric_variables = state
    x, y = data
    (loss, non_trainable_variables), grads = grad_fn(trainable_variables, non_trainable_variables, x, y)
    trainable_variables, optimizer_variables = optimizer.stateless_apply(
        optimizer_variables, grads, trainable_variables)
    y_pred, _ = model.stateless_call(trainable_variables, non_trainable_variables, x)
    metric_variables = train_mae.stateless_update_state(metric_variables, y, y_pred)
    return loss, (trainable_variables, non_trainable_variables, optimizer_variables, metric_variables)
