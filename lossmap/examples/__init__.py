"""Bundled example models, built by factories (`lossmap explain lossmap.examples:multitask`).

Custom training code: `physics_informed` and `input_gradient` (train_step overrides, in pinn.py
and smoothness.py) and `custom_loop` (a hand-written step function with a global model and optimizer).

`multitask` has what users ask about: two heads with loss weights, L2 on the
kernels, an activity regularizer, a layer that calls `add_loss`, Dropout and
BatchNormalization. `dense_variational` (tf_keras + TensorFlow Probability) is
a Bayesian layer whose KL divergence arrives through `add_loss`.
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


def same_weights(seed=0):
    """`keras.utils.set_random_seed(seed)`: the same weights, hence the same numbers, every run. It also
    seeds TensorFlow whenever TensorFlow is installed, importing it: on another backend (JAX) the same
    seeds are set without that import (3 s of a 1 s start)."""
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    import random

    import numpy as np
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def multitask():
    same_weights(0)
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


def dense_variational():
    """A Bayesian regression head: TensorFlow Probability's `DenseVariational` on tf_keras.

    Its KL divergence (posterior against prior, estimated from the kernel drawn in
    this call, times `kl_weight` = 1 / training-set size) reaches the loss through
    `self.add_loss` inside TFP's `DenseVariational.call`. The kernel is sampled at
    every call: lossmap gives each pass the same draw by re-seeding TensorFlow.
    A factory, not an archive: the posterior and prior are lambdas that do not
    serialize safely.
    """
    import numpy as np

    try:
        import tensorflow as tf
        import tensorflow_probability as tfp
        import tf_keras
    except ImportError as exc:
        from lossmap.errors import UserError

        raise UserError("the dense_variational example needs TensorFlow Probability and tf_keras: "
                        "pip install 'lossmap[tfp]' (or pip install tensorflow-probability tf_keras)") from exc
    tfd = tfp.distributions
    n_train = 256  # kl_weight = 1 / the number of training examples (Blundell et al. 2015)
    softplus_inverse_1 = float(np.log(np.expm1(1.0)))

    def posterior(kernel_size, bias_size=0, dtype=None):
        n = kernel_size + bias_size
        return tf_keras.Sequential([
            tfp.layers.VariableLayer(
                2 * n, dtype=dtype, initializer=tf_keras.initializers.RandomNormal(stddev=0.3, seed=1)),
            tfp.layers.DistributionLambda(lambda t: tfd.Independent(
                tfd.Normal(loc=t[..., :n], scale=1e-5 + tf.nn.softplus(softplus_inverse_1 + t[..., n:])),
                reinterpreted_batch_ndims=1)),
        ], name="posterior")

    def prior(kernel_size, bias_size=0, dtype=None):
        n = kernel_size + bias_size
        return tf_keras.Sequential([
            tfp.layers.VariableLayer(n, dtype=dtype),
            tfp.layers.DistributionLambda(lambda t: tfd.Independent(
                tfd.Normal(loc=t, scale=1.0), reinterpreted_batch_ndims=1)),
        ], name="prior")

    tf_keras.utils.set_random_seed(0)  # the same weights, hence the same numbers, every run
    inputs = tf_keras.Input(shape=(4,), name="features")
    x = tf_keras.layers.Dense(8, activation="relu", kernel_regularizer=tf_keras.regularizers.L2(1e-3),
                              name="trunk")(inputs)
    outputs = tfp.layers.DenseVariational(1, posterior, prior, kl_weight=1.0 / n_train, name="bayes")(x)
    model = tf_keras.Model(inputs, outputs, name="dense_variational")
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-2), loss="mse")
    return model


def physics_informed():
    """A `train_step` override: data loss plus two physics terms on the input and the prediction."""
    from lossmap.examples.pinn import physics_informed as build

    return build()


def input_gradient():
    """A `train_step` override whose smoothness penalty is built from d(output)/d(input) (nested tapes)."""
    from lossmap.examples.smoothness import input_gradient as build

    return build()


# name -> (MODEL, --step), as `lossmap report --example NAME` runs it (lossmap.cli.EXAMPLES agrees)
EXAMPLES = {
    "multitask": ("lossmap.examples:multitask", None),
    "dense_variational": ("lossmap.examples:dense_variational", None),
    "physics_informed": ("lossmap.examples:physics_informed", None),
    "input_gradient": ("lossmap.examples:input_gradient", None),
    "custom_loop": (None, "lossmap.examples.custom_loop:train_step"),
}
