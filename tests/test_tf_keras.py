"""The tf_keras engine, and where tf_keras 2.x and Keras 3 differ.

The hand-checked cases of test_terms.py that both engines can express are
built here by one builder that takes the Keras module (`keras` or `tf_keras`)
and run in both: every expected number is worked out by hand (the arithmetic
is in the comments), and must equal lossmap's reproduction and both Keras's
own `compute_loss` and a real `train_step`. Then tf_keras's own files (.h5,
.keras), engine selection, the ENGINE_DIFF_* findings on models built to show
each difference, the TensorFlow Probability example, and
`lossmap report --compare-engines`.
"""
import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

import keras

import lossmap
from lossmap import cli

tf_keras = pytest.importorskip("tf_keras")
import tensorflow as tf  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*received `from_logits=True`:UserWarning"),
    pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

MODULES = {"keras3": keras, "tf_keras": tf_keras}
ENGINES = list(MODULES)


def approx(value):
    return pytest.approx(value, rel=1e-6, abs=1e-7)


def f32(a):
    return np.asarray(a, dtype="float32")


def run(model, tmp_path, engine, **arrays):
    """analyse `model` on the batch `arrays`; the invariants every case shares, in either engine."""
    path = tmp_path / "batch.npz"
    np.savez(path, **{k: v if isinstance(v, np.ndarray) else f32(v) for k, v in arrays.items()})
    before = [np.array(w, copy=True) for w in model.get_weights()]
    analysis = lossmap.analyse(model, data=str(path), gradients=False)
    assert analysis.model.engine == engine
    assert all(np.array_equal(b, a) for b, a in zip(before, model.get_weights())), "the model's weights changed"
    assert analysis.state_restored is True
    assert analysis.total.verified is True, analysis.total
    return analysis


def check_total(analysis, expected):
    assert analysis.total.reproduced == approx(expected)
    assert analysis.total.compute_loss == approx(expected)
    assert analysis.total.train_step == approx(expected)


def codes(analysis):
    return {f.code for f in analysis.findings}


# ---------------------------------------------------------------- one builder, both modules
# lin: y_pred = x @ W (no bias), as in test_terms.py.
W_LIN = f32([[1.0, 0.0], [0.5, -1.0]])
X_LIN = f32([[1, 2], [0, 1], [2, 0]])
#   x @ W = [[2, -2], [0.5, -1], [2, 0]]
Y_LIN = f32([[1, -2], [0.5, 0.5], [0, 1]])
#   y_pred - y = [[1, 0], [0, -1.5], [2, -1]]; mse per sample = [0.5, 1.125, 2.5], sum 4.125
SW_LIN = f32([2.0, 1.0, 0.5])
#   sample_weight * mse = [1.0, 1.125, 1.25], sum 3.375


class _Penalty:
    """A layer class per module that passes its input through and adds `rate * mean(x^2)` (or, with
    `per_sample`, the per-sample means: a non-scalar add_loss)."""

    cache = {}

    @classmethod
    def of(cls, k):
        if k.__name__ not in cls.cache:
            class Penalty(k.layers.Layer):
                def __init__(self, rate=0.5, per_sample=False, **kwargs):
                    super().__init__(**kwargs)
                    self.rate = rate
                    self.per_sample = per_sample

                def call(self, x):
                    sq = tf.square(x)
                    self.add_loss(self.rate * (tf.reduce_mean(sq, axis=-1) if self.per_sample else tf.reduce_mean(sq)))
                    return x
            cls.cache[k.__name__] = Penalty
        return cls.cache[k.__name__]


