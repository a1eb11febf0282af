"""Where Keras changes the loss without an error (lossmap.surprises): each finding on a model that shows it,
its numbers checked against Keras's own compute_loss / train_step / fit, on both engines where they behave the
same and as the engine difference where they do not; each cited line found in the installed source.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import keras

import lossmap

tf_keras = pytest.importorskip("tf_keras")
import tensorflow as tf  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

MODULES = {"keras3": keras, "tf_keras": tf_keras}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def f32(a):
    return np.asarray(a, dtype="float32")


def analyse(model, batch, **kw):
    kw.setdefault("gradients", False)
    a = lossmap.analyse(model, batch, sources=False, **kw)
    assert a.total.verified is True, a.total
    return a


def found(a, code):
    return [f for f in a.findings if f.code == code]


def one(a, code):
    fs = found(a, code)
    assert len(fs) == 1, [(f.code, f.message) for f in a.findings]
    return fs[0]


def number(message, before):
    """The number printed right after `before` in a finding's message."""
    hit = re.search(re.escape(before) + r"\s*(-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)", message)
    assert hit, (before, message)
    return float(hit.group(1))


def check_cited(message, *keys):
    """Each key's statement was found in the installed source, and the message points at its path:line."""
    from lossmap.engine_diff import cite

    for key in keys:
        c = cite(key)
        assert c["found"], c
        module = __import__(c["module"], fromlist=["_"])
        with open(module.__file__, encoding="utf-8") as fh:
            assert fh.read().splitlines()[c["line"] - 1].strip() == c["text"]
        assert f"{c['path']}:{c['line']}" in message, (key, message)


def compute_loss(model, x, y, sw=None):
    x = tf.constant(x)
    y = tf.nest.map_structure(tf.constant, y)
    sw = None if sw is None else tf.constant(sw)
    return float(model.compute_loss(x=x, y=y, y_pred=model(x, training=True), sample_weight=sw))


def test_every_new_citation_is_found_in_the_installed_source():
    from lossmap.engine_diff import cite
    from lossmap.engines.keras3 import citations as k3
    from lossmap.engines.tf_keras import citations as tfk

    for key in list(k3._surprise_specs()) + list(tfk._surprise_specs()):
        c = cite(key)
        assert c["found"] and c["line"], c


# ---------------------------------------------------------------- per-sample weights on a per-timestep loss
def sequence_model(k, steps=4):
    k.utils.set_random_seed(1)
    inp = k.Input((steps, 2), name="x")
    return k.Model(inp, k.layers.Dense(3, name="seq")(inp), name="sequence")


def compiled(model):
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_timestep_weights_keras3_broadcast_along_time_when_batch_equals_time():
    rng = np.random.default_rng(0)
    x, y = f32(rng.normal(size=(4, 4, 2))), f32(rng.normal(size=(4, 4, 3)))
    sw = f32([1.0, 0.5, 2.0, 1.0])
    model = compiled(sequence_model(keras))
    a = analyse(model, (x, y, sw))
    f = one(a, "SAMPLE_WEIGHT_ON_TIMESTEPS")
    assert f.level == "error" and f.term == "compiled/seq"
    assert number(f.message, "trains on") == pytest.approx(compute_loss(model, x, y, sw), rel=1e-5)
    # row weighting, as meant: Keras's own compute_loss with the weights expanded to (batch, time)
    rows = compute_loss(model, x, y, np.repeat(sw[:, None], 4, axis=1))
    assert number(f.message, "gives") == pytest.approx(rows, rel=1e-5)
    assert compute_loss(model, x, y, sw[:, None]) == pytest.approx(rows, rel=1e-6)  # the fix it writes
    check_cited(f.message, "k3_weight_multiply", "tf_expand_weights")
    assert not found(analyse(model, (x, y, sw[:, None])), "SAMPLE_WEIGHT_ON_TIMESTEPS")
    assert not found(a, "SAMPLE_WEIGHTS_DILUTE")  # one cause, named once


