"""A physics-informed encoder: a `train_step` override that adds two physics terms to the data loss.

The network maps measurements `z` to a state `x`. Besides the data loss on `x`, the
step penalises two known relations between the input and the prediction, computed
outside the network: a conservation law (`x0 + x1 = z0`) and a constitutive law
(`x1 = z1 ** 2`). The total it differentiates is `data_loss + a * loss_x + b * loss_z`.

    lossmap report --example physics_informed
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, regularizers  # noqa: E402


@keras.saving.register_keras_serializable(package="lossmap_examples")
class PhysicsInformedEncoder(keras.Model):
    def __init__(self, a=0.5, b=0.1, **kwargs):
        super().__init__(**kwargs)
        self.a = a
        self.b = b
        self.hidden = layers.Dense(32, activation="tanh", kernel_regularizer=regularizers.L2(1e-4), name="hidden")
        self.head = layers.Dense(2, name="state")

    def call(self, z):
        return self.head(self.hidden(z))

    def train_step(self, data):
        z, x_true = data
        with tf.GradientTape() as tape:
            x_pred = self(z, training=True)
            data_loss = self.compute_loss(z, x_true, x_pred)
            loss_x = tf.reduce_mean(tf.square(x_pred[:, 0] + x_pred[:, 1] - z[:, 0]))
            loss_z = tf.reduce_mean(tf.square(x_pred[:, 1] - tf.square(z[:, 1])))
            total = data_loss + self.a * loss_x + self.b * loss_z
        grads = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(total)
        return {"loss": total, "data_loss": data_loss, "loss_x": loss_x, "loss_z": loss_z}

    def get_config(self):
        return {**super().get_config(), "a": self.a, "b": self.b}


def physics_informed():
    keras.utils.set_random_seed(0)  # the same weights, hence the same numbers, every run
    model = PhysicsInformedEncoder(a=0.5, b=0.1, name="physics_informed")
    model(keras.Input(shape=(3,), name="z"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model