def lin_model(k, loss="mse", *, kernel_regularizer=None, activity_regularizer=None, penalty=None):
    inp = k.Input((2,), name="x")
    h = inp
    if penalty is not None:
        h = _Penalty.of(k)(penalty, name="pen")(h)
    out = k.layers.Dense(2, use_bias=False, name="lin", kernel_regularizer=kernel_regularizer,
                         activity_regularizer=activity_regularizer)(h)
    model = k.Model(inp, out, name="linear")
    model.get_layer("lin").set_weights([W_LIN])
    model.compile(optimizer=k.optimizers.SGD(learning_rate=0.1), loss=loss)
    return model


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("reduction,weighted,expected", [
    ("sum_over_batch_size", False, 4.125 / 3),  # (0.5 + 1.125 + 2.5) / 3
    ("sum_over_batch_size", True, 3.375 / 3),   # sum(sw * mse) / 3
    ("sum", False, 4.125),
    ("sum", True, 3.375),
])
def test_reductions_in_both_engines(engine, reduction, weighted, expected, tmp_path):
    k = MODULES[engine]
    model = lin_model(k, k.losses.MeanSquaredError(reduction=reduction))
    extra = {"sample_weight": SW_LIN} if weighted else {}
    a = run(model, tmp_path, engine, x=X_LIN, y=Y_LIN, **extra)
    check_total(a, expected)
    assert a.term("compiled/lin").value == approx(expected)


def test_auto_reduction_is_sum_over_batch_size_in_tf_keras(tmp_path):
    a = run(lin_model(tf_keras, "mse"), tmp_path, "tf_keras", x=X_LIN, y=Y_LIN)
    assert a.term("compiled/lin").config["reduction"] == "auto"
    check_total(a, 4.125 / 3)


@pytest.mark.parametrize("engine", ENGINES)
def test_weight_and_activity_regularizers_in_both_engines(engine, tmp_path):
    k = MODULES[engine]
    model = lin_model(k, kernel_regularizer=k.regularizers.L2(0.1), activity_regularizer=k.regularizers.L1(0.2))
    a = run(model, tmp_path, engine, x=X_LIN, y=Y_LIN)
    # L2: 0.1 * (1 + 0 + 0.25 + 1) = 0.225
    assert a.term("regularizer/lin/kernel").value == approx(0.225)
    # L1 of x @ W = |2| + |-2| + 0.5 + 1 + 2 + 0 = 7.5; 0.2 * 7.5 / batch 3 = 0.5 (both divide by the batch size)
    assert a.term("activity/lin").value == approx(0.5)
    check_total(a, 4.125 / 3 + 0.225 + 0.5)


@pytest.mark.parametrize("engine", ENGINES)
def test_scalar_add_loss_in_both_engines(engine, tmp_path):
    model = lin_model(MODULES[engine], penalty=0.5)
    a = run(model, tmp_path, engine, x=X_LIN, y=Y_LIN)
    # mean(x^2) = (1 + 4 + 0 + 1 + 4 + 0) / 6 = 10/6; 0.5 * 10/6
    assert a.term("add_loss/pen/0").value == approx(0.5 * 10 / 6)
    assert a.term("add_loss/pen/0").origin["qualname"].endswith("Penalty")
    check_total(a, 4.125 / 3 + 0.5 * 10 / 6)


def two_heads(k, loss, loss_weights=None):
    inp = k.Input((2,), name="x")
    a = k.layers.Dense(1, use_bias=False, name="a")(inp)
    b = k.layers.Dense(1, use_bias=False, name="b")(inp)
    model = k.Model(inp, {"a": a, "b": b}, name="two")
    model.get_layer("a").set_weights([f32([[1.0], [0.0]])])   # a = x0
    model.get_layer("b").set_weights([f32([[0.0], [2.0]])])   # b = 2 * x1
    model.compile(optimizer=k.optimizers.SGD(learning_rate=0.1), loss=loss, loss_weights=loss_weights)
    return model


X2 = f32([[1, 0], [0, 1]])
# a = [1, 0], b = [0, 2]; with y/a = [0, 0]: mse_a = (1 + 0) / 2 = 0.5; y/b = [0, 1]: mse_b = (0 + 1) / 2 = 0.5
# mae_b = (0 + 1) / 2 = 0.5


