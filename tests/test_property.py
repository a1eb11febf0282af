"""Property test: for random small functional Keras 3 models, lossmap's reproduced
total equals Keras's `compute_loss` and `train_step` losses, and the model (weights
and optimizer state) is left bit for bit as it was.

Each example is a plain-data spec (drawn by `model_specs`) that `build_model` turns
into a compiled model: one or two inputs, a Dense trunk (sometimes BatchNormalization,
Dropout, an `add_loss` layer with a scalar or a per-sample tensor), then 1-4 Dense
heads returned as a single tensor, a list or a dict (names never in alphabetical
order; dict keys sometimes differ from layer names), each scored by a built-in loss
object with a random reduction ("sum_over_batch_size", "sum", "mean_with_sample_weight")
and options (from_logits with a linear head or a sigmoid/softmax head, label
smoothing, focal gamma/alpha, Huber delta), loss weights as list/dict/float or none,
L1/L2/L1L2/Orthogonal kernel and activity regularizers, SGD/Adam/RMSprop built or
not. The batch is lossmap's synthetic one or an .npz written here with valid labels
for each loss and sample weights for some outputs.

The same specs run on tf_keras 2.x too (skipped if tf_keras is not installed), restricted
by `for_tf_keras` to what both engines express the same way: no "mean_with_sample_weight"
reduction (tf_keras lacks it), no non-scalar add_loss (an engine difference), no activity
OrthogonalRegularizer by rows (tf_keras cannot build it); everything else is shared.

Every loss leads one parametrized case per engine (so each is covered however short the
run); each case has its own fixed seed, so CI is reproducible, and the tf_keras case draws
the same specs as the Keras 3 one. CI runs 51 Keras 3 examples (3 per loss), 34 tf_keras
examples (2 per loss) and 4 fixed regression cases in each engine: about 56 s on 2 CPU
cores (Keras 3.15.1, tf_keras 2.21, TensorFlow 2.21). LOSSMAP_PROPERTY_EXAMPLES=N runs about
N Keras 3 examples and 2N/3 tf_keras ones instead, shared out between the 17 cases (340
Keras 3 examples took 5 min 20 s when measured, before the tf_keras cases were added).
"""
import os
import pathlib
import tempfile

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


ENGINES = ("keras3", "tf_keras")

REDUCTIONS = ("sum_over_batch_size", "sum", "mean_with_sample_weight")

# Output names: never in alphabetical order when there are several.
NAME_POOL = ("zeta", "alpha", "mid", "beta", "omega", "delta")

LOSSES = (
    "mse", "mae", "mape", "msle", "huber", "log_cosh", "cosine_similarity", "poisson",
    "kl_divergence", "hinge", "squared_hinge", "categorical_hinge", "binary_crossentropy",
    "categorical_crossentropy", "sparse_categorical_crossentropy", "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
)

# Which labels each loss needs (for the .npz batch).
LABELS = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "onehot",
    "categorical_focal_crossentropy": "onehot",
    "categorical_hinge": "onehot",
    "binary_crossentropy": "binary",
    "binary_focal_crossentropy": "binary",
    "hinge": "binary",
    "squared_hinge": "binary",
    "kl_divergence": "distribution",
    "poisson": "positive",
    "msle": "positive",
    "mape": "positive",
}

