"""A model with each kind of entry `model.losses` can hold, and what a hand-written loop does with them.

`regularized()`: an L2 weight regularizer on `dense_1`'s kernel, an L1 activity regularizer on
`dense_2`'s output, and a layer that calls `add_loss`. `when_filled()` reads `model.losses` before
the first call, after a call, after a second call and after the kernel changed.
`train_step` is the "training loop from scratch" step that forgets `model.losses`.

    lossmap report lossmap.examples.regularized:regularized
    lossmap report --step lossmap.examples.regularized:train_step
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, regularizers  # noqa: E402

from lossmap.examples import ActivationPenalty  # noqa: E402  (a layer that calls add_loss)


def regularized():
    keras.utils.set_random_seed(0)  # the same weights, hence the same numbers, every run
    inputs = keras.Input(shape=(6,), name="features")
    x = layers.Dense(16, activation="relu", kernel_regularizer=regularizers.L2(1e-3), name="dense_1")(inputs)
    x = layers.Dense(16, activation="relu", activity_regularizer=regularizers.L1(1e-3), name="dense_2")(x)
    x = ActivationPenalty(0.01, name="penalty")(x)
    outputs = layers.Dense(1, name="out")(x)
    model = keras.Model(inputs, outputs, name="regularized")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def when_filled():
    """What `model.losses` holds at each moment, as (moment, [float(entry) ...]) pairs."""
    model = regularized()
    x = np.random.default_rng(0).standard_normal((8, 6)).astype("float32")
    seen = [("before any call", [float(v) for v in model.losses])]
    model(x, training=True)
    seen.append(("after a call", [float(v) for v in model.losses]))
    model(2 * x, training=True)
    seen.append(("after a second call, on 2 * x", [float(v) for v in model.losses]))
    kernel = model.get_layer("dense_1").kernel
    kernel.assign(2 * kernel)
    seen.append(("after doubling dense_1's kernel, no call", [float(v) for v in model.losses]))
    return seen


def reach_of_l2():
    """Differentiate `model.losses` read under a tape: which variables get a gradient."""
    model = regularized()
    with tf.GradientTape() as tape:
        l2 = model.losses[0]  # before any call: the only entry is dense_1's kernel L2
    grads = tape.gradient(l2, model.trainable_variables)
    return {v.path: g is not None for v, g in zip(model.trainable_variables, grads)}


model = regularized()
optimizer = keras.optimizers.Adam(1e-3)
loss_fn = keras.losses.MeanSquaredError()


def train_step(x, y):
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss = loss_fn(y, pred)  # model.losses forgotten: no L2, no L1, no penalty
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss
