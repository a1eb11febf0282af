"""The physics-informed step of `physics_informed`, with one term accidentally detached.

The constitutive law is evaluated in NumPy (`x_pred.numpy()`), a common way to reuse
an existing physics routine: the value is right, but TensorFlow records nothing of it,
so `loss_z` enters the total and trains no weight. Everything else is the same model.

    lossmap report lossmap.examples.physics_detached:physics_detached
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lossmap.examples.pinn import PhysicsInformedEncoder  # noqa: E402


@keras.saving.register_keras_serializable(package="lossmap_examples")
class DetachedPhysicsEncoder(PhysicsInformedEncoder):
    def train_step(self, data):
        z, x_true = data
        with tf.GradientTape() as tape:
            x_pred = self(z, training=True)
            data_loss = self.compute_loss(z, x_true, x_pred)
            loss_x = tf.reduce_mean(tf.square(x_pred[:, 0] + x_pred[:, 1] - z[:, 0]))
            residual = x_pred.numpy()[:, 1] - np.square(z.numpy()[:, 1])  # the NumPy physics routine
            loss_z = tf.reduce_mean(tf.square(residual))
            total = data_loss + self.a * loss_x + self.b * loss_z
        grads = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(total)
        return {"loss": total, "data_loss": data_loss, "loss_x": loss_x, "loss_z": loss_z}


def physics_detached():
    keras.utils.set_random_seed(0)  # the same initial weights as physics_informed
    model = DetachedPhysicsEncoder(a=0.5, b=0.1, name="physics_detached")
    model(keras.Input(shape=(3,), name="z"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model