@pytest.mark.parametrize("engine", ENGINES)
def test_two_outputs_with_loss_weights_in_both_engines(engine, tmp_path):
    k = MODULES[engine]
    model = two_heads(k, {"a": "mse", "b": "mae"}, {"a": 0.25, "b": 2.0})
    a = run(model, tmp_path, engine, **{"x": X2, "y/a": f32([[0], [0]]), "y/b": f32([[0], [1]])})
    assert a.term("compiled/a").weight == 0.25 and a.term("compiled/b").weight == 2.0
    check_total(a, 0.25 * 0.5 + 2.0 * 0.5)
    assert "PER_OUTPUT_LOGS_UNWEIGHTED" in codes(a)


@pytest.mark.parametrize("engine", ENGINES)
def test_an_output_without_a_loss_in_both_engines(engine, tmp_path):
    k = MODULES[engine]
    model = two_heads(k, {"a": "mse", "b": None})
    a = run(model, tmp_path, engine, **{"x": X2, "y/a": f32([[0], [0]])})
    assert [t.id for t in a.terms] == ["compiled/a"]
    check_total(a, 0.5)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("container", ["list", "dict"])
def test_one_output_given_as_a_list_in_both_engines(engine, container, tmp_path):
    """`Model(x, [y])`: both engines' Functional unpack a singleton output list (model(x) is the bare
    tensor), so the output is a single one, scored by the list's or dict's only loss; lossmap must not
    index the tensor with the list path (0,) (the Keras 3 engine once took the first sample's row)."""
    k = MODULES[engine]
    inp = k.Input((2,), name="x")
    out = k.layers.Dense(2, use_bias=False, name="lin")(inp)
    model = k.Model(inp, [out], name="one_in_a_list")
    model.get_layer("lin").set_weights([W_LIN])
    model.compile(optimizer=k.optimizers.SGD(learning_rate=0.1),
                  loss=["mse"] if container == "list" else {"lin": "mse"})
    a = run(model, tmp_path, engine, x=X_LIN, y=Y_LIN, sample_weight=SW_LIN)
    assert [t.id for t in a.terms] == ["compiled/lin"]
    check_total(a, 3.375 / 3)  # sum(sw * mse) / 3, over all three samples


# ---------------------------------------------------------------- verification and state, tf_keras specifics
def busy_model(k):
    """BatchNorm statistics, a seeded Dropout (tf_keras counts its op seeds in Python), Adam already built."""
    k.utils.set_random_seed(0)
    inp = k.Input((4,), name="x")
    h = k.layers.Dense(6, activation="relu", kernel_regularizer=k.regularizers.L2(1e-2), name="d")(inp)
    h = k.layers.BatchNormalization(name="bn")(h)
    h = k.layers.Dropout(0.3, seed=7, name="drop")(h)
    out = k.layers.Dense(3, activation="softmax", name="cls")(h)
    model = k.Model(inp, out, name="busy")
    model.compile(optimizer=k.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, 8)
    model.fit(x, y, epochs=1, verbose=0)  # builds the optimizer and leaves metric state behind
    return model


@pytest.mark.parametrize("engine", ENGINES)
def test_verification_leaves_a_trained_model_untouched(engine):
    model = busy_model(MODULES[engine])
    opt = model.optimizer
    iterations = int(np.array(opt.iterations))
    snapshot = [np.array(v, copy=True) for v in model.variables]
    a = lossmap.analyse(model)
    assert a.total.verified is True, a.total
    assert a.state_restored is True
    assert a.gradients is not None and a.gradients["terms"]
    assert model.optimizer is opt and int(np.array(opt.iterations)) == iterations
    assert all(np.array_equal(s, np.array(v)) for s, v in zip(snapshot, model.variables))
    # and again: the same numbers, so nothing (op-seed counters included) moved
    b = lossmap.analyse(model, gradients=False)
    assert b.total.reproduced == a.total.reproduced and b.total.train_step == a.total.train_step


# ---------------------------------------------------------------- tf_keras files and engine selection
def cli_run(*args):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tfk_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfk")
    model = lin_model(tf_keras, kernel_regularizer=tf_keras.regularizers.L2(0.1))
    model.save(d / "lin.h5")
    model.save(d / "lin.keras")
    inp = tf_keras.Input((2,), name="x")
    out = tf_keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)
    lam = tf_keras.Model(inp, out)
    lam.compile("sgd", "mse")
    lam.save(d / "lambda.h5")
    return d


