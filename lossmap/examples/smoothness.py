"""A loss built from d(output)/d(input): a smoothness penalty taken with a nested tape.

The inner tape watches the input and gives `dy_dx`; the penalty on it is computed
inside the outer tape, so the outer tape records the inner gradient's computation and
the penalty trains the weights through the second-order path.

    lossmap report --example input_gradient
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402


@keras.saving.register_keras_serializable(package="lossmap_examples")
class SmoothRegressor(keras.Model):
    def __init__(self, smoothness_weight=0.01, **kwargs):
        super().__init__(**kwargs)
        self.smoothness_weight = smoothness_weight
        self.hidden = layers.Dense(16, activation="tanh", name="hidden")
        self.out = layers.Dense(1, name="out")

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            with tf.GradientTape() as inner:
                inner.watch(x)
                y_pred = self(x, training=True)
            dy_dx = inner.gradient(y_pred, x)
            data_loss = self.compute_loss(x, y, y_pred)
            smoothness = tf.reduce_mean(tf.square(dy_dx))
            loss = data_loss + self.smoothness_weight * smoothness
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss, "smoothness": smoothness}

    def get_config(self):
        return {**super().get_config(), "smoothness_weight": self.smoothness_weight}


def input_gradient():
    keras.utils.set_random_seed(0)
    model = SmoothRegressor(smoothness_weight=0.01, name="input_gradient")
    model(keras.Input(shape=(4,), name="x"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model
