"""Models whose loss depends on the Keras 3 backend they train on, and one that does not (the learning site's
backends page; tests/backend_models.py). Each factory builds its model on whatever backend Keras runs.

    >>> model = saturated()                      # doctest: +SKIP
    >>> # lossmap report lossmap.examples.backend_differences:saturated --compare-backends

`saturated`: a softmax output whose probabilities saturate (large output weights): sparse crossentropy from
the cached logits (TensorFlow) and from the clipped probabilities (JAX, PyTorch) differ measurably.
`agreeing`: MSE, an L2 and an `add_loss`, which every backend computes alike.
`jax_only_penalty`: a `stateless_compute_loss` override adding a penalty, which only the JAX trainer calls
(tests/test_surprises.py and tests/torch_child.py check it on TensorFlow and PyTorch, where it is never called).
"""
import keras


def saturated():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(6, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01), name="hidden")(inputs)
    out = keras.layers.Dense(3, activation="softmax", name="kind",
                             kernel_initializer=keras.initializers.RandomNormal(stddev=40.0, seed=1))(h)
    model = keras.Model(inputs, out, name="saturated")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def agreeing():
    import keras

    class Penalty(keras.layers.Layer):
        def call(self, x):
            self.add_loss(0.1 * keras.ops.mean(keras.ops.square(x)))
            return x

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(5, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01), name="hidden")(inputs)
    h = Penalty(name="penalty")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h), name="agreeing")
    model.compile(optimizer="sgd", loss="mse")
    return model


class JaxOnlyPenalty(keras.Model):
    """Keras's loss plus 0.5 * mean(y_pred^2), added in `stateless_compute_loss`: only the JAX trainer calls it."""

    def stateless_compute_loss(self, trainable_variables, non_trainable_variables, metrics_variables,
                               x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss, variables = super().stateless_compute_loss(
            trainable_variables, non_trainable_variables, metrics_variables,
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        penalty = keras.ops.mean(keras.ops.square(y_pred))
        return loss + 0.5 * penalty, variables


def jax_only_penalty():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    model = JaxOnlyPenalty(inputs, keras.layers.Dense(2, name="out")(inputs), name="jax_only_penalty")
    model.compile(optimizer="sgd", loss="mse")
    return model