def test_timestep_weights_tf_keras_weights_rows_and_says_what_keras3_would_do():
    rng = np.random.default_rng(0)
    x, y = f32(rng.normal(size=(4, 4, 2))), f32(rng.normal(size=(4, 4, 3)))
    sw = f32([1.0, 0.5, 2.0, 1.0])
    model = compiled(sequence_model(tf_keras))
    f = one(analyse(model, (x, y, sw)), "SAMPLE_WEIGHT_ON_TIMESTEPS")
    assert f.level == "info"
    assert number(f.message, "as meant:") == pytest.approx(compute_loss(model, x, y, sw), rel=1e-5)
    twin = compiled(sequence_model(keras))
    twin.set_weights(model.get_weights())
    assert number(f.message, "every sample:") == pytest.approx(compute_loss(twin, x, y, sw), rel=1e-5)
    check_cited(f.message, "k3_weight_multiply", "tf_expand_weights")
    # another batch size: Keras 3 raises where tf_keras weights rows
    x6, y6 = f32(rng.normal(size=(6, 4, 2))), f32(rng.normal(size=(6, 4, 3)))
    f6 = one(analyse(model, (x6, y6, f32(np.arange(1, 7)))), "SAMPLE_WEIGHT_ON_TIMESTEPS")
    assert "fails" in f6.message
    with pytest.raises(Exception, match="ncompatible shapes"):
        compute_loss(twin, x6, y6, f32(np.arange(1, 7)))


# ---------------------------------------------------------------- a list `loss` on dict outputs
def two_heads(k, loss, loss_weights):
    k.utils.set_random_seed(2)
    inp = k.Input((3,), name="x")
    zeta = k.layers.Dense(1, name="zeta")(inp)
    alpha = k.layers.Dense(1, name="alpha")(inp)
    model = k.Model(inp, {"zeta": zeta, "alpha": alpha})  # written zeta first; sorted, alpha is first
    model.compile(optimizer="sgd", loss=loss, loss_weights=loss_weights)
    return model


@pytest.mark.parametrize("engine", list(MODULES))
def test_list_loss_on_dict_outputs_says_what_each_output_got(engine):
    k = MODULES[engine]
    rng = np.random.default_rng(3)
    x = f32(rng.normal(size=(8, 3)))
    y = {"zeta": f32(rng.normal(size=(8, 1))), "alpha": f32(rng.normal(size=(8, 1)))}
    model = two_heads(k, ["mse", "mae"], [0.3, 0.7])
    a = analyse(model, (x, y))
    f = one(a, "LIST_LOSS_ON_DICT_OUTPUTS")
    assert f.level == "warning"
    assert "'zeta' got mean_absolute_error x 0.7 (meant: mean_squared_error x 0.3)" in f.message
    assert "'alpha' got mean_squared_error x 0.3 (meant: mean_absolute_error x 0.7)" in f.message
    assert a.term("compiled/zeta").fn == "mean_absolute_error" and a.term("compiled/zeta").weight == 0.7
    assert number(f.message, "The compiled loss is") == pytest.approx(compute_loss(model, x, y), rel=1e-5)
    meant = two_heads(k, {"zeta": "mse", "alpha": "mae"}, {"zeta": 0.3, "alpha": 0.7})
    assert number(f.message, "code's order it would be") == pytest.approx(compute_loss(meant, x, y), rel=1e-5)
    check_cited(f.message, "tf_flatten_losses" if engine == "tf_keras" else "k3_pack_list_loss")
    assert not found(analyse(meant, (x, y)), "LIST_LOSS_ON_DICT_OUTPUTS")
    # a dict `loss` with a list of weights: the weights alone go by the sorted keys
    weights_only = two_heads(k, {"zeta": "mse", "alpha": "mae"}, [0.3, 0.7])
    f = one(analyse(weights_only, (x, y)), "LIST_LOSS_ON_DICT_OUTPUTS")
    assert "'zeta' got mean_squared_error x 0.7 (meant: mean_squared_error x 0.3)" in f.message
    assert number(f.message, "code's order it would be") == pytest.approx(compute_loss(meant, x, y), rel=1e-5)
    check_cited(f.message, "tf_flatten_loss_weights" if engine == "tf_keras" else "k3_pack_list_weights")