# Every loss leads one parametrized case, so even a short CI run covers each of them;
# LOSSMAP_PROPERTY_EXAMPLES is the total, shared out between the cases.
TOTAL_EXAMPLES = int(os.environ.get("LOSSMAP_PROPERTY_EXAMPLES", "51"))
EXAMPLES_PER_LOSS = max(1, -(-TOTAL_EXAMPLES // len(LOSSES)))
# tf_keras runs two thirds as many (at least one per loss): the first of the same draws.
TF_KERAS_EXAMPLES_PER_LOSS = max(1, 2 * EXAMPLES_PER_LOSS // 3)

CLASSIFIERS = {"sparse_categorical_crossentropy", "categorical_crossentropy",
               "categorical_focal_crossentropy", "categorical_hinge", "kl_divergence",
               "cosine_similarity"}


# ---------------------------------------------------------------- strategies
small_factor = st.floats(min_value=1e-4, max_value=0.3, allow_nan=False, allow_infinity=False)


@st.composite
def regularizers(draw, units_in, units_out):
    """None, or a spec of a built-in regularizer for a (units_in, units_out) matrix
    (a Dense kernel, or a layer's (batch, units) output for activity regularizers).
    OrthogonalRegularizer needs two rows (or columns) to compare, else Keras divides by 0."""
    kinds = ["none", "L1", "L2", "L1L2"]
    modes = [m for m, n in (("rows", units_in), ("columns", units_out)) if n >= 2]
    if modes:
        kinds.append("Orthogonal")
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "L1":
        return ("L1", {"l1": draw(small_factor)})
    if kind == "L2":
        return ("L2", {"l2": draw(small_factor)})
    if kind == "L1L2":
        return ("L1L2", {"l1": draw(st.sampled_from([0.0]) | small_factor),
                         "l2": draw(st.sampled_from([0.0]) | small_factor)})
    return ("OrthogonalRegularizer", {"factor": draw(small_factor), "mode": draw(st.sampled_from(modes))})


@st.composite
def output_specs(draw, name, hidden, batch_size, use_file, loss=None):
    if loss is None:
        loss = draw(st.sampled_from(LOSSES))
    if loss in CLASSIFIERS:
        units = draw(st.integers(2, 4))
    else:
        units = draw(st.integers(1, 3))
    kwargs = {"reduction": draw(st.sampled_from(REDUCTIONS))}
    activation = draw(st.sampled_from(["linear", "tanh"]))
    if loss == "huber":
        kwargs["delta"] = draw(st.floats(0.2, 2.0))
    elif loss == "poisson":
        activation = "softplus"
    elif loss == "kl_divergence":
        activation = "softmax"
    elif loss in ("binary_crossentropy", "binary_focal_crossentropy"):
        logits = draw(st.booleans())
        kwargs["from_logits"] = logits
        activation = "linear" if logits else "sigmoid"
        if draw(st.booleans()):
            kwargs["label_smoothing"] = draw(st.floats(0.0, 0.3))
        if loss == "binary_focal_crossentropy":
            kwargs["gamma"] = draw(st.sampled_from([0.0, 1.0, 2.0, 3.5]))
            kwargs["apply_class_balancing"] = draw(st.booleans())
            kwargs["alpha"] = draw(st.floats(0.1, 0.9))
    elif loss in ("categorical_crossentropy", "categorical_focal_crossentropy",
                  "sparse_categorical_crossentropy"):
        logits = draw(st.booleans())
        kwargs["from_logits"] = logits
        activation = "linear" if logits else "softmax"
        if loss != "sparse_categorical_crossentropy" and draw(st.booleans()):
            kwargs["label_smoothing"] = draw(st.floats(0.0, 0.3))
        if loss == "categorical_focal_crossentropy":
            kwargs["gamma"] = draw(st.sampled_from([0.0, 1.0, 2.0, 3.5]))
            kwargs["alpha"] = draw(st.floats(0.1, 0.9))
    return {
        "name": name,
        "layer_name": draw(st.sampled_from([name, f"{name}_head"])),
        "loss": loss,
        "kwargs": kwargs,
        "units": units,
        "activation": activation,
        "kernel_regularizer": draw(regularizers(hidden, units)),
        "activity_regularizer": draw(st.none() | regularizers(batch_size, units)),
        "sparse_label_rank": draw(st.sampled_from([1, 2])),
        "sample_weight": draw(st.sampled_from([None, "uniform", "with_zeros", "ones"])) if use_file else None,
    }


@st.composite
def model_specs(draw, lead_loss=None):
    """A model spec; `lead_loss`, if given, is the loss of one of its outputs."""
    batch_size = draw(st.integers(1, 8))
    n_inputs = draw(st.integers(1, 2))
    input_structure = "single" if n_inputs == 1 else draw(st.sampled_from(["list", "dict"]))
    input_dims = [draw(st.integers(2, 5)) for _ in range(n_inputs)]
    hidden = draw(st.integers(2, 6))
    n_outputs = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from(NAME_POOL), min_size=n_outputs, max_size=n_outputs, unique=True))
    if n_outputs > 1 and names == sorted(names):
        names = names[::-1]
    structure = draw(st.sampled_from(["single", "list", "dict"] if n_outputs == 1 else ["list", "dict"]))
    if structure == "list":
        container = draw(st.sampled_from(["list", "dict"]))
    elif structure == "dict":
        container = "dict"
    else:
        container = draw(st.sampled_from(["bare", "list", "dict"]))
    use_file = draw(st.booleans())  # an .npz batch (labels, sample weights) or the synthetic one
    lead = draw(st.integers(0, n_outputs - 1))
    outputs = [draw(output_specs(n, hidden, batch_size, use_file, lead_loss if i == lead else None))
               for i, n in enumerate(names)]
    weights_kind = draw(st.sampled_from(["none", "same", "float"] if structure == "single" else ["none", "same"]))
    weights = None
    if weights_kind != "none":
        weights = [draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]) | st.floats(0.01, 3.0)) for _ in outputs]
    add_loss = draw(st.sampled_from([None, "scalar", "tensor"]))
    return {
        "seed": draw(st.integers(0, 2**16)),
        "batch_size": batch_size,
        "input_structure": input_structure,
        "input_dims": input_dims,
        "hidden": hidden,
        "trunk_kernel_regularizer": draw(regularizers(sum(input_dims), hidden)),
        "trunk_activity_regularizer": draw(st.none() | regularizers(batch_size, hidden)),
        "batchnorm": draw(st.booleans()),
        "dropout": draw(st.none() | st.sampled_from([0.1, 0.3, 0.5])),
        "add_loss": add_loss,
        "add_loss_coeff": draw(st.floats(0.01, 1.0)),
        "structure": structure,
        "loss_container": container,
        "outputs": outputs,
        "loss_weights_kind": weights_kind,
        "loss_weights": weights,
        "use_file": use_file,
        "optimizer": draw(st.sampled_from(["sgd", "adam", "rmsprop"])),
        "optimizer_built": draw(st.booleans()),
    }


