"""Deep MLPs for the gradient-attribution benchmark: kernel L2 + activity L1 on every layer.

`lossmap check bench/deep_mlp.py:mlp_300` builds one with 300 regularized layers
(601 loss terms: 300 weight regularizers, 300 activity regularizers, one compiled loss).
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import layers, regularizers  # noqa: E402


def deep_mlp(depth: int, width: int = 16):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((width,), name="x")
    x = inputs
    for i in range(depth):
        x = layers.Dense(width, activation="tanh", name=f"dense_{i}",
                         kernel_regularizer=regularizers.L2(1e-4),
                         activity_regularizer=regularizers.L1(1e-5))(x)
    outputs = layers.Dense(1, name="out")(x)
    model = keras.Model(inputs, outputs, name=f"mlp_{depth}")
    model.compile(optimizer="adam", loss="mse")
    return model


def mlp_100():
    return deep_mlp(100)


def mlp_300():
    return deep_mlp(300)


def mlp_500():
    return deep_mlp(500)