# ---------------------------------------------------------------- sample weights under sum_over_batch_size
def regression(k, loss="mse"):
    k.utils.set_random_seed(4)
    inp = k.Input((3,), name="x")
    model = k.Model(inp, k.layers.Dense(1, name="out")(inp))
    model.compile(optimizer="sgd", loss=loss)
    return model


@pytest.mark.parametrize("engine", list(MODULES))
def test_zero_sample_weights_dilute_sum_over_batch_size(engine):
    k = MODULES[engine]
    rng = np.random.default_rng(5)
    x, y = f32(rng.normal(size=(8, 3))), f32(rng.normal(size=(8, 1)))
    sw = f32([1, 1, 0, 0, 2, 1, 0, 1])
    model = regression(k)
    f = one(analyse(model, (x, y, sw)), "SAMPLE_WEIGHTS_DILUTE")
    assert f.level == "warning" and "3 of 8 samples have weight 0" in f.message
    assert number(f.message, "trains on") == pytest.approx(compute_loss(model, x, y, sw), rel=1e-5)
    if engine == "keras3":  # Keras's own reduction that divides by the weights' sum
        other = regression(k, keras.losses.MeanSquaredError(reduction="mean_with_sample_weight"))
        expected = compute_loss(other, x, y, sw)
    else:  # tf_keras has none: its own "sum", divided by the weights' sum
        p = model(tf.constant(x))
        expected = float(k.losses.MeanSquaredError(reduction="sum")(y, p, sample_weight=sw)) / float(sw.sum())
    assert number(f.message, "weights' sum it would be") == pytest.approx(expected, rel=1e-5)
    check_cited(f.message, "tf_divisor_size" if engine == "tf_keras" else "k3_divisor_size")
    assert one(analyse(model, (x, y, f32([1, 2, 1, 1, 2, 1, 1, 1]))), "SAMPLE_WEIGHTS_DILUTE").level == "info"
    assert not found(analyse(model, (x, y, f32(np.full(8, 0.5)))), "SAMPLE_WEIGHTS_DILUTE")


