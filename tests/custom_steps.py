"""Training steps written as users write them, one construct or mistake each (Keras 3).

Read by lossmap from this file's source: the line numbers the tests check are this file's.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, regularizers  # noqa: E402

mse = keras.losses.MeanSquaredError()
opt = keras.optimizers.SGD(learning_rate=0.1)
opt_a = keras.optimizers.Adam(learning_rate=0.01)
opt_b = keras.optimizers.Adam(learning_rate=0.001)
LAM = 0.25


def mlp(dropout=False, l2=1e-2):
    """4 -> 5 (tanh, L2 on the kernel) -> 2, built, not compiled."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input(shape=(4,), name="x")
    h = layers.Dense(5, activation="tanh", kernel_regularizer=regularizers.L2(l2) if l2 else None, name="hidden")(inputs)
    if dropout:
        h = layers.Dropout(0.5, seed=3, name="drop")(h)
    out = layers.Dense(2, name="out")(h)
    return keras.Model(inputs, out, name="mlp")


def mlp_dropout():
    return mlp(dropout=True)


def two_heads():
    keras.utils.set_random_seed(2)
    inputs = keras.Input(shape=(4,), name="x")
    trunk = layers.Dense(5, activation="tanh", name="trunk")(inputs)
    a = layers.Dense(1, name="head_a")(trunk)
    b = layers.Dense(1, name="head_b")(trunk)
    return keras.Model(inputs, layers.Concatenate(name="both")([a, b]), name="two_heads")


def step_adds_losses(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        data_loss = mse(y, pred)
        physics = tf.reduce_mean(tf.square(pred[:, 0] - x[:, 0]))
        loss = data_loss + LAM * physics + sum(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_ignores_losses(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss = mse(y, pred)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_adds_losses_when_present(model, x, y):
    """As Keras's training-loop guides write it: `model.losses` added in an `if`, which lossmap does not split."""
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss = mse(y, pred)
        if model.losses:
            loss = loss + tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_without_training_flag(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x)
        loss = mse(y, pred) + sum(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_numpy_penalty(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        data_loss = mse(y, pred)
        penalty = tf.constant(np.mean(pred.numpy() ** 2))
        loss = data_loss + 0.1 * penalty
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_penalty_outside_tape(model, x, y):
    penalty = tf.reduce_mean(tf.square(model(x, training=True)))
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss = mse(y, pred) + 0.1 * penalty
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_stop_gradient(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        frozen = tf.reduce_mean(tf.square(tf.stop_gradient(pred)))
        loss = mse(y, pred) + frozen
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_inputs_only(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        scale = tf.reduce_mean(tf.square(x - y[:, :1]))
        loss = mse(y, pred) + scale
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_logs_other_loss(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        data_loss = mse(y, pred)
        loss = data_loss + sum(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return {"loss": data_loss}


def step_loop(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss = 0.0
        for column in range(2):
            loss += tf.reduce_mean(tf.square(pred[:, column] - y[:, column]))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_two_optimizers(model, x, y):
    head_a = model.get_layer("head_a")
    head_b = model.get_layer("head_b")
    trunk = model.get_layer("trunk")
    vars_a = trunk.trainable_variables + head_a.trainable_variables
    vars_b = trunk.trainable_variables + head_b.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        pred = model(x, training=True)
        loss_a = tf.reduce_mean(tf.square(pred[:, 0] - y[:, 0]))
        loss_b = tf.reduce_mean(tf.square(pred[:, 1] - y[:, 1]))
    grads_a = tape.gradient(loss_a, vars_a)
    grads_b = tape.gradient(loss_b, vars_b)
    opt_a.apply_gradients(zip(grads_a, vars_a))
    opt_b.apply_gradients(zip(grads_b, vars_b))
    return {"loss_a": loss_a, "loss_b": loss_b}


def step_persistent_input_gradient(model, x, y):
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        pred = model(x, training=True)
        d_pred_dx = tape.gradient(pred, x)
        smooth = tf.reduce_mean(tf.square(d_pred_dx))
        loss = mse(y, pred) + 0.01 * smooth
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_input_gradient_outside(model, x, y):
    with tf.GradientTape() as inner:
        inner.watch(x)
        pred = model(x, training=True)
    d_pred_dx = inner.gradient(pred, x)
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        smooth = tf.reduce_mean(tf.square(d_pred_dx))
        loss = mse(y, pred) + 0.01 * smooth
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


def step_no_gradient(model, x, y):
    return mse(y, model(x, training=True))


@tf.function
def traced_step(model, x, y):
    with tf.GradientTape() as tape:
        loss = mse(y, model(x, training=True)) + sum(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


class PenalisedModel(keras.Model):
    """Overrides compute_loss only: Keras's own train_step differentiates what it returns."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        energy = keras.ops.mean(keras.ops.square(y_pred))
        return loss + 0.05 * energy


def penalised():
    keras.utils.set_random_seed(4)
    inputs = keras.Input(shape=(4,), name="x")
    h = layers.Dense(5, activation="tanh", kernel_regularizer=regularizers.L2(1e-2), name="hidden")(inputs)
    out = layers.Dense(2, name="out")(h)
    model = PenalisedModel(inputs, out, name="penalised")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype("float32"), rng.standard_normal((n, 2)).astype("float32")


def step_clipped(model, x, y):
    with tf.GradientTape() as tape:
        loss = mse(y, model(x, training=True)) + sum(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    grads = [tf.clip_by_norm(g, 1e-3) for g in grads]
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss


# a step whose source Python cannot give back (defined from a string): exit 2, it cannot be read
exec("def from_a_string(model, x, y):\n    return None\n")
