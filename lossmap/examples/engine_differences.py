"""Models whose loss tf_keras 2.x and Keras 3 assemble differently; each factory takes the Keras module.

`differences(keras)`: two weighted outputs, an activity regularizer, an L2 on a frozen layer, a
binary crossentropy on probabilities that carry no logits (`hard_sigmoid`), and a SUM-reduced
loss: five of the engine differences lossmap knows in one model.
`non_scalar_add_loss(keras)`: a layer that passes a per-sample tensor to `add_loss`.
`short_loss_weights(keras)`: three outputs and two loss weights (`short_loss_weights_tf_keras()` for `lossmap report`).

    lossmap report lossmap.examples.engine_differences:differences --compare-engines
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def differences(keras):
    keras.utils.set_random_seed(0)
    layers, regularizers = keras.layers, keras.regularizers
    inputs = keras.Input(shape=(6,), name="features")
    x = layers.Dense(8, activation="relu", activity_regularizer=regularizers.L1(1e-2), name="trunk")(inputs)
    frozen = layers.Dense(8, activation="relu", kernel_regularizer=regularizers.L2(1e-2), name="pretrained")
    frozen.trainable = False
    x = frozen(x)
    score = layers.Dense(1, activation="hard_sigmoid", name="score")(x)
    value = layers.Dense(1, name="value")(x)
    model = keras.Model(inputs, [score, value], name="engine_differences")
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss={"score": "binary_crossentropy", "value": keras.losses.MeanSquaredError(reduction="sum")},
                  loss_weights={"score": 0.5, "value": 2.0})
    return model


def non_scalar_add_loss(keras):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    layers = keras.layers

    class PerSamplePenalty(layers.Layer):
        def call(self, x):
            self.add_loss(0.01 * tf.reduce_sum(tf.square(x), axis=-1))  # one value per sample, not a scalar
            return x

    inputs = keras.Input(shape=(6,), name="features")
    x = layers.Dense(8, activation="relu", name="trunk")(inputs)
    x = PerSamplePenalty(name="penalty")(x)
    model = keras.Model(inputs, layers.Dense(1, name="out")(x), name="non_scalar_add_loss")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def short_loss_weights(keras):
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input(shape=(6,), name="features")
    x = layers.Dense(8, activation="relu", name="trunk")(inputs)
    outputs = [layers.Dense(1, name=name)(x) for name in ("first", "second", "third")]
    model = keras.Model(inputs, outputs, name="short_loss_weights")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", loss_weights=[1.0, 0.5])
    return model


def short_loss_weights_tf_keras():
    """`short_loss_weights` in tf_keras, the engine that accepts it (Keras 3 raises)."""
    import tf_keras

    return short_loss_weights(tf_keras)