# ---------------------------------------------------------------- layers a regularizer missed
def mobile(k, depthwise_regularized=False):
    k.utils.set_random_seed(6)
    reg = k.regularizers.L2(0.01)
    extra = {"depthwise_regularizer": k.regularizers.L2(0.01)} if depthwise_regularized else {}
    inp = k.Input((6, 6, 2), name="img")
    h = k.layers.Conv2D(4, 3, padding="same", kernel_regularizer=reg, name="c1")(inp)
    h = k.layers.DepthwiseConv2D(3, padding="same", name="dw1", **extra)(h)
    h = k.layers.Conv2D(4, 1, kernel_regularizer=reg, name="c2")(h)
    h = k.layers.DepthwiseConv2D(3, padding="same", name="dw2", **extra)(h)
    h = k.layers.Conv2D(4, 1, kernel_regularizer=reg, name="c3")(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    model = k.Model(inp, k.layers.Dense(1, name="head")(h))
    model.compile(optimizer="sgd", loss="mse")
    return model


@pytest.mark.parametrize("engine", list(MODULES))
def test_a_regularizer_that_missed_depthwise_convolutions_is_named(engine):
    k = MODULES[engine]
    rng = np.random.default_rng(7)
    x, y = f32(rng.normal(size=(2, 6, 6, 2))), f32(rng.normal(size=(2, 1)))
    model = mobile(k)
    f = one(analyse(model, (x, y)), "REGULARIZER_GAP")
    assert f.level == "warning"
    assert "3 of 5 trainable convolution layers" in f.message
    assert "dw1 (DepthwiseConv2D), dw2 (DepthwiseConv2D)" in f.message
    assert "depthwise_regularizer= on DepthwiseConv2D" in f.message
    fixed = mobile(k, depthwise_regularized=True)
    fixed.set_weights(model.get_weights())
    added = compute_loss(fixed, x, y) - compute_loss(model, x, y)  # Keras's own loss, with and without
    assert number(f.message, "would add") == pytest.approx(added, rel=1e-4)
    check_cited(f.message, "tf_regularizer_added" if engine == "tf_keras" else "k3_regularizer_skip")
    assert not found(analyse(fixed, (x, y)), "REGULARIZER_GAP")


def test_a_dense_layer_left_out_is_named_but_an_unregularized_head_alone_is_not():
    def mlp(left_out):
        keras.utils.set_random_seed(8)
        inp = keras.Input((4,), name="x")
        h = inp
        for i in range(5):
            reg = None if f"d{i}" in left_out else keras.regularizers.L2(1e-3)
            h = keras.layers.Dense(4, activation="tanh", kernel_regularizer=reg, name=f"d{i}")(h)
        model = keras.Model(inp, keras.layers.Dense(1, name="head")(h))
        model.compile(optimizer="sgd", loss="mse")
        return model

    batch = (f32(np.ones((2, 4))), f32(np.ones((2, 1))))
    f = one(analyse(mlp({"d3"}), batch), "REGULARIZER_GAP")
    assert "4 of 6 trainable dense layers" in f.message  # the head is a dense layer too
    assert "d3 (Dense)" in f.message and "head (Dense)" in f.message and "produces a model output" in f.message
    assert not found(analyse(mlp(set()), batch), "REGULARIZER_GAP")  # only the head: often on purpose


# ---------------------------------------------------------------- names a traced fit rejects
def test_names_that_break_fit_are_an_error_before_fit_fails():
    keras.utils.set_random_seed(9)
    x, y = f32(np.ones((4, 3))), f32(np.ones((4, 1)))

    def build(layer, loss):
        inp = keras.Input((3,), name="x")
        h = keras.layers.Dense(2, name=layer)(inp)
        model = keras.Model(inp, keras.layers.Dense(1, name="out")(h))
        model.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError(name=loss))
        return model

    model = build("my layer", "sq err")
    f = one(analyse(model, (x, y)), "NAME_BREAKS_FIT")
    assert f.level == "error" and "layer 'my layer'" in f.message and "loss 'sq err'" in f.message
    check_cited(f.message, "k3_layer_scope", "k3_loss_scope", "k3_graph_scope_check")
    with pytest.raises(ValueError, match="is not a valid scope name"), _keras_scopes_kept():
        model.fit(x, y, epochs=1, verbose=0)  # what the finding says, measured
    assert "'my layer' -> 'my_layer'" in f.message
    renamed = build("my_layer", "sq_err")
    assert not found(analyse(renamed, (x, y)), "NAME_BREAKS_FIT")
    renamed.fit(x, y, epochs=1, verbose=0)


class _keras_scopes_kept:
    """Keras 3's name-scope stack as it was: a fit that fails entering a scope leaves its model's scope open,
    and every layer built afterwards in the process would get a path under it."""

    def __enter__(self):
        from keras.src.backend.common import global_state

        self.stack = list(global_state.get_global_attribute("name_scope_stack") or [])

    def __exit__(self, *exc):
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("name_scope_stack", self.stack)
        return False


def test_a_tf_keras_loss_name_that_breaks_fit():
    model = regression(tf_keras, tf_keras.losses.MeanSquaredError(name="sq err"))
    x, y = f32(np.ones((4, 3))), f32(np.ones((4, 1)))
    f = one(analyse(model, (x, y)), "NAME_BREAKS_FIT")
    assert "loss 'sq err'" in f.message
    check_cited(f.message, "tf_loss_scope", "k3_graph_root_scope_check")
    with pytest.raises(ValueError, match="not a valid root scope name"):
        model.fit(x, y, epochs=1, verbose=0)


# ---------------------------------------------------------------- mixed_float16 loss scaling
class _Keras3NoScale(keras.Model):
    """A train_step override as the Keras guides write it, minus `scale_loss`."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss}


class _Keras3Scaled(keras.Model):
    """The same step with `scale_loss`, as Keras's own train_step does it."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss}


