"""Two more ways to take d(output)/d(input) in a `train_step`, next to `input_gradient`'s nested tapes.

`PersistentTapeRegressor` takes the input gradient with the same persistent tape that
later differentiates the loss, inside its `with` block: the tape records that gradient's
computation, so the penalty trains the weights through the second-order path.
`OutsideTapeRegressor` takes it before the tape that differentiates the loss starts
recording: the penalty's value is right, but for that tape it is a constant.

    lossmap report lossmap.examples.input_gradient_tapes:persistent_tape
    lossmap report lossmap.examples.input_gradient_tapes:outside_tape
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from lossmap.examples.smoothness import SmoothRegressor  # noqa: E402


@keras.saving.register_keras_serializable(package="lossmap_examples")
class PersistentTapeRegressor(SmoothRegressor):
    def train_step(self, data):
        x, y = data
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y_pred = self(x, training=True)
            dy_dx = tape.gradient(y_pred, x)  # inside the block: the tape records this gradient too
            data_loss = self.compute_loss(x, y, y_pred)
            smoothness = tf.reduce_mean(tf.square(dy_dx))
            loss = data_loss + self.smoothness_weight * smoothness
        grads = tape.gradient(loss, self.trainable_variables)
        del tape
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss, "smoothness": smoothness}


@keras.saving.register_keras_serializable(package="lossmap_examples")
class OutsideTapeRegressor(SmoothRegressor):
    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as inner:
            inner.watch(x)
            y_first = self(x, training=True)
        dy_dx = inner.gradient(y_first, x)  # taken before `tape` starts recording
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            data_loss = self.compute_loss(x, y, y_pred)
            smoothness = tf.reduce_mean(tf.square(dy_dx))
            loss = data_loss + self.smoothness_weight * smoothness
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss, "smoothness": smoothness}


def _build(cls, name):
    keras.utils.set_random_seed(0)  # the same initial weights as input_gradient
    model = cls(smoothness_weight=0.01, name=name)
    model(keras.Input(shape=(4,), name="x"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def persistent_tape():
    return _build(PersistentTapeRegressor, "persistent_tape")


def outside_tape():
    return _build(OutsideTapeRegressor, "outside_tape")