def for_tf_keras(spec):
    """`spec` restricted to what tf_keras 2.x expresses the same way (a copy; `spec` unchanged).

    Every loss class of LOSSES exists in tf_keras with the arguments drawn here (delta,
    from_logits, label_smoothing, gamma, alpha, apply_class_balancing), and so do the L1/L2/
    L1L2/Orthogonal regularizers, BatchNormalization, Dropout, sample weights and list/dict
    inputs and outputs. Two features differ by engine, not by lossmap:
    - tf_keras has no "mean_with_sample_weight" reduction (its Reduction is auto/none/sum/
      sum_over_batch_size): such a loss gets "sum_over_batch_size";
    - a non-scalar `add_loss` tensor is summed by Keras 3 but fails in tf_keras's add_n with
      the scalar losses (ENGINE_DIFF, see test_tf_keras.py): it becomes a scalar add_loss.
    """
    spec = dict(spec, outputs=[dict(o, kwargs=dict(o["kwargs"])) for o in spec["outputs"]])
    for o in spec["outputs"]:
        if o["kwargs"].get("reduction") == "mean_with_sample_weight":
            o["kwargs"]["reduction"] = "sum_over_batch_size"
    if spec["add_loss"] == "tensor":
        spec["add_loss"] = "scalar"
    # - tf_keras's OrthogonalRegularizer needs static row/column counts (tf.eye(num_rows)): as an
    #   activity regularizer in mode "rows" (the batch, None while the functional model is built)
    #   the model cannot even be built in tf_keras; it is regularized by columns instead.
    def activity(reg, units):
        if reg is not None and reg[0] == "OrthogonalRegularizer" and reg[1]["mode"] == "rows":
            return (reg[0], dict(reg[1], mode="columns")) if units >= 2 else None
        return reg
    spec["trunk_activity_regularizer"] = activity(spec["trunk_activity_regularizer"], spec["hidden"])
    for o in spec["outputs"]:
        o["activity_regularizer"] = activity(o["activity_regularizer"], o["units"])
    return spec


# ---------------------------------------------------------------- building
def _regularizer(keras, spec):
    if spec is None:
        return None
    cls, config = spec
    return getattr(keras.regularizers, cls)(**config)