class _TfKerasNoScale(tf_keras.Model):
    """tf_keras's version, minus `get_scaled_loss` / `get_unscaled_gradients`."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss}


@pytest.fixture
def mixed_float16():
    """Both global dtype policies mixed_float16 for one test, then exactly as they were."""
    from keras.src.backend.common import global_state

    before = global_state.get_global_attribute("dtype_policy"), tf_keras.mixed_precision.global_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        global_state.set_global_attribute("dtype_policy", before[0])
        tf_keras.mixed_precision.set_global_policy(before[1])


def mixed_model(k, cls=None):
    k.utils.set_random_seed(10)
    inp = k.Input((3,), name="x")
    h = k.layers.Dense(4, name="h")(inp)
    model = (cls or k.Model)(inp, k.layers.Dense(1, name="out", dtype="float32")(h))
    model.compile(optimizer=k.optimizers.SGD(learning_rate=0.1), loss="mse")
    return model


MIXED_BATCH = (f32(np.linspace(-1, 1, 24).reshape(8, 3)), f32(np.linspace(0, 2, 8).reshape(8, 1)))


@pytest.mark.parametrize("engine", list(MODULES))
def test_keras_own_step_multiplies_the_loss_by_the_loss_scale(engine, mixed_float16):
    k = MODULES[engine]
    model = mixed_model(k)
    x, y = MIXED_BATCH
    f = one(analyse(model, (x, y)), "MIXED_PRECISION_LOSS_SCALE")
    assert f.level == "info"
    loss = tf.constant(compute_loss(model, x, y))
    scaled = model.optimizer.scale_loss(loss) if engine == "keras3" else model.optimizer.get_scaled_loss(loss)
    assert number(f.message, "32768 =") == pytest.approx(float(scaled), rel=1e-4)
    keys = ("tf_wrap_loss_scale", "tf_minimize", "tf_scaled_loss") if engine == "tf_keras" else \
        ("k3_wrap_loss_scale", "k3_scale_loss", "k3_unscale_gradients")
    check_cited(f.message, *keys)


def _one_update(model, x, y):
    """The kernel change of one real train_step, and the gradient of the loss at the start."""
    kernel = model.get_layer("out").kernel
    with tf.GradientTape() as tape:
        loss = model.compute_loss(tf.constant(x), tf.constant(y), model(tf.constant(x), training=True))
    g = tape.gradient(loss, kernel).numpy()
    before = kernel.numpy().copy()
    model.train_step((tf.constant(x), tf.constant(y)))
    return kernel.numpy() - before, g


def test_a_keras3_step_without_scale_loss_gets_gradients_divided_by_the_scale(mixed_float16):
    x, y = MIXED_BATCH
    model = mixed_model(keras, _Keras3NoScale)
    a = analyse(model, (x, y), gradients=True)
    f = one(a, "LOSS_SCALE_SKIPPED")
    assert f.level == "error" and "1/32768 of the gradient" in f.message
    norm = a.gradients["total_norm"]
    assert number(f.message, "is applied as") == pytest.approx(norm / 32768, rel=1e-4)
    check_cited(f.message, "k3_scale_loss", "k3_unscale_gradients", "tf_apply_unscaled")
    step, g = _one_update(model, x, y)  # Keras's own: SGD(0.1) moves the kernel by 0.1 * g / 32768
    # float32 kernels near 0.5 resolve changes to about 6e-8: the point is 1/32768, not 1
    np.testing.assert_allclose(step, -0.1 * g / 32768, rtol=2e-2, atol=1e-7)
    assert not found(analyse(mixed_model(keras, _Keras3Scaled), (x, y)), "LOSS_SCALE_SKIPPED")


def test_a_tf_keras_step_without_get_scaled_loss_applies_gradients_as_given(mixed_float16):
    x, y = MIXED_BATCH
    model = mixed_model(tf_keras, _TfKerasNoScale)
    f = one(analyse(model, (x, y)), "LOSS_SCALE_SKIPPED")
    assert f.level == "warning" and "the update is the plain gradient" in f.message
    check_cited(f.message, "tf_minimize", "tf_apply_unscaled", "k3_unscale_gradients")
    step, g = _one_update(model, x, y)
    np.testing.assert_allclose(step, -0.1 * g, rtol=2e-2, atol=1e-7)


# ---------------------------------------------------------------- replicas (a subprocess: 2 logical CPUs)
REPLICAS = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, tf_keras, lossmap

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x = np.linspace(-1, 1, 24, dtype="float32").reshape(8, 3)
y = np.linspace(0, 1, 8, dtype="float32").reshape(8, 1)
xt, yt = tf.constant(x), tf.constant(y)


class Keras3Plain(keras.Model):
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean((y - y_pred) ** 2) + keras.ops.sum(self.losses)


class Keras3LossObject(keras.Model):
    mse = keras.losses.MeanSquaredError()  # a mean reduction: it divides by the replicas itself

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.mse(y, y_pred) + keras.ops.sum(self.losses)


class TfKerasPlain(tf_keras.Model):
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        return tf.reduce_mean((y - y_pred) ** 2) + tf.add_n(self.losses)


def build(k, cls):
    with strategy.scope():
        k.utils.set_random_seed(0)
        inp = k.Input((3,), name="x")
        out = k.layers.Dense(1, name="out", kernel_regularizer=k.regularizers.L2(0.1))(inp)
        m = cls(inp, out)
        m.compile(optimizer=k.optimizers.SGD(learning_rate=0.1), loss="mse")
        m.optimizer.build(m.trainable_variables)  # built in the scope: lossmap's runs reuse it
    return m


def plain(m):
    return tf.reduce_mean((yt - m(xt)) ** 2) + tf.add_n(m.losses)


out = {}
for name, k, custom in (("keras3", keras, Keras3Plain), ("tf_keras", tf_keras, TfKerasPlain)):
    kinds = (("compiled", k.Model), ("custom", custom)) + ((("loss_object", Keras3LossObject),) if k is keras else ())
    for kind, cls in kinds:
        m = build(k, cls)
        a = lossmap.analyse(m, (x, y), sources=False, gradients=False)
        per = strategy.run(lambda: m.compute_loss(xt, yt, m(xt, training=True)))
        row = {"findings": [[f.code, f.level, f.message] for f in a.findings],
               "replica": [float(v) for v in strategy.experimental_local_results(per)]}
        if name == "keras3" and kind != "loss_object":  # one real fit step of the global batch, 4 samples a replica
            kernel = m.get_layer("out").kernel
            with tf.GradientTape() as tape:
                loss = plain(m)  # the mean over the global batch (both models' loss is this sum)
            g = tape.gradient(loss, kernel).numpy()
            before = kernel.numpy().copy()
            m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
            row["update_over_sgd"] = ((kernel.numpy() - before) / (-0.1 * g)).ravel().tolist()
        out[name + "/" + kind] = row
print("RESULT" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    script = tmp_path_factory.mktemp("replicas") / "replicas.py"  # a file: lossmap reads the classes' source
    script.write_text(REPLICAS, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stderr[-3000:]
    return json.loads(line[len("RESULT"):])


def _by_code(row):
    return {code: (level, message) for code, level, message in row["findings"]}


@pytest.mark.parametrize("engine", list(MODULES))
def test_keras_divides_its_losses_by_the_replicas(replicas, engine):
    row = replicas[f"{engine}/compiled"]
    level, message = _by_code(row)["DISTRIBUTION_LOSS_SCALING"]
    assert level == "info" and "UNSCALED_REPLICA_LOSS" not in _by_code(row)
    # what each replica differentiates, as Keras's own compute_loss gives it inside strategy.run
    assert number(message, "the replica differentiates") == pytest.approx(row["replica"][0], rel=1e-5)
    assert number(message, "the loss is") == pytest.approx(2 * row["replica"][0], rel=1e-5)
    if engine == "keras3":
        assert row["update_over_sgd"] == pytest.approx([1.0] * 3, rel=1e-3)  # fit: the gradient of the mean
        check_cited(message, "k3_scale", "k3_scale_additional", "k3_unscale_logs")
    else:
        check_cited(message, "tf_scale", "tf_scale_regularization")


@pytest.mark.parametrize("engine", list(MODULES))
def test_a_plain_mean_in_compute_loss_counts_once_per_replica(replicas, engine):
    row = replicas[f"{engine}/custom"]
    level, message = _by_code(row)["UNSCALED_REPLICA_LOSS"]
    assert level == "warning" and "regularizer/out/kernel" in message
    u = number(message, "regularizer/out/kernel (")
    assert u == pytest.approx(row["replica"][0], rel=1e-5)  # not divided: each replica's own value
    assert number(message, "0 + 2 x") == pytest.approx(u, rel=1e-5)
    if engine == "keras3":
        # Keras's own fit: the kernel moves by twice the gradient of the loss, summed over 2 replicas
        assert row["update_over_sgd"] == pytest.approx([2.0] * 3, rel=1e-3)


def test_a_keras3_loss_object_divides_itself_by_the_replicas(replicas):
    codes = _by_code(replicas["keras3/loss_object"])
    _, unscaled = codes["UNSCALED_REPLICA_LOSS"]
    assert "regularizer/out/kernel" in unscaled and "custom/" not in unscaled  # only the raw model.losses read
    _, scaling = codes["DISTRIBUTION_LOSS_SCALING"]
    per_replica = replicas["keras3/loss_object"]["replica"][0]  # Keras: mse / 2 + the regularizer
    assert number(scaling, "the replica differentiates") == pytest.approx(per_replica, rel=1e-5)


# ---------------------------------------------------------------- noise that is no longer raised
def test_a_weight_regularizer_against_the_data_term_is_no_gradient_conflict():
    """L2 pulls the one kernel towards 0 while the data pulls it up (cosine -1): weight decay, not a conflict."""
    inp = keras.Input((1,), name="x")
    lin = keras.layers.Dense(1, use_bias=False, kernel_regularizer=keras.regularizers.L2(0.5), name="lin")
    model = keras.Model(inp, lin(inp))
    lin.set_weights([f32([[1.0]])])
    model.compile(optimizer="sgd", loss="mse")
    a = analyse(model, (f32([[1.0], [2.0]]), f32([[3.0], [6.0]])), gradients=True)
    decay = next(t.id for t in a.terms if t.kind == "weight_regularizer")
    from lossmap.gradient_layout import pairs

    cosines = [p["cosine"] for p in pairs(a.gradients) if decay in (p["a"], p["b"])]
    assert cosines and min(cosines) < -0.5  # the rule's threshold is crossed ...
    assert not found(a, "GRADIENT_CONFLICT")  # ... and no conflict is raised for weight decay
    assert all(f.level == "info" for f in found(a, "GRADIENT_DROWNED"))


# ---------------------------------------------------------------- an override this backend never calls
def test_a_stateless_compute_loss_override_is_named_where_the_trainer_never_calls_it():
    """On TensorFlow, train_step takes its loss from `_compute_loss`: the override adds nothing, and the
    finding cites the trainer's line and the loss the real step computed (without the penalty)."""
    from lossmap.examples.backend_differences import jax_only_penalty

    x, y = f32([[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 2.0, 1.0]]), f32([[1.0, 0.0], [0.0, 1.0]])
    a = analyse(jax_only_penalty(), (x, y))
    assert a.total.verified and not a.model.custom_compute_loss
    (f,) = found(a, "OVERRIDE_NEVER_CALLED")
    assert f.level == "warning" and f.message.startswith("JaxOnlyPenalty.stateless_compute_loss overrides")
    assert re.search(r"backend/tensorflow/trainer\.py:\d+", f.message), f.message
    assert f"{a.total.train_step:.6g}" in f.message
    inp = keras.Input((4,), name="x")
    assert not found(analyse(compiled(keras.Model(inp, keras.layers.Dense(2)(inp))), (x, y)), "OVERRIDE_NEVER_CALLED")