def test_gradients_see_the_random_draw_of_the_capture():
    """tf_keras's attribution tapes a forward pass of its own: seeded as the capture's, its seeded
    Dropout drops the same units, so the terms' gradients add up to the gradient of the loss there."""
    from lossmap.batch import synthetic
    from lossmap.load import load

    model = busy_model(tf_keras)
    a = lossmap.analyse(model)
    eng = load(model).engine
    sig = eng.signature(model)
    state = eng.state(model)
    try:
        eng.seed_random(0)
        xs, ys, sw = eng.packed_tensors(model, sig, synthetic(sig, 8, 0))
        with tf.GradientTape() as tape:
            total = model.compute_loss(xs, ys, model(xs, training=True), sw)
        grads = tape.gradient(total, model.trainable_variables)
    finally:
        state.restore()
    expected = np.sqrt(sum(float(np.sum(np.square(np.asarray(g, np.float64)))) for g in grads if g is not None))
    assert a.gradients["total_norm"] == pytest.approx(expected, rel=1e-5)


def test_h5_file_is_explained_by_tf_keras(tfk_files):
    code, out, err = cli_run("check", tfk_files / "lin.h5", "--format", "json", "--no-gradients")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"]["engine"] == "tf_keras"
    assert "HDF5" in doc["model"]["engine_reason"] and doc["model"]["saved_with"].startswith("2.")
    assert doc["total"]["verified"] is True
    assert {t["id"] for t in doc["terms"]} == {"compiled/lin", "regularizer/lin/kernel"}
    assert doc["engine_comparison"]["differences"] == []  # nothing here differs from Keras 3


def test_tf_keras_archive_is_explained_by_tf_keras(tfk_files):
    a = lossmap.analyse(str(tfk_files / "lin.keras"), gradients=False)
    assert a.model.engine == "tf_keras" and a.model.saved_with.startswith("2.")
    assert "saved by Keras 2." in a.model.engine_reason
    assert a.total.verified is True


def test_h5_lambda_needs_unsafe(tfk_files):
    one_line_error(*cli_run("check", tfk_files / "lambda.h5")[::2], "--unsafe")
    code, _, err = cli_run("check", tfk_files / "lambda.h5", "--unsafe", "--no-gradients")
    assert code in (0, 1), err


def test_engine_selection(tfk_files, monkeypatch):
    from lossmap.load import engine_for

    assert engine_for("auto", {"keras_version": "2.15.0"})[0] == "tf_keras"
    assert engine_for("auto", {"keras_version": "3.4.1"})[0] == "keras3"
    assert engine_for("auto", {"format": "h5", "keras_version": None})[0] == "tf_keras"
    assert engine_for("auto", {})[0] == "keras3"
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    assert engine_for("auto", {}) == ("tf_keras", "TF_USE_LEGACY_KERAS=1")
    assert engine_for("auto", obj=lin_model(keras))[0] == "keras3"  # the object's class wins
    monkeypatch.delenv("TF_USE_LEGACY_KERAS")
    with pytest.raises(lossmap.errors.UserError, match="--engine tf_keras"):
        engine_for("keras3", obj=lin_model(tf_keras))