def _loss_object(keras, name, kwargs):
    classes = {
        "mse": "MeanSquaredError", "mae": "MeanAbsoluteError", "mape": "MeanAbsolutePercentageError",
        "msle": "MeanSquaredLogarithmicError", "huber": "Huber", "log_cosh": "LogCosh",
        "cosine_similarity": "CosineSimilarity", "poisson": "Poisson", "kl_divergence": "KLDivergence",
        "hinge": "Hinge", "squared_hinge": "SquaredHinge", "categorical_hinge": "CategoricalHinge",
        "binary_crossentropy": "BinaryCrossentropy", "categorical_crossentropy": "CategoricalCrossentropy",
        "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
        "binary_focal_crossentropy": "BinaryFocalCrossentropy",
        "categorical_focal_crossentropy": "CategoricalFocalCrossentropy",
    }
    return getattr(keras.losses, classes[name])(**kwargs)


def _add_loss_layer_class(keras):
    if hasattr(keras, "ops"):
        ops = keras.ops
    else:  # tf_keras: TensorFlow ops
        import tensorflow as tf

        class ops:
            mean, square, abs = staticmethod(tf.reduce_mean), staticmethod(tf.square), staticmethod(tf.abs)

    class AddLossLayer(keras.layers.Layer):
        def __init__(self, coeff, scalar, **kwargs):
            super().__init__(**kwargs)
            self.coeff = coeff
            self.scalar = scalar

        def call(self, x):
            if self.scalar:
                self.add_loss(self.coeff * ops.mean(ops.square(x)))
            else:
                self.add_loss(self.coeff * ops.abs(x))  # (batch, units): Keras sums it
            return x

    return AddLossLayer


def _module(engine):
    if engine == "tf_keras":
        import tf_keras
        return tf_keras
    import keras
    return keras


def build_model(spec, engine="keras3"):
    """The compiled model of `spec`, built with `keras` (Keras 3) or `tf_keras` (2.x)."""
    keras = _module(engine)
    keras.utils.set_random_seed(spec["seed"])
    input_names = ["feat_z", "feat_a"][: len(spec["input_dims"])]
    inputs = [keras.Input((d,), name=n) for n, d in zip(input_names, spec["input_dims"])]
    x = inputs[0] if len(inputs) == 1 else keras.layers.Concatenate(name="concat")(inputs)
    x = keras.layers.Dense(
        spec["hidden"], activation="tanh", name="trunk",
        kernel_regularizer=_regularizer(keras, spec["trunk_kernel_regularizer"]),
        activity_regularizer=_regularizer(keras, spec["trunk_activity_regularizer"]),
    )(x)
    if spec["batchnorm"]:
        x = keras.layers.BatchNormalization(name="bn")(x)
    if spec["dropout"]:
        x = keras.layers.Dropout(spec["dropout"], name="drop")(x)
    if spec["add_loss"]:
        layer_cls = _add_loss_layer_class(keras)
        x = layer_cls(spec["add_loss_coeff"], spec["add_loss"] == "scalar", name="penalty")(x)
    heads = []
    for o in spec["outputs"]:
        heads.append(keras.layers.Dense(
            o["units"], activation=o["activation"], name=o["layer_name"] if spec["structure"] == "dict" else o["name"],
            kernel_regularizer=_regularizer(keras, o["kernel_regularizer"]),
            activity_regularizer=_regularizer(keras, o["activity_regularizer"]),
        )(x))
    names = [o["name"] for o in spec["outputs"]]
    if spec["structure"] == "single":
        outputs = heads[0]
    elif spec["structure"] == "list":
        outputs = heads
    else:
        outputs = dict(zip(names, heads))
    model_inputs = inputs[0] if spec["input_structure"] == "single" else (
        inputs if spec["input_structure"] == "list" else dict(zip(input_names, inputs)))
    model = keras.Model(model_inputs, outputs, name="prop")

    losses = [_loss_object(keras, o["loss"], o["kwargs"]) for o in spec["outputs"]]
    container = spec["loss_container"]
    if container == "bare":
        loss = losses[0]
    elif container == "list":
        loss = losses
    else:
        loss = dict(zip(names, losses))
    weights = spec["loss_weights"]
    if weights is not None:
        if spec["loss_weights_kind"] == "float":
            weights = float(weights[0])
        elif container == "dict":
            weights = dict(zip(names, weights))
        else:
            weights = list(weights)
    optimizer = {"sgd": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
                 "adam": lambda: keras.optimizers.Adam(0.01),
                 "rmsprop": lambda: keras.optimizers.RMSprop(0.01)}[spec["optimizer"]]()
    model.compile(optimizer=optimizer, loss=loss, loss_weights=weights)
    if spec["optimizer_built"]:
        optimizer.build(model.trainable_variables)
        rng = np.random.default_rng(spec["seed"])
        for v in optimizer.variables:  # non-trivial optimizer state to be kept intact
            dtype = np.dtype(getattr(v.dtype, "as_numpy_dtype", v.dtype))  # tf_keras: a tf.DType
            if dtype == np.float32:
                v.assign(rng.uniform(0.0, 0.1, v.shape).astype("float32"))
            else:
                v.assign(np.asarray(rng.integers(1, 50), dtype))
    return model


