"""Small models for the backend tests (tests/test_backends_cli.py): factories `path.py:function`.

`saturated`: a softmax output whose probabilities saturate (large output weights), so that
sparse crossentropy from the cached logits (TensorFlow) and from the clipped probabilities (the
other backends) differ measurably. `agreeing`: MSE, an L2 and an add_loss, which every backend
computes alike. `jax_only_penalty`: a `stateless_compute_loss` override, which only the JAX trainer calls.
"""


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


def jax_only_penalty():
    """A `stateless_compute_loss` override adding a penalty: only the JAX trainer calls it."""
    import keras

    class JaxOnlyPenalty(keras.Model):
        def stateless_compute_loss(self, trainable_variables, non_trainable_variables, metrics_variables,
                                   x=None, y=None, y_pred=None, sample_weight=None, training=True):
            loss, variables = super().stateless_compute_loss(
                trainable_variables, non_trainable_variables, metrics_variables,
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
            penalty = keras.ops.mean(keras.ops.square(y_pred))
            return loss + 0.5 * penalty, variables

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    model = JaxOnlyPenalty(inputs, keras.layers.Dense(2, name="out")(inputs), name="jax_only_penalty")
    model.compile(optimizer="sgd", loss="mse")
    return model


def compute_loss(weights_npz, batch_npz, factory="saturated"):
    """What Keras's own compute_loss gives on the backend of this process, with these weights and this
    batch (keys w/<i>; x/x, y/<output>): the reference a backend's run is held to."""
    import keras
    import numpy as np

    model = globals()[factory]()
    w = np.load(weights_npz)
    model.set_weights([w[f"w/{i}"] for i in range(len(w.files))])
    b = np.load(batch_npz)
    x = b["x/x"]
    y = b[next(k for k in b.files if k.startswith("y/"))]
    pred = model(x, training=True)
    compiled = model.compute_loss(x=x, y=y, y_pred=pred) - sum(model.losses)
    return float(keras.ops.convert_to_numpy(compiled))


if __name__ == "__main__":
    import sys

    print(compute_loss(*sys.argv[1:]))
