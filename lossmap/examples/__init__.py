"""Bundled example models, built by factories (`lossmap explain lossmap.examples:multitask`).

`multitask` has what users ask about: two heads with loss weights, L2 on the
kernels, an activity regularizer, a layer that calls `add_loss`, Dropout and
BatchNormalization.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import layers, ops, regularizers  # noqa: E402


@keras.saving.register_keras_serializable(package="lossmap_examples")
class ActivationPenalty(layers.Layer):
    """Passes its input through and adds `rate * mean(x^2)` to the loss, like a physics penalty."""

    def __init__(self, rate=0.01, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, x):
        self.add_loss(self.rate * ops.mean(ops.square(x)))
        return x

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


def multitask():
    keras.utils.set_random_seed(0)  # the same weights, hence the same numbers, every run
    inputs = keras.Input(shape=(6,), name="features")
    x = layers.Dense(16, activation="relu", kernel_regularizer=regularizers.L2(1e-3), name="trunk")(inputs)
    x = layers.BatchNormalization(name="norm")(x)
    x = layers.Dropout(0.2, seed=7, name="drop")(x)
    x = ActivationPenalty(0.05, name="penalty")(x)
    price = layers.Dense(1, kernel_regularizer=regularizers.L2(1e-3), name="price")(x)
    kind = layers.Dense(3, activation="softmax", activity_regularizer=regularizers.L2(1e-2), name="kind")(x)
    model = keras.Model(inputs, [price, kind], name="multitask")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"price": "mse", "kind": "sparse_categorical_crossentropy"},
        loss_weights={"price": 0.4, "kind": 0.6},
    )
    return model


EXAMPLES = {"multitask": multitask}
