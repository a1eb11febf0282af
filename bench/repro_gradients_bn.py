"""Minimal repro for bench/README.md, bug 1: GRADIENTS_NOT_VERIFIED on a correct decomposition.

A small BatchNorm network (4 x Conv2D + BatchNormalization, ~30 k parameters) whose train_step
adds two physics terms to compute_loss, as bench_step.py's PhysicsResNet does. The loss verifies;
the per-variable gradient check does not: a conv bias right before BatchNormalization has an
exactly-zero true gradient, so both sides are float32 rounding noise (with_bias fails at any
--rtol tried, 1e-5 to 1e-3), and BatchNorm's backward alone exceeds the default float32 rtol 1e-5
(without_bias fails at 1e-5, passes at 1e-4).

    PYTHONPATH=. python -m lossmap check bench/repro_gradients_bn.py:with_bias --no-gradients
    PYTHONPATH=. python -m lossmap check bench/repro_gradients_bn.py:without_bias --no-gradients [--rtol 1e-4]
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402


class Physics(keras.Model):
    def __init__(self, use_bias=True, **kw):
        super().__init__(**kw)
        self.convs = [layers.Conv2D(32, 3, padding="same", use_bias=use_bias, name=f"c{i}") for i in range(4)]
        self.bns = [layers.BatchNormalization(name=f"bn{i}") for i in range(4)]
        self.pool = layers.GlobalAveragePooling2D()
        self.head = layers.Dense(3, name="state")

    def call(self, inputs):
        x = inputs
        for c, b in zip(self.convs, self.bns):
            x = tf.nn.relu(b(c(x)))
        return self.head(self.pool(x))

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            pred = self(x, training=True)
            data_loss = self.compute_loss(x, y, pred)
            loss_mass = tf.reduce_mean(tf.square(pred[:, 0] - tf.reduce_mean(x[:, :, :, 0], axis=[1, 2])))
            loss_state = tf.reduce_mean(tf.square(2.0 * pred[:, 0] * pred[:, 2] - tf.square(pred[:, 1])))
            total = data_loss + 0.5 * loss_mass + 0.1 * loss_state
        grads = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": total}


def build(use_bias=True):
    keras.utils.set_random_seed(0)
    m = Physics(use_bias=use_bias, name="physics")
    m(keras.Input(shape=(32, 32, 3)))
    m.compile(optimizer="adam", loss="mse")
    return m


def with_bias():
    return build(True)


def without_bias():
    return build(False)