def test_missing_tf_keras_is_one_line_with_the_install_command(tfk_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf_keras", None)  # import tf_keras now raises ImportError
    one_line_error(*cli_run("check", tfk_files / "lin.h5")[::2], "pip install tf_keras")


def test_damaged_h5_is_one_line(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    one_line_error(*cli_run("check", bad)[::2], "HDF5", ".keras")
    weights = tmp_path / "only.weights.h5"
    lin_model(tf_keras).save_weights(weights)
    one_line_error(*cli_run("check", weights)[::2], "weights only")


# ---------------------------------------------------------------- engine differences, on purpose-built models
def diffs(a):
    return {d["code"]: d for d in (a.engine_comparison or {}).get("differences", [])}


def check_cites(d):
    """Each difference cites a real line of each engine's installed source, found by structure."""
    engines = sorted(c["engine"] for c in d["cites"])
    assert engines == ["keras3", "tf_keras"], d
    for c in d["cites"]:
        assert c["found"], c
        top = "tf_keras/" if c["engine"] == "tf_keras" else "keras/"
        assert c["path"].startswith(top), c
        module = __import__(c["module"], fromlist=["_"])
        with open(module.__file__, encoding="utf-8") as fh:
            assert fh.read().splitlines()[c["line"] - 1].strip() == c["text"]
        assert f"{c['path']}:{c['line']}" in d["message"]


def non_scalar_model(k, regularized=True):
    model = lin_model(k, penalty=0.5, kernel_regularizer=k.regularizers.L2(0.1) if regularized else None)
    model.get_layer("pen").per_sample = True
    return model


def test_non_scalar_add_loss_fails_in_tf_keras_and_is_said_before(tmp_path):
    model = non_scalar_model(tf_keras)
    path = tmp_path / "b.npz"
    np.savez(path, x=X_LIN, y=Y_LIN)
    a = lossmap.analyse(model, data=str(path), gradients=False)
    d = diffs(a)["ENGINE_DIFF_ADD_LOSS_NON_SCALAR"]
    assert d["level"] == "error" and d["add_n_ok"] is False
    assert "must have the same size and shape" in d["message"]
    # Keras 3 would sum the per-sample means: 0.5 * (mean [1, 4] + mean [0, 1] + mean [4, 0]) = 0.5 * 5 = 2.5
    assert "add_loss/pen/0 = 2.5" in d["message"]
    check_cites(d)
    assert {"COMPUTE_LOSS_FAILED", "ADD_LOSS_NON_SCALAR"} <= codes(a)
    assert a.total.compute_loss is None and a.total.train_step is None
    assert cli.exit_code(a) == 1


def test_non_scalar_add_loss_in_keras3_names_what_tf_keras_would_do(tmp_path):
    path = tmp_path / "b.npz"
    np.savez(path, x=X_LIN, y=Y_LIN)
    a = lossmap.analyse(non_scalar_model(keras), data=str(path), gradients=False, engine_diffs=True)
    assert a.total.verified is True
    assert a.term("add_loss/pen/0").value == approx(2.5)
    d = diffs(a)["ENGINE_DIFF_ADD_LOSS_NON_SCALAR"]
    assert d["level"] == "warning" and "fail" in d["message"]
    check_cites(d)


def test_non_scalar_add_loss_alone_is_added_by_add_n_and_logged_as_its_mean(tmp_path):
    model = non_scalar_model(tf_keras, regularized=False)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1))  # no compiled loss: add_n sees one shape
    path = tmp_path / "b.npz"
    np.savez(path, x=X_LIN)
    a = lossmap.analyse(model, data=str(path), gradients=False)
    # the total is the tensor 0.5 * [2.5, 0.5, 2]; its mean, 5/6, is what is logged and verified
    assert a.total.reproduced == approx(2.5 / 3) and a.total.compute_loss == approx(2.5 / 3)
    assert diffs(a)["ENGINE_DIFF_ADD_LOSS_NON_SCALAR"]["add_n_ok"] is True