def _labels(rng, kind, batch_size, units, sparse_rank):
    if kind == "sparse":
        ids = rng.integers(0, units, size=batch_size).astype("int32")
        return ids if sparse_rank == 1 else ids[:, None]
    if kind == "onehot":
        return np.eye(units, dtype="float32")[rng.integers(0, units, size=batch_size)]
    if kind == "binary":
        return rng.integers(0, 2, size=(batch_size, units)).astype("float32")
    if kind == "distribution":
        raw = rng.uniform(0.05, 1.0, size=(batch_size, units))
        return (raw / raw.sum(axis=-1, keepdims=True)).astype("float32")
    if kind == "positive":
        return rng.uniform(0.1, 2.0, size=(batch_size, units)).astype("float32")
    return rng.standard_normal((batch_size, units)).astype("float32")


def write_batch(spec, path):
    rng = np.random.default_rng(spec["seed"] + 1)
    b = spec["batch_size"]
    arrays = {}
    input_names = ["feat_z", "feat_a"][: len(spec["input_dims"])]
    for n, d in zip(input_names, spec["input_dims"]):
        arrays[f"x/{n}"] = rng.standard_normal((b, d)).astype("float32")
    single_out = len(spec["outputs"]) == 1
    for o in spec["outputs"]:
        y = _labels(rng, LABELS.get(o["loss"], "real"), b, o["units"], o["sparse_label_rank"])
        arrays["y" if single_out else f"y/{o['name']}"] = y
        sw = o["sample_weight"]
        if sw:
            w = {"uniform": lambda: rng.uniform(0.1, 2.0, b),
                 "with_zeros": lambda: rng.uniform(0.0, 2.0, b) * rng.integers(0, 2, b),
                 "ones": lambda: np.ones(b)}[sw]().astype("float32")
            arrays["sample_weight" if single_out else f"sample_weight/{o['name']}"] = w
    np.savez(path, **arrays)
    return str(path)


# ---------------------------------------------------------------- the property
def _snapshot(model):
    weights = [np.array(w, copy=True) for w in model.get_weights()]
    # Keras 3 variables have a path, tf_keras ones (tf.Variable) a name; tf_keras optimizers
    # have no `built`: their variable list (iteration only until built) tells it.
    opt = [(getattr(v, "path", None) or v.name, np.array(v.numpy(), copy=True)) for v in model.optimizer.variables]
    return weights, opt, getattr(model.optimizer, "built", None)


def _same_arrays(a, b):
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))


