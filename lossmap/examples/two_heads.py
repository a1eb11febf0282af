"""One shared trunk, two regression heads whose losses differ 100-fold in scale, trained four ways.

`summed`: one Adam on `loss_a + loss_b`. `two_optimizers`: one Adam per loss, each on the
trunk and its own head. `weighted`: one Adam on `w_a * loss_a + w_b * loss_b`. `pcgrad`:
one Adam on the two gradients after PCGrad's surgery (Yu et al. 2020: where they conflict on
the trunk, each is projected onto the other's normal plane). Each factory takes the model and
returns a training step with its own optimizer(s) in its closure.

    python -m lossmap.examples.two_heads                      # train all four, print the last losses
    lossmap explain --step lossmap.examples.two_heads:example_two_optimizers
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

LEARNING_RATE = 1e-2
SCALE_A, SCALE_B = 10.0, 0.1  # the two targets' sizes, 100 times apart


def dataset(n=256, seed=0):
    """Inputs and both targets: two smooth functions of the same 8 features, at different scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype("float32")
    u, v = rng.standard_normal((8, 1)), rng.standard_normal((8, 1))
    a = SCALE_A * np.tanh(x @ u / 2)
    b = SCALE_B * np.sin(x @ v / 2)
    return x, {"a": a.astype("float32"), "b": b.astype("float32")}


def build_model(seed=0):
    keras.utils.set_random_seed(seed)  # every method starts from the same weights
    inputs = keras.Input(shape=(8,), name="x")
    h = layers.Dense(32, activation="tanh", name="trunk")(inputs)
    a = layers.Dense(1, name="head_a")(h)
    b = layers.Dense(1, name="head_b")(h)
    return keras.Model(inputs, {"a": a, "b": b}, name="two_heads")


def _variables(model):
    """(trunk, head_a, head_b) trainable variables."""
    return tuple(model.get_layer(name).trainable_variables for name in ("trunk", "head_a", "head_b"))


def summed(model):
    optimizer = keras.optimizers.Adam(LEARNING_RATE)

    def train_step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss_a = tf.reduce_mean(tf.square(y["a"] - pred["a"]))
            loss_b = tf.reduce_mean(tf.square(y["b"] - pred["b"]))
            loss = loss_a + loss_b
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss_a": loss_a, "loss_b": loss_b}

    return train_step


def weighted(model, w_a=1.0, w_b=10.0):
    optimizer = keras.optimizers.Adam(LEARNING_RATE)

    def train_step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss_a = tf.reduce_mean(tf.square(y["a"] - pred["a"]))
            loss_b = tf.reduce_mean(tf.square(y["b"] - pred["b"]))
            loss = w_a * loss_a + w_b * loss_b
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return {"loss_a": loss_a, "loss_b": loss_b}

    return train_step


def two_optimizers(model):
    trunk, head_a, head_b = _variables(model)
    vars_a, vars_b = trunk + head_a, trunk + head_b
    optimizer_a = keras.optimizers.Adam(LEARNING_RATE)
    optimizer_b = keras.optimizers.Adam(LEARNING_RATE)

    def train_step(x, y):
        with tf.GradientTape(persistent=True) as tape:
            pred = model(x, training=True)
            loss_a = tf.reduce_mean(tf.square(y["a"] - pred["a"]))
            loss_b = tf.reduce_mean(tf.square(y["b"] - pred["b"]))
        grads_a = tape.gradient(loss_a, vars_a)
        grads_b = tape.gradient(loss_b, vars_b)
        optimizer_a.apply_gradients(zip(grads_a, vars_a))
        optimizer_b.apply_gradients(zip(grads_b, vars_b))
        return {"loss_a": loss_a, "loss_b": loss_b}

    return train_step


def _project(g, onto):
    """g minus its component along `onto` when the two conflict (negative dot product): PCGrad."""
    dot = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(g, onto)])
    norm2 = tf.add_n([tf.reduce_sum(b * b) for b in onto])
    coef = tf.minimum(dot, 0.0) / (norm2 + 1e-12)
    return [a - coef * b for a, b in zip(g, onto)]


def pcgrad(model):
    trunk, head_a, head_b = _variables(model)
    optimizer = keras.optimizers.Adam(LEARNING_RATE)

    def train_step(x, y):
        with tf.GradientTape(persistent=True) as tape:
            pred = model(x, training=True)
            loss_a = tf.reduce_mean(tf.square(y["a"] - pred["a"]))
            loss_b = tf.reduce_mean(tf.square(y["b"] - pred["b"]))
        g_a = tape.gradient(loss_a, trunk)
        g_b = tape.gradient(loss_b, trunk)
        shared = [p + q for p, q in zip(_project(g_a, g_b), _project(g_b, g_a))]
        heads = tape.gradient(loss_a, head_a) + tape.gradient(loss_b, head_b)
        optimizer.apply_gradients(zip(shared + heads, trunk + head_a + head_b))
        return {"loss_a": loss_a, "loss_b": loss_b}

    return train_step


METHODS = {"summed": summed, "two_optimizers": two_optimizers, "weighted": weighted, "pcgrad": pcgrad}


def train(make_step, steps=300, seed=0, **kwargs):
    """Full-batch training; per step: both losses and the RMS of the update to each trunk variable."""
    x, y = dataset(seed=seed)
    model = build_model(seed)
    step = tf.function(make_step(model, **kwargs))
    trunk = _variables(model)[0]
    history = {"loss_a": [], "loss_b": [], "trunk_update": {v.path: [] for v in trunk}, "first_update": {}}
    for i in range(steps):
        before = [v.numpy() for v in trunk]
        logs = step(x, y)
        for v, old in zip(trunk, before):
            change = v.numpy() - old
            history["trunk_update"][v.path].append(float(np.sqrt(np.mean(change**2))))
            if i == 0:
                history["first_update"][v.path] = np.abs(change)
        history["loss_a"].append(float(logs["loss_a"]))
        history["loss_b"].append(float(logs["loss_b"]))
    return history


# The steps `lossmap --step` explains: one model each, reached through the closure.
example_summed = summed(build_model())
example_two_optimizers = two_optimizers(build_model())
example_pcgrad = pcgrad(build_model())


if __name__ == "__main__":
    for name, make in METHODS.items():
        h = train(make)
        print(f"{name:15s} loss_a {h['loss_a'][-1]:.5g}  loss_b {h['loss_b'][-1]:.5g}")