def test_frozen_regularizer_and_short_loss_weights(tmp_path):
    k = tf_keras
    inp = k.Input((2,), name="x")
    frozen = k.layers.Dense(2, use_bias=False, name="frozen", kernel_regularizer=k.regularizers.L2(0.1))
    h = frozen(inp)
    a_out = k.layers.Dense(1, use_bias=False, name="a")(h)
    b_out = k.layers.Dense(1, use_bias=False, name="b")(h)
    model = k.Model(inp, [a_out, b_out])
    frozen.set_weights([W_LIN])
    frozen.trainable = False
    model.compile("sgd", ["mse", "mae"], loss_weights=[0.5])  # one weight for two outputs
    path = tmp_path / "b.npz"
    np.savez(path, x=X_LIN, **{"y/a": f32(np.zeros((3, 1))), "y/b": f32(np.zeros((3, 1)))})
    a = lossmap.analyse(model, data=str(path), gradients=False)
    assert a.total.verified is True
    # tf_keras zips outputs with [0.5]: output 'b' has no term at all, and the frozen kernel's L2 is counted
    assert [t.id for t in a.terms] == ["compiled/a", "regularizer/frozen/kernel"]
    assert a.term("regularizer/frozen/kernel").value == approx(0.225)
    d = diffs(a)
    assert d["ENGINE_DIFF_LOSS_WEIGHTS_VALIDATION"]["dropped"] == ["b"]
    assert d["ENGINE_DIFF_FROZEN_REGULARIZER"]["level"] == "warning"
    for code in ("ENGINE_DIFF_LOSS_WEIGHTS_VALIDATION", "ENGINE_DIFF_FROZEN_REGULARIZER"):
        check_cites(d[code])
    assert "REGULARIZER_ON_FROZEN_WEIGHT" not in codes(a)  # that one says Keras leaves it out


def test_activity_per_output_logs_distribution_and_bce_differences(tmp_path):
    k = tf_keras
    inp = k.Input((2,), name="x")
    s = k.layers.Dense(2, use_bias=False, name="s", activity_regularizer=k.regularizers.L1(0.2))(inp)
    p = k.layers.Dense(1, use_bias=False, name="p")(inp)
    model = k.Model(inp, [s, p])
    model.get_layer("s").set_weights([W_LIN])
    model.get_layer("p").set_weights([f32([[0.1], [0.2]])])
    model.compile("sgd", [k.losses.MeanSquaredError(reduction="sum"), "binary_crossentropy"],
                  loss_weights=[2.0, 0.5])
    path = tmp_path / "b.npz"
    np.savez(path, x=X_LIN, **{"y/s": Y_LIN, "y/p": f32([[1], [0], [1]])})
    a = lossmap.analyse(model, data=str(path), gradients=False)
    assert a.total.verified is True
    # p = x @ [0.1, 0.2] = [0.5, 0.2, 0.2], probabilities with no sigmoid logits: tf_keras's
    # -(y log(p + eps) + (1 - y) log(1 - p + eps)), averaged: (-log 0.5 - log 0.8 - log 0.2) / 3
    eps = 1e-7
    hand = -(np.log(0.5 + eps) + np.log(1 - 0.2 + eps) + np.log(0.2 + eps)) / 3
    assert a.term("compiled/p").value == pytest.approx(hand, rel=1e-5)
    d = diffs(a)
    assert d["ENGINE_DIFF_ACTIVITY_NORMALISATION"]["same"] is True  # both installed engines divide
    assert d["ENGINE_DIFF_PER_OUTPUT_LOGS"]["same"] is True          # both log before the weight
    assert "reduction 'sum'" in d["ENGINE_DIFF_DISTRIBUTION_SCALING"]["message"]
    assert "ENGINE_DIFF_CROSSENTROPY_EPSILON" in d
    for code in ("ENGINE_DIFF_ACTIVITY_NORMALISATION", "ENGINE_DIFF_PER_OUTPUT_LOGS",
                 "ENGINE_DIFF_DISTRIBUTION_SCALING", "ENGINE_DIFF_CROSSENTROPY_EPSILON"):
        check_cites(d[code])


