"""Property test on real steps: train_step overrides generated from a small grammar of sums of
weighted terms, run through lossmap on a real Keras 3 model.

For each generated step: the decomposition verifies (the terms add up to what the step
differentiates, and their gradients to what it applies), every custom term's value is its
quantity recomputed with NumPy from the model's weights, and the summed weight of every
quantity equals the target's derivative with respect to it, computed independently by
evaluating the generated expression as a Python function of the quantities (the target is
linear in them).
"""
import random
import textwrap

import numpy as np
import pytest

# quantity -> (TensorFlow source inside the step, NumPy of (pred, x, y))
QUANTITIES = {
    "q0": ("tf.reduce_mean(tf.square(pred[:, 0] - y[:, 0]))", lambda p, x, y: np.mean((p[:, 0] - y[:, 0]) ** 2)),
    "q1": ("tf.reduce_mean(tf.square(pred[:, 1]))", lambda p, x, y: np.mean(p[:, 1] ** 2)),
    "q2": ("tf.reduce_mean(tf.abs(pred[:, 0] - x[:, 1]))", lambda p, x, y: np.mean(np.abs(p[:, 0] - x[:, 1]))),
}
COEFFICIENTS = {"": 1.0, "0.5 * ": 0.5, "LAM * ": 3.0, "self.alpha * ": 0.7, "-": -1.0}


def expression(rng, depth=0):
    if depth > 2 or rng.random() < 0.35:
        coef = rng.choice(list(COEFFICIENTS))
        tail = rng.choice(["", "", " / 4"])
        return f"{coef}{rng.choice(list(QUANTITIES))}{tail}"
    left, right = expression(rng, depth + 1), expression(rng, depth + 1)
    op = rng.choice(["+", "-"])
    return rng.choice([f"{left} {op} {right}", f"({left} {op} {right})", f"0.25 * ({left} {op} {right})",
                       f"tf.add_n([{left}, {right}])"])


def generate(seed):
    rng = random.Random(seed)
    lines = [f"{name} = {src}" for name, (src, _) in QUANTITIES.items()]
    lines.append(f"loss = {expression(rng)}")
    for _ in range(rng.randint(0, 2)):
        lines.append(f"loss {rng.choice(['+=', '-='])} {expression(rng, 2)}")
    body = "\n                ".join(lines)
    return textwrap.dedent(f'''
    import keras
    import tensorflow as tf
    from keras import layers

    LAM = 3.0


    class Generated(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.alpha = 0.7
            self.hidden = layers.Dense(6, activation="tanh", name="hidden")
            self.out = layers.Dense(2, name="out")

        def call(self, x):
            return self.out(self.hidden(x))

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                pred = self(x, training=True)
                {body}
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return {{"loss": loss}}


    def build():
        keras.utils.set_random_seed({seed})
        model = Generated(name="generated")
        model(keras.Input(shape=(3,)))
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        return model
    ''')


def derivatives(source):
    """d loss / d q for each quantity, by evaluating the generated lines on unit vectors."""
    lines = [line.strip() for line in source.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("loss ="))
    program = [line for line in lines[start:] if line.startswith("loss")]
    tf = type("tf", (), {"add_n": staticmethod(sum)})
    model = type("M", (), {"alpha": 0.7})()

    def value(**q):
        env = {"tf": tf, "LAM": 3.0, "self": model, **q}
        exec("\n".join(program), env)
        return env["loss"]

    zero = value(**{n: 0.0 for n in QUANTITIES})
    return {n: value(**{m: float(m == n) for m in QUANTITIES}) - zero for n in QUANTITIES}


@pytest.mark.parametrize("seed", range(10))
def test_generated_steps_decompose_and_verify(seed, tmp_path):
    import lossmap

    source = generate(seed)
    path = tmp_path / f"generated_{seed}.py"
    path.write_text(source)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 3)).astype("float32")
    y = rng.standard_normal((5, 2)).astype("float32")
    r = lossmap.analyse(f"{path}:build", (x, y), gradient_limit=64)
    assert r.total.verified and r.total.gradients_verified and r.state_restored, source

    from lossmap.load import load

    model = load(f"{path}:build").model
    w1, b1 = (np.array(v, np.float64) for v in model.get_layer("hidden").weights)
    w2, b2 = (np.array(v, np.float64) for v in model.get_layer("out").weights)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    pred = np.tanh(x64 @ w1 + b1) @ w2 + b2
    weights = {n: 0.0 for n in QUANTITIES}
    for t in r.terms:
        assert t.kind == "custom"
        name = t.id.split("/")[1].split("#")[0]
        assert t.value == pytest.approx(QUANTITIES[name][1](pred, x64, y64), rel=1e-5, abs=1e-7), (t.id, source)
        weights[name] += t.weight
    expected = derivatives(source)
    for name in QUANTITIES:
        assert weights[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), (name, source)
