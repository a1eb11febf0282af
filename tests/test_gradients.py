"""Per-term gradient attribution, on cases with known answers."""
import numpy as np
import pytest
import keras
import tensorflow as tf
from keras import layers, ops, regularizers

import lossmap
from lossmap import gradient_layout as layout
from lossmap import gradients as gmod
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


def reach(analysis, term_id):
    return layout.reach(analysis.gradients, layout.unit_of(analysis.gradients, term_id))


def per_layer(analysis, term_id):
    return layout.per_layer(analysis.gradients, layout.unit_of(analysis.gradients, term_id))


def test_l2_reaches_only_its_kernel_with_gradient_2_l2_w(analysis, two_heads):
    entry = analysis.gradients["terms"]["regularizer/head_a/kernel"]
    kernel = two_heads.get_layer("head_a").kernel.numpy().astype(np.float64)
    assert reach(analysis, "regularizer/head_a/kernel") == {"variables": ["head_a/kernel"], "layers": ["head_a"]}
    assert entry["norm"] == pytest.approx(np.linalg.norm(2 * 0.05 * kernel), rel=1e-5)


def test_term_of_inputs_only_is_dead(analysis):
    entry = analysis.gradients["terms"]["add_loss/input_penalty/0"]
    assert entry["dead"] and entry["norm"] == 0.0 and reach(analysis, "add_loss/input_penalty/0")["variables"] == []
    dead = [f for f in analysis.findings if f.code == "DEAD_TERM"]
    assert [f.term for f in dead] == ["add_loss/input_penalty/0"]
    assert all(f.level == "warning" for f in dead)  # probably unintended, not certainly wrong


def test_heads_reach_trunk_and_their_own_head_only(analysis):
    # model order: the trunk first
    assert reach(analysis, "compiled/head_a")["layers"] == ["trunk", "opposed", "head_a"]
    assert reach(analysis, "compiled/head_b")["layers"] == ["trunk", "opposed", "head_b"]


def test_opposed_terms_have_cosine_minus_one(analysis):
    pair = next(p for p in layout.pairs(analysis.gradients)
                if {p["a"], p["b"]} == {"add_loss/opposed/0", "add_loss/opposed/1"})
    assert pair["cosine"] == pytest.approx(-1.0, abs=1e-12)
    assert pair["per_layer"] == {"opposed": pytest.approx(-1.0, abs=1e-12)}
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


class _Summing(gmod.Accumulator):
    """The accumulator, adding up every unit's gradient as it is folded in (for the test only)."""

    summed: dict = {}

    def _stats(self, unit, v, g):
        super()._stats(unit, v, g)
        g64 = np.asarray(g, np.float64)
        _Summing.summed[v] = _Summing.summed[v] + g64 if v in _Summing.summed else g64.copy()


@pytest.mark.parametrize("limit", [8, 1])
def test_term_gradients_add_up_to_the_total_gradient(two_heads, limit, monkeypatch):
    """Separately and grouped (limit 1 groups the add_loss terms), the parts sum to tape.gradient."""
    loaded = load(two_heads)
    eng = loaded.engine
    sig = eng.signature(two_heads)
    batch = synthetic(sig, 8, 3)
    state = eng.state(two_heads)
    monkeypatch.setattr(gmod, "Accumulator", _Summing)
    _Summing.summed = {}
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
        ours = _Summing.summed.get(path, np.zeros_like(g))  # reached by no term
        np.testing.assert_allclose(ours, g, rtol=1e-5, atol=1e-7, err_msg=path)
    if limit == 1:
        assert any(u.grouped for u in acc.units) and notes


