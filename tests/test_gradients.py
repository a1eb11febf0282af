"""Per-term gradient attribution, on cases with known answers."""
import numpy as np
import pytest
import keras
import tensorflow as tf
from keras import layers, ops, regularizers

import lossmap
from lossmap.batch import synthetic
from lossmap.load import load


class InputPenalty(layers.Layer):
    """A penalty made only of the inputs: a constant for the optimizer."""

    def call(self, x):
        self.add_loss(ops.mean(ops.square(x)))
        return x


class OpposedPenalties(layers.Layer):
    """Two add_loss terms built to point in opposite directions."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

    def call(self, x):
        self.add_loss(3.0 * ops.sum(self.w))
        self.add_loss(-0.5 * ops.sum(self.w))
        return x * self.w


def _two_heads():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,), name="x")
    penalty = InputPenalty(name="input_penalty")(inputs)
    trunk = layers.Dense(5, activation="tanh", name="trunk")(penalty)
    opposed = OpposedPenalties(name="opposed")(trunk)
    a = layers.Dense(1, name="head_a", kernel_regularizer=regularizers.L2(0.05))(opposed)
    b = layers.Dense(2, name="head_b")(opposed)
    model = keras.Model(inputs, [a, b])
    model.compile(optimizer="sgd", loss=["mse", "mae"], loss_weights=[0.7, 1.3])
    return model


@pytest.fixture(scope="module")
def two_heads():
    return _two_heads()


@pytest.fixture(scope="module")
def analysis(two_heads):
    return lossmap.analyse(two_heads)


def test_l2_reaches_only_its_kernel_with_gradient_2_l2_w(analysis, two_heads):
    entry = analysis.gradients["terms"]["regularizer/head_a/kernel"]
    kernel = two_heads.get_layer("head_a").kernel.numpy().astype(np.float64)
    assert entry["reach"]["variables"] == ["head_a/kernel"]
    assert entry["reach"]["layers"] == ["head_a"]
    assert entry["norm"] == pytest.approx(np.linalg.norm(2 * 0.05 * kernel), rel=1e-5)


def test_term_of_inputs_only_is_dead(analysis):
    entry = analysis.gradients["terms"]["add_loss/input_penalty/0"]
    assert entry["dead"] and entry["norm"] == 0.0 and entry["reach"]["variables"] == []
    dead = [f for f in analysis.findings if f.code == "DEAD_TERM"]
    assert [f.term for f in dead] == ["add_loss/input_penalty/0"]
    assert all(f.level == "warning" for f in dead)  # probably unintended, not certainly wrong


def test_heads_reach_trunk_and_their_own_head_only(analysis):
    terms = analysis.gradients["terms"]
    assert terms["compiled/head_a"]["reach"]["layers"] == ["head_a", "opposed", "trunk"]
    assert terms["compiled/head_b"]["reach"]["layers"] == ["head_b", "opposed", "trunk"]


def test_opposed_terms_have_cosine_minus_one(analysis):
    pair = next(p for p in analysis.gradients["pairs"]
                if {p["a"], p["b"]} == {"add_loss/opposed/0", "add_loss/opposed/1"})
    assert pair["cosine"] == pytest.approx(-1.0, abs=1e-12)
    assert pair["per_layer"]["opposed"] == pytest.approx(-1.0, abs=1e-12)
    # |3 sum(w)| against |-0.5 sum(w)|: gradients 3*1 and -0.5*1 on each weight
    assert pair["imbalance_a_over_b"] == pytest.approx(6.0)
    assert any(f.code == "GRADIENT_CONFLICT" for f in analysis.findings)


def test_shares_sum_to_one(analysis):
    shares = [e["share"] for e in analysis.gradients["terms"].values()]
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)


def _tape_total_gradient(model, batch, sig, engine):
    xs, ys, sw = engine.pack_batch(model, sig, batch)
    with tf.GradientTape() as tape:
        y_pred = model(xs, training=True)
        total = model.compute_loss(xs, ys, y_pred, sw, training=True)
    return {v.path: np.array(g) for v, g in zip(model.trainable_variables,
                                               tape.gradient(total, model.trainable_variables))}


@pytest.mark.parametrize("limit", [8, 1])
def test_term_gradients_add_up_to_the_total_gradient(two_heads, limit):
    """Separately and grouped (limit 1 groups the add_loss terms), the parts sum to tape.gradient."""
    loaded = load(two_heads)
    eng = loaded.engine
    sig = eng.signature(two_heads)
    batch = synthetic(sig, 8, 3)
    state = eng.state(two_heads)
    try:
        capture = eng.capture(two_heads, batch, sig)
        from lossmap.terms import build_terms

        terms = build_terms(capture)
        state.restore()
        acc, notes = eng.attribute_gradients(two_heads, batch, sig, terms, limit)
        state.restore()
        expected = _tape_total_gradient(two_heads, batch, sig, eng)
    finally:
        state.restore()
    assert state.identical()
    for path, g in expected.items():
        ours = acc.total[path] if acc.total[path] is not None else np.zeros_like(g)  # reached by no term
        np.testing.assert_allclose(ours, g, rtol=1e-5, atol=1e-7, err_msg=path)
    if limit == 1:
        assert any(u.grouped for u in acc.units) and notes


def test_grouping_keeps_per_layer_breakdown():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((3,))
    x = inputs
    for i in range(5):
        x = layers.Dense(3, activity_regularizer=regularizers.L1(1e-3), name=f"d{i}")(x)
    model = keras.Model(inputs, layers.Dense(1, name="out")(x))
    model.compile("adam", "mse")
    result = lossmap.analyse(model, gradient_limit=2)
    group = next(u for u in result.gradients["units"] if u["grouped"])
    assert group["kind"] == "activity_regularizer" and len(group["terms"]) == 5
    entry = result.gradients["terms"]["activity/d0"]
    # every member shares the group's entry; activity on d_i reaches d0..d_i, never the head
    assert entry is result.gradients["terms"]["activity/d4"] or entry == result.gradients["terms"]["activity/d4"]
    assert entry["grouped"] and set(entry["per_layer"]) == {f"d{i}" for i in range(5)}
    assert entry["per_layer"]["d0"] > entry["per_layer"]["d4"] > 0
    assert any("attributed together" in n for n in result.gradients["notes"])
    assert any(f.code == "OPTIMIZER_SCALE_NOTE" and "Adam" in f.message for f in result.findings)


def test_no_gradients_option(two_heads):
    assert lossmap.analyse(two_heads, gradients=False).gradients is None


def test_small_but_acting_regularizer_is_not_dead():
    """A weak L2 beside a much larger data gradient still changes its kernel's float32 update;
    one below float32 resolution of that gradient cannot, and is dead."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((3,))
    out = layers.Dense(1, name="big", kernel_regularizer=regularizers.L2(1e-4))(inputs)
    model = keras.Model(inputs, out)
    model.compile("sgd", "mse")
    x = np.full((4, 3), 1.0, "float32")
    y = np.full((4, 1), -3.0, "float32")
    result = lossmap.analyse(model, (x, y))
    entry = result.gradients["terms"]["regularizer/big/kernel"]
    data = next(e for tid, e in result.gradients["terms"].items() if tid.startswith("compiled/"))
    assert entry["norm"] < 1e-3 * data["norm"] and not entry["dead"]
    assert not any(f.code == "DEAD_TERM" for f in result.findings)

    model.get_layer("big").kernel.regularizer = regularizers.L2(1e-14)
    result = lossmap.analyse(model, (x, y))
    assert result.gradients["terms"]["regularizer/big/kernel"]["dead"]


def test_constant_by_construction_is_dead():
    """L1 of a softmax is 1 per sample whatever the weights: its gradient is only rounding noise."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4,))
    probs = layers.Dense(3, activation="softmax", activity_regularizer=regularizers.L1(0.1), name="p")(inputs)
    model = keras.Model(inputs, probs)
    model.compile("adam", "categorical_crossentropy")
    result = lossmap.analyse(model)
    assert result.gradients["terms"]["activity/p"]["dead"]
    assert [f.term for f in result.findings if f.code == "DEAD_TERM"] == ["activity/p"]
