"""The `dense_variational` example's model in Keras 3 (TensorFlow Probability's layers need tf_keras).

`MeanFieldVariational` is `tfp.layers.DenseVariational` with that example's posterior and prior
written in Keras 3 ops: the kernel and bias are drawn from a diagonal normal posterior at every
call, and the KL divergence is estimated from that draw, `log q(w) - log p(w)`, times
`kl_weight`, and handed to `self.add_loss` inside `call`, as TFP does.

    lossmap report lossmap.examples.variational_keras3:dense_variational
"""
import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import layers, ops, regularizers  # noqa: E402

SOFTPLUS_INVERSE_1 = math.log(math.expm1(1.0))  # the posterior's scale starts at softplus(this) = 1
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@keras.saving.register_keras_serializable(package="lossmap_examples")
class MeanFieldVariational(layers.Layer):
    def __init__(self, units, kl_weight, **kwargs):
        super().__init__(**kwargs)
        self.units, self.kl_weight = units, kl_weight
        self.seed_generator = keras.random.SeedGenerator(7)

    def build(self, input_shape):
        self.n = (input_shape[-1] + 1) * self.units  # kernel and bias, one vector
        self.posterior = self.add_weight(shape=(2 * self.n,), name="posterior",
                                         initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1))
        self.prior_loc = self.add_weight(shape=(self.n,), name="prior_loc", initializer="zeros")

    def call(self, x):
        loc = self.posterior[: self.n]
        scale = 1e-5 + ops.softplus(SOFTPLUS_INVERSE_1 + self.posterior[self.n:])
        w = loc + scale * keras.random.normal((self.n,), seed=self.seed_generator)
        log_q = ops.sum(-0.5 * ops.square((w - loc) / scale) - ops.log(scale) - HALF_LOG_2PI)
        log_p = ops.sum(-0.5 * ops.square(w - self.prior_loc) - HALF_LOG_2PI)
        self.add_loss(self.kl_weight * (log_q - log_p))
        kernel = ops.reshape(w[: self.n - self.units], (-1, self.units))
        return ops.matmul(x, kernel) + w[self.n - self.units:]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "kl_weight": self.kl_weight}


def dense_variational():
    keras.utils.set_random_seed(0)  # the same weights, hence the same numbers, every run
    n_train = 256  # kl_weight = 1 / the number of training examples, as in the tf_keras example
    inputs = keras.Input(shape=(4,), name="features")
    x = layers.Dense(8, activation="relu", kernel_regularizer=regularizers.L2(1e-3), name="trunk")(inputs)
    outputs = MeanFieldVariational(1, kl_weight=1.0 / n_train, name="bayes")(x)
    model = keras.Model(inputs, outputs, name="dense_variational_keras3")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model