# ---------------------------------------------------------------- the reproduction's tf_keras numerics
def test_tf_keras_reductions_and_masks():
    from lossmap.engines.tf_keras import rules as r

    values = np.array([1.0, 2.0, 3.0, 4.0])
    mask = np.array([1, 1, 0, 0])
    # valid entries weigh total/valid = 2: (1*2 + 2*2) / 4 = 1.5, the mean over the valid ones
    assert r.reduce_weighted(values, None, mask, "auto") == approx(1.5)
    assert r.reduce_weighted(values, None, mask, "sum") == approx(3.0)
    # nothing valid: tf_keras divides by zero (Keras 3 uses divide_no_nan)
    with np.errstate(all="ignore"):
        assert np.isnan(r.reduce_weighted(values, None, np.zeros(4), "auto"))
    # sample weights of shape (batch, 1) line up with per-sample losses
    assert r.reduce_weighted(values, np.ones((4, 1)) * 2, None, "sum") == approx(20.0)
    # binary crossentropy of a saturated probability: log(1 - clip(1) + eps) = log(2 eps) in float32 terms
    v, _ = r.elementwise_loss("binary_crossentropy", np.array([[0.0]]), np.array([[1.0]]), None, {}, "float32", 1e-7)
    one_minus = np.float32(1.0) - np.float32(1.0 - 1e-7)
    assert v[0] == pytest.approx(-np.log(float(one_minus) + 1e-7), rel=1e-4)


# ---------------------------------------------------------------- TensorFlow Probability
def test_dense_variational_kl_term_is_reproduced_and_verified():
    pytest.importorskip("tensorflow_probability")
    from lossmap.examples import dense_variational

    model = dense_variational()
    a = lossmap.analyse(model, gradients=False)
    assert a.model.engine == "tf_keras"
    assert a.total.verified is True and a.state_restored is True
    kl = a.term("add_loss/bayes/0")
    assert kl.value != 0.0 and kl.origin["module"].startswith("tensorflow_probability")
    # the call site: the add_loss line inside TFP's DenseVariational.call
    sites = a.call_sites["add_loss/bayes/0"]
    assert sites and sites[0].found and sites[0].qualname == "DenseVariational.call"
    marked = [ln for ln in sites[0].lines if ln.highlight]
    assert marked and "self.add_loss(" in marked[0].text
    # the kernel is sampled at every call: the same seed gives both passes the same draw, and only then
    x = np.ones((4, 4), "float32")
    bayes = model.get_layer("bayes")

    def kl():
        model(x, training=True)
        return float(bayes.losses[0])

    tf.random.set_seed(3)
    first = kl()
    tf.random.set_seed(3)
    assert kl() == first
    assert kl() != first


# ---------------------------------------------------------------- the side-by-side report
FACTORY = '''
def build(k):
    inp = k.Input((2,), name="x")
    h = k.layers.Dense(2, use_bias=False, name="s", activity_regularizer=k.regularizers.L1(0.2),
                       kernel_regularizer=k.regularizers.L2(0.1))(inp)
    out = k.layers.Dense(1, use_bias=False, name="p")(h)
    m = k.Model(inp, [h, out], name="cmp")
    m.compile(optimizer=k.optimizers.SGD(0.1), loss=["mse", "mae"], loss_weights=[0.5, 2.0])
    return m
'''


def test_compare_engines_report(tmp_path):
    factory = tmp_path / "cmp_factory.py"
    factory.write_text(FACTORY)
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    code, _, err = cli_run("report", f"{factory}:build", "--compare-engines", "-o", html, "--json", js,
                           "--no-gradients")
    assert code == 0, err
    doc = json.loads(js.read_text())
    ec = doc["engine_comparison"]
    assert doc["model"]["engine"] == "tf_keras"
    assert ec["totals"]["tf_keras"]["verified"] and ec["totals"]["keras3"]["verified"]
    assert "copied" in ec["weights"]
    rows = {r["id"]: r for r in ec["rows"]}
    assert set(rows) == {"compiled/s", "compiled/p", "activity/s", "regularizer/s/kernel"}
    assert all(r["note"] == "same" for r in rows.values()), rows  # same weights, no randomness: same numbers
    assert {"ENGINE_DIFF_ACTIVITY_NORMALISATION", "ENGINE_DIFF_PER_OUTPUT_LOGS"} <= {d["code"] for d in ec["differences"]}
    page = html.read_text()
    assert 'id="engines"' in page and "tf_keras 2." in page


def test_compare_engines_needs_a_module_factory(tmp_path):
    one_line_error(*cli_run("report", "lossmap.examples:multitask", "--compare-engines", "-o",
                            tmp_path / "x.html")[::2], "def multitask(keras)")
