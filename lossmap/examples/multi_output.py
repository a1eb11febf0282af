"""How Keras pairs outputs with losses and loss weights, and what a training step logs per output.

`by_name()`: two outputs, `loss` and `loss_weights` given as dicts keyed by output name.
`by_position()`: the same model with lists, in the order of the model's outputs.
`dict_outputs()`: a model whose outputs are a dict written as {"zeta": ..., "alpha": ...} and
whose losses are a list in that written order: Keras flattens a dict in sorted-key order.
`logs(model, x, y)`: what one `train_on_batch` returns.

    lossmap report lossmap.examples.multi_output:by_name
    lossmap report lossmap.examples.multi_output:dict_outputs
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import layers, regularizers  # noqa: E402


def _two_heads(name):
    keras.utils.set_random_seed(0)  # the same weights, hence the same numbers, every run
    inputs = keras.Input(shape=(4,), name="features")
    h = layers.Dense(8, activation="relu", kernel_regularizer=regularizers.L2(1e-2), name="trunk")(inputs)
    price = layers.Dense(1, name="price")(h)
    kind = layers.Dense(3, activation="softmax", name="kind")(h)
    return keras.Model(inputs, [price, kind], name=name)


def by_name():
    model = _two_heads("by_name")
    model.compile(optimizer="adam", loss={"price": "mse", "kind": "sparse_categorical_crossentropy"},
                  loss_weights={"price": 0.4, "kind": 0.6})
    return model


def by_position():
    model = _two_heads("by_position")
    model.compile(optimizer="adam", loss=["mse", "sparse_categorical_crossentropy"], loss_weights=[0.4, 0.6])
    return model


def dict_outputs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,), name="features")
    h = layers.Dense(8, activation="relu", name="trunk")(inputs)
    outputs = {"zeta": layers.Dense(1, name="zeta_head")(h),  # a regression output, written first
               "alpha": layers.Dense(3, activation="softmax", name="alpha_head")(h)}
    model = keras.Model(inputs, outputs, name="dict_outputs")
    model.compile(optimizer="adam", loss=["mse", "sparse_categorical_crossentropy"], loss_weights=[0.3, 0.7])
    return model


def logs(model, x, y):
    """The logs of one training step on (x, y), as `fit` would show them."""
    return {name: float(value) for name, value in model.train_on_batch(x, y, return_dict=True).items()}