def test_running_products_equal_the_summed_gradient():
    """|G|, each g_i . G and |G| per variable from the pairwise products equal those of G formed
    explicitly: with a derived unit, weight regularizers and two on one variable."""
    rng = np.random.default_rng(0)
    shapes = {"a/kernel": (3, 4), "a/bias": (4,), "b/kernel": (4, 2)}
    g = {name: {v: rng.standard_normal(s).astype("float32") for v, s in shapes.items()} for name in "xyd"}
    reg = {"r1": rng.standard_normal((3, 4)).astype("float32"), "r2": rng.standard_normal((3, 4)).astype("float32")}
    units = {n: gmod.Unit(n, n, "compiled", [n], False) for n in list("xyd") + ["r1", "r2"]}
    acc = gmod.Accumulator(list(shapes))
    acc.add_shared(units["x"], g["x"])
    acc.add_shared(units["y"], g["y"])
    acc.open(units["d"])
    for v in shapes:
        local = [(units[r], reg[r]) for r in ("r1", "r2")] if v == "a/kernel" else []
        acc.add_variable(v, streamed=[(units["d"], g["d"][v])], local=local)
    out = acc.finish()
    parts = {n: dict(g[n]) for n in "xyd"}
    parts.update({r: {"a/kernel": reg[r]} for r in reg})
    total = {v: sum(np.asarray(p[v], np.float64) for p in parts.values() if v in p) for v in shapes}
    assert out["total_sq"] == pytest.approx(sum(float(np.vdot(t, t)) for t in total.values()), rel=1e-12)
    for v, t in total.items():
        assert out["total_var_sq"][v] == pytest.approx(float(np.vdot(t, t)), rel=1e-12)
    for u in acc.units:
        expected = sum(float(np.vdot(np.asarray(parts[u.id][v], np.float64), total[v])) for v in parts[u.id])
        assert u.dot_total == pytest.approx(expected, rel=1e-12)
    # the reported pairs are those with a trunk-sharing unit; two regularizers on one variable only count
    pairs = {(a, b) for a, b in acc.dots if acc.dots[(a, b)]}
    assert ("r1", "r2") not in pairs and ("d", "r1") in pairs and ("x", "d") in pairs


def test_layout_grows_with_units_plus_layers():
    """Shared tables, reach as index ranges, one entry per unit however many terms a group has."""
    assert layout.ranges([0, 1, 2, 5, 7, 8]) == [[0, 3], [5, 6], [7, 9]]
    assert layout.expand([[0, 3], [5, 6]]) == [0, 1, 2, 5]
    assert layout.rounded(0.123456789) == 0.123457
    keras.utils.set_random_seed(2)
    inputs = keras.Input((3,))
    x = inputs
    for i in range(12):
        x = layers.Dense(3, activity_regularizer=regularizers.L1(1e-3), name=f"d{i}")(x)
    model = keras.Model(inputs, layers.Dense(1, name="out")(x))
    model.compile("adam", "mse")
    g = lossmap.analyse(model, gradient_limit=2).to_dict()["gradients"]
    assert g["layers"] == [f"d{i}" for i in range(12)] + ["out"]
    assert g["variables"][:2] == ["d0/kernel", "d0/bias"]
    group = next(u for u in g["units"] if u["grouped"])
    assert group["reach"] == {"layers": [[0, 12]], "variables": [[0, 24]]}
    assert all(set(e) == {"unit", "grouped", "norm", "share", "norm_share", "dead"} for e in g["terms"].values())
    assert g["terms"]["activity/d3"]["unit"] == group["id"]
    # pairs: a row each, units by index; read back as dicts with ids and per-layer names
    assert g["pairs"]["fields"] == layout.PAIR_FIELDS and g["pairs"]["rows"]
    ids = [u["id"] for u in g["units"]]
    for row, p in zip(g["pairs"]["rows"], layout.pairs(g)):
        assert (p["a"], p["b"]) == (ids[row[0]], ids[row[1]])
        assert set(p["per_layer"]) <= set(g["layers"])


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
    norms = per_layer(result, "activity/d0")
    assert entry["grouped"] and list(norms) == [f"d{i}" for i in range(5)]
    assert norms["d0"] > norms["d4"] > 0
    assert group["per_layer"] == [[i, norms[f"d{i}"]] for i in range(5)]  # stored once, on the unit
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