def check_spec(spec, tmp_dir, engine="keras3"):
    """The property, for one model spec, in one engine."""
    import lossmap

    keras = _module(engine)
    keras.backend.clear_session()  # one model per example: keep memory flat
    model = build_model(spec, engine)
    batch = write_batch(spec, tmp_dir / "batch.npz") if spec["use_file"] else None
    weights_before, opt_before, built_before = _snapshot(model)

    analysis = lossmap.analyse(model, batch, batch_size=spec["batch_size"], seed=spec["seed"])
    assert analysis.model.engine == engine

    weights_after, opt_after, built_after = _snapshot(model)
    total = analysis.total
    detail = (f"reproduced={total.reproduced!r} compute_loss={total.compute_loss!r} "
              f"train_step={total.train_step!r} diff={total.max_abs_diff!r}\n"
              + "\n".join(f"  {t.id}: value={t.value!r} keras={t.keras_value!r} "
                          f"contribution={t.contribution!r}" for t in analysis.terms)
              + "\n" + "\n".join(f"  [{f.level}] {f.code}: {f.message}" for f in analysis.findings))
    assert total.compute_loss is not None and total.train_step is not None, detail
    assert total.verified, detail
    assert analysis.state_restored is True, detail
    assert _same_arrays(weights_before, weights_after), "model weights changed"
    assert built_before == built_after, "optimizer built state changed"
    assert [p for p, _ in opt_before] == [p for p, _ in opt_after], "optimizer variables changed"
    assert _same_arrays([v for _, v in opt_before], [v for _, v in opt_after]), "optimizer state changed"
    # Every compiled term, reproduced in NumPy, agrees with Keras's own loss object.
    for t in analysis.terms:
        if t.kind == "compiled" and t.keras_value is not None:
            assert np.isclose(t.value, t.keras_value, rtol=1e-4, atol=1e-5), (t.id, detail)
    keras.backend.clear_session()


@pytest.mark.parametrize("lead_loss", LOSSES)
def test_reproduced_total_matches_keras(lead_loss, tmp_path):
    # A fixed seed per case: CI is reproducible, and each case draws its own models.
    @seed(LOSSES.index(lead_loss))
    @settings(max_examples=EXAMPLES_PER_LOSS, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(spec=model_specs(lead_loss))
    def check(spec):
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp_dir:
            check_spec(spec, pathlib.Path(tmp_dir))

    check()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("lead_loss", LOSSES)
def test_reproduced_total_matches_tf_keras(lead_loss, tmp_path):
    # The same specs (same seeds, so the same draws) as in Keras 3, restricted by `for_tf_keras`;
    # fewer of them, to keep the file's CI time down.
    pytest.importorskip("tf_keras")

    @seed(LOSSES.index(lead_loss))
    @settings(max_examples=TF_KERAS_EXAMPLES_PER_LOSS, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(spec=model_specs(lead_loss).map(for_tf_keras))
    def check(spec):
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp_dir:
            check_spec(spec, pathlib.Path(tmp_dir), engine="tf_keras")

    check()


# ---------------------------------------------------------------- found by the property
def _fixed_spec(structure, container, outputs, use_file=False, **extra):
    base_output = {"layer_name": None, "kwargs": {"reduction": "sum_over_batch_size"}, "units": 2,
                   "activation": "linear", "kernel_regularizer": None, "activity_regularizer": None,
                   "sparse_label_rank": 1, "sample_weight": None}
    outs = [dict(base_output, **o) for o in outputs]
    for o in outs:
        o["layer_name"] = o["layer_name"] or o["name"]
    spec = {"seed": 0, "batch_size": 4, "input_structure": "single", "input_dims": [3], "hidden": 3,
            "trunk_kernel_regularizer": None, "trunk_activity_regularizer": None, "batchnorm": False,
            "dropout": None, "add_loss": None, "add_loss_coeff": 0.5, "structure": structure,
            "loss_container": container, "outputs": outs, "loss_weights_kind": "none",
            "loss_weights": None, "use_file": use_file, "optimizer": "sgd", "optimizer_built": False}
    spec.update(extra)
    return spec


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("container", ["list", "dict"])
@pytest.mark.parametrize("use_file", [False, True])
def test_one_output_given_as_a_list(container, use_file, engine, tmp_path):
    """`keras.Model(x, [y])` returns the bare tensor (Functional.call unpacks a singleton):
    lossmap used to index it with the list path (0,), i.e. take the first sample's row.
    tf_keras's Functional unpacks it too (its `_nested_outputs` is the bare tensor)."""
    if engine == "tf_keras":
        pytest.importorskip("tf_keras")
    spec = _fixed_spec("list", container, [{"name": "zeta", "loss": "binary_crossentropy",
                                            "activation": "sigmoid", "sample_weight": "uniform" if use_file else None}],
                       use_file=use_file)
    check_spec(spec, tmp_path, engine)
