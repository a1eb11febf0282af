"""Term-by-term checks of lossmap against numbers worked out by hand.

Every model here is tiny, with weights set to small explicit values, and every
expected number is either a literal computed by hand (the arithmetic is in the
comment next to it) or a NumPy expression that is the textbook definition of
the loss. Keras's own loss objects are never used to get an expected value;
Keras only shows up as `total.compute_loss` / `total.train_step`, which must
agree with the hand-computed number as well.
"""
import math

import numpy as np
import pytest

import keras
from keras import layers, ops

import lossmap

pytestmark = [
    # Keras's own warnings for situations these tests set up on purpose.
    pytest.mark.filterwarnings("ignore:.*received `from_logits=True`:UserWarning"),
    pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning"),
]

REL = 1e-6
ABS = 1e-7


def approx(value):
    return pytest.approx(value, rel=REL, abs=ABS)


# ---------------------------------------------------------------- helpers
def f32(a):
    return np.asarray(a, dtype="float32")


def run(model, tmp_path, **arrays):
    """analyse `model` on the batch `arrays` (npz keys), checking the invariants every test shares."""
    path = tmp_path / "batch.npz"
    np.savez(path, **{k: v if isinstance(v, np.ndarray) else f32(v) for k, v in arrays.items()})
    before = [np.array(w, copy=True) for w in model.get_weights()]
    analysis = lossmap.analyse(model, data=str(path))
    after = model.get_weights()
    assert len(before) == len(after)
    assert all(np.array_equal(b, a) for b, a in zip(before, after)), "the model's weights changed"
    assert analysis.state_restored is True
    assert analysis.total.verified is True, analysis.total
    return analysis


def codes(analysis, term=None):
    return {f.code for f in analysis.findings if term is None or f.term == term}


def check_total(analysis, expected):
    """The hand value equals lossmap's reproduction and both of Keras's own totals."""
    assert analysis.total.reproduced == approx(expected)
    assert analysis.total.compute_loss == approx(expected)
    assert analysis.total.train_step == approx(expected)


def sgd():
    return keras.optimizers.SGD(learning_rate=0.1)


def bce(y, p):
    """Textbook binary crossentropy, elementwise."""
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- a linear regression model
# lin: y_pred = x @ W, no bias.
W_LIN = f32([[1.0, 0.0],
             [0.5, -1.0]])
X_LIN = f32([[1, 2], [0, 1], [2, 0]])
#   x @ W = [[1 + 1, -2], [0.5, -1], [2, 0]] = [[2, -2], [0.5, -1], [2, 0]]
Y_LIN = f32([[1, -2], [0.5, 0.5], [0, 1]])
#   y_pred - y = [[1, 0], [0, -1.5], [2, -1]]
MSE_LIN = np.array([0.5, 1.125, 2.5])  # mean over the last axis of the squares: 1/2, 2.25/2, 5/2
SW_LIN = f32([2.0, 1.0, 0.5])
#   sample_weight * mse = [1.0, 1.125, 1.25], summing to 3.375; sum(sample_weight) = 3.5


def test_hand_arithmetic_of_the_linear_model():
    """The literals above are the textbook MSE of this tiny model."""
    pred = X_LIN.astype(np.float64) @ W_LIN
    np.testing.assert_allclose(np.mean((pred - Y_LIN) ** 2, axis=-1), MSE_LIN)


@pytest.fixture(scope="module")
def lin_model():
    inp = keras.Input((2,), name="x")
    out = layers.Dense(2, use_bias=False, name="lin")(inp)
    model = keras.Model(inp, out, name="linear")
    model.get_layer("lin").set_weights([W_LIN])
    return model


REDUCTION_CASES = [
    # reduction, sample weights?, expected
    ("sum_over_batch_size", False, 4.125 / 3),        # (0.5 + 1.125 + 2.5) / 3
    ("sum_over_batch_size", True, 3.375 / 3),         # sum(sw * mse) / 3
    ("sum", False, 4.125),
    ("sum", True, 3.375),
    ("mean_with_sample_weight", False, 4.125 / 3),    # no sample weights: divides by the count
    ("mean_with_sample_weight", True, 3.375 / 3.5),   # sum(sw * mse) / sum(sw)
]


@pytest.mark.parametrize("reduction,weighted,expected", REDUCTION_CASES)
def test_reduction(lin_model, tmp_path, reduction, weighted, expected):
    lin_model.compile(sgd(), keras.losses.MeanSquaredError(reduction=reduction))
    batch = dict(x=X_LIN, y=Y_LIN)
    if weighted:
        batch["sample_weight"] = SW_LIN
    a = run(lin_model, tmp_path, **batch)
    assert [t.id for t in a.terms] == ["compiled/lin"]
    t = a.term("compiled/lin")
    assert t.kind == "compiled" and t.output == "lin" and t.fn == "mean_squared_error"
    assert t.config["reduction"] == reduction
    assert t.opaque is False
    assert t.shape == []
    assert t.value == approx(expected)
    assert t.weight == 1.0 and t.contribution == approx(expected)
    check_total(a, expected)
    assert "REDUCTION_NONE" not in codes(a)


@pytest.mark.parametrize("weighted", [False, True])
def test_reduction_none(lin_model, tmp_path, weighted):
    lin_model.compile(sgd(), keras.losses.MeanSquaredError(reduction="none"))
    batch = dict(x=X_LIN, y=Y_LIN)
    if weighted:
        batch["sample_weight"] = SW_LIN
    a = run(lin_model, tmp_path, **batch)
    t = a.term("compiled/lin")
    assert t.shape == [3]  # one loss per sample, not reduced
    assert "REDUCTION_NONE" in codes(a, "compiled/lin")
    # compute_loss returns the per-sample tensor; train_step logs (and lossmap totals) its mean.
    per_sample = MSE_LIN * (SW_LIN if weighted else 1.0)   # [0.5, 1.125, 2.5] or [1, 1.125, 1.25]
    assert t.value == approx(np.mean(per_sample)) and t.contribution == approx(np.mean(per_sample))
    check_total(a, np.mean(per_sample))


# ---------------------------------------------------------------- masks
# seq: Masking(0) -> Dense(1) with W = 2, one loss per time step.
X_SEQ = f32([[[1], [0], [3]],
             [[2], [1], [0]]])  # zeros are masked: mask = [[1, 0, 1], [1, 1, 0]]
Y_SEQ = f32([[[1], [5], [4]],
             [[4], [0], [9]]])
#   y_pred = 2x = [[2, 0, 6], [4, 2, 0]]; squared errors = [[1, 25, 4], [0, 4, 81]]
#   unmasked ones: 1, 4, 0, 4 (sum 9, 4 of 6 entries)
SW_SEQ = f32([[1, 1, 2],
              [0.5, 1, 1]])
#   weighted unmasked: 1*1 + 4*2 + 0*0.5 + 4*1 = 13

MASK_CASES = [
    ("sum_over_batch_size", False, 9 / 4),  # divided by the 4 valid steps, not 6
    ("sum_over_batch_size", True, 13 / 4),
    ("sum", False, 9.0),
    ("sum", True, 13.0),
    ("mean_with_sample_weight", False, 9 / 4),   # the mask is the sample weight: 4 ones
    ("mean_with_sample_weight", True, 13 / 4.5),  # sum of the masked weights: 1 + 2 + 0.5 + 1
]


@pytest.fixture(scope="module")
def seq_model():
    inp = keras.Input((3, 1), name="seq")
    h = layers.Masking(mask_value=0.0, name="masking")(inp)
    out = layers.Dense(1, use_bias=False, name="step")(h)
    model = keras.Model(inp, out, name="masked")
    model.get_layer("step").set_weights([f32([[2.0]])])
    return model


@pytest.mark.parametrize("reduction,weighted,expected", MASK_CASES)
def test_mask(seq_model, tmp_path, reduction, weighted, expected):
    seq_model.compile(sgd(), keras.losses.MeanSquaredError(reduction=reduction))
    batch = dict(x=X_SEQ, y=Y_SEQ)
    if weighted:
        batch["sample_weight"] = SW_SEQ
    a = run(seq_model, tmp_path, **batch)
    t = a.term("compiled/step")
    assert t.value == approx(expected)
    assert any("mask: 4 of 6" in s for s in t.steps)
    check_total(a, expected)


def test_mask_from_embedding(tmp_path):
    """Embedding(mask_zero=True): token 0 is masked; per-step loss with sum_over_batch_size."""
    inp = keras.Input((3,), dtype="int32", name="tokens")
    out = layers.Embedding(3, 1, mask_zero=True, name="emb")(inp)
    model = keras.Model(inp, out, name="embedded")
    model.get_layer("emb").set_weights([f32([[7.0], [1.0], [-2.0]])])
    model.compile(sgd(), "mae")
    x = np.array([[1, 2, 0], [0, 0, 2]], dtype="int32")
    # y_pred = [[1, -2, 7], [7, 7, -2]], mask = [[1, 1, 0], [0, 0, 1]]
    y = f32([[[0], [0], [0]], [[0], [0], [1]]])
    # absolute errors of the unmasked steps: |1|, |-2|, |-2 - 1| = 1, 2, 3 -> mean 6 / 3
    a = run(model, tmp_path, x=x, y=y)
    assert a.term("compiled/emb").value == approx(2.0)
    check_total(a, 2.0)


# ---------------------------------------------------------------- crossentropy
X_BIN = f32([[2, 0], [0, 1], [1, 1], [0, 3]])
Y_BIN = f32([[1], [0], [1], [1]])
W_BIN = f32([[1.0], [-1.0]])  # z = x @ W = [2, -1, 0, -3]
Z_BIN = np.array([2.0, -1.0, 0.0, -3.0])


def _binary_model(activation):
    inp = keras.Input((2,), name="x")
    out = layers.Dense(1, use_bias=False, activation=activation, name="p")(inp)
    model = keras.Model(inp, out, name=f"binary_{activation}")
    model.get_layer("p").set_weights([W_BIN])
    return model


@pytest.mark.parametrize("activation,from_logits,finding", [
    (None, True, None),
    ("sigmoid", False, "CROSSENTROPY_FROM_LOGITS"),   # Keras uses the sigmoid's input
    ("sigmoid", True, "FROM_LOGITS_ON_PROBABILITIES"),
])
def test_binary_crossentropy_from_logits(tmp_path, activation, from_logits, finding):
    model = _binary_model(activation)
    model.compile(sgd(), keras.losses.BinaryCrossentropy(from_logits=from_logits))
    a = run(model, tmp_path, x=X_BIN, y=Y_BIN)
    expected = np.mean(bce(Y_BIN[:, 0], sigmoid(Z_BIN)))
    # by hand: (log(1 + e^-2) + log(1 + e^-1) + log 2 + log(1 + e^3)) / 4
    assert expected == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2)
                                      + math.log1p(math.exp(3))) / 4)
    t = a.term("compiled/p")
    assert t.fn == "binary_crossentropy" and t.config["from_logits"] is from_logits
    assert t.value == approx(expected)
    check_total(a, expected)
    logit_codes = codes(a) & {"CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES"}
    assert logit_codes == ({finding} if finding else set())


def test_binary_crossentropy_on_probabilities(tmp_path):
    """from_logits=False on a linear output that already is a probability: no logits to find."""
    inp = keras.Input((2,), name="x")
    out = layers.Dense(1, use_bias=False, name="p")(inp)
    model = keras.Model(inp, out, name="binary_prob")
    model.get_layer("p").set_weights([f32([[0.25], [0.5]])])
    model.compile(sgd(), keras.losses.BinaryCrossentropy(from_logits=False))
    x = f32([[2, 0], [0, 1], [1, 1], [0, 1.5]])   # p = [0.5, 0.5, 0.75, 0.75]
    y = f32([[1], [0], [1], [0]])
    a = run(model, tmp_path, x=x, y=y)
    # -log .5, -log .5, -log .75, -log .25
    expected = (2 * math.log(2) + math.log(4 / 3) + math.log(4)) / 4
    assert np.mean(bce(y[:, 0], np.array([0.5, 0.5, 0.75, 0.75]))) == pytest.approx(expected)
    assert a.term("compiled/p").value == approx(expected)
    check_total(a, expected)
    assert not codes(a) & {"CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES"}


@pytest.mark.parametrize("activation,kernel,x,y", [
    # z = x @ [[20], [0]] = [20, -20], labels 0 and 1: each -log(1 - sigmoid(20)) = log(1 + e^20)
    ("sigmoid", [[20.0], [0.0]], [[1, 0], [-1, 0]], [[0], [1]]),
    # z = x @ 20 I = [[20, 0], [0, 20]], each labelled with the other class: -log softmax = log(1 + e^20)
    ("softmax", [[20.0, 0.0], [0.0, 20.0]], [[1, 0], [0, 1]], [[0, 1], [1, 0]]),
])
def test_crossentropy_on_saturated_activation_uses_logits(tmp_path, activation, kernel, x, y):
    """from_logits=False on a sigmoid/softmax output: Keras takes the activation's input, so
    the loss is log(1 + e^20) ~ 20, not the -log(1e-7) ~ 16.12 that clipping probabilities gives."""
    inp = keras.Input((2,), name="x")
    out = layers.Dense(len(kernel[0]), use_bias=False, activation=activation, name="sat")(inp)
    model = keras.Model(inp, out, name=f"saturated_{activation}")
    model.get_layer("sat").set_weights([f32(kernel)])
    fn = "binary_crossentropy" if activation == "sigmoid" else "categorical_crossentropy"
    model.compile(sgd(), fn)
    a = run(model, tmp_path, x=x, y=y)
    expected = math.log1p(math.exp(20.0))   # 20.000000002
    t = a.term("compiled/sat")
    assert t.value == approx(expected)
    assert t.value > 19.9   # clipping at 1 - 1e-7 would give 16.1
    check_total(a, expected)
    assert "CROSSENTROPY_FROM_LOGITS" in codes(a, "compiled/sat")


X_CAT = f32([[1, 0], [0, 1], [1, 1]])
W_CAT = f32([[1, 0, -1],
             [0, 2, 1]])  # z = [[1, 0, -1], [0, 2, 1], [1, 2, 0]]
Y_CAT = f32([[1, 0, 0], [0, 0, 1], [0, 1, 0]])


@pytest.mark.parametrize("activation,from_logits,finding", [
    (None, True, None),
    ("softmax", False, "CROSSENTROPY_FROM_LOGITS"),   # Keras uses the softmax's input
    ("softmax", True, "FROM_LOGITS_ON_PROBABILITIES"),
])
def test_categorical_crossentropy_from_logits(tmp_path, activation, from_logits, finding):
    inp = keras.Input((2,), name="x")
    out = layers.Dense(3, use_bias=False, activation=activation, name="cls")(inp)
    model = keras.Model(inp, out, name=f"cat_{activation}")
    model.get_layer("cls").set_weights([W_CAT])
    model.compile(sgd(), keras.losses.CategoricalCrossentropy(from_logits=from_logits))
    a = run(model, tmp_path, x=X_CAT, y=Y_CAT)
    z = X_CAT.astype(np.float64) @ W_CAT
    expected = np.mean(-np.sum(Y_CAT * np.log(softmax(z)), axis=-1))
    # by hand: -log softmax picks z=1 of (1, 0, -1), z=1 of (0, 2, 1), z=2 of (1, 2, 0)
    lse = lambda *v: math.log(sum(math.exp(u) for u in v))  # noqa: E731
    assert expected == pytest.approx(((lse(1, 0, -1) - 1) + (lse(0, 2, 1) - 1) + (lse(1, 2, 0) - 2)) / 3)
    t = a.term("compiled/cls")
    assert t.fn == "categorical_crossentropy"
    assert t.value == approx(expected)
    check_total(a, expected)
    logit_codes = codes(a) & {"CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES"}
    assert logit_codes == ({finding} if finding else set())


def test_categorical_crossentropy_on_unnormalised_probabilities(tmp_path):
    """from_logits=False on a linear output: Keras divides by the row sum first."""
    inp = keras.Input((2,), name="x")
    out = layers.Dense(3, use_bias=False, name="cls")(inp)
    model = keras.Model(inp, out, name="cat_prob")
    model.get_layer("cls").set_weights([f32([[1, 2, 1], [1, 1, 2]])])
    model.compile(sgd(), keras.losses.CategoricalCrossentropy(from_logits=False))
    # outputs [[1, 2, 1], [1, 1, 2], [2, 3, 3]] / row sums = [[.25, .5, .25], [.25, .25, .5], [.25, .375, .375]]
    y = f32([[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    a = run(model, tmp_path, x=X_CAT, y=y)
    expected = (math.log(2) + math.log(2) + math.log(4)) / 3  # -log .5, -log .5, -log .25
    assert a.term("compiled/cls").value == approx(expected)
    check_total(a, expected)
    assert not codes(a) & {"CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES"}


# ---------------------------------------------------------------- regularizers
W_REG = f32([[1.0, -2.0],
             [0.5, 0.0]])  # sum |W| = 3.5, sum W^2 = 1 + 4 + 0.25 = 5.25
X_REG = f32([[1, 1], [2, 0]])
#   x @ W = [[1.5, -2], [2, -4]]
Y_REG = f32([[1, -2], [2, -3]])
#   errors [[0.5, 0], [0, -1]] -> mse per sample [0.125, 0.5] -> mean 0.3125
MSE_REG = 0.3125


def _dense_model(name, **dense_kwargs):
    inp = keras.Input((2,), name="x")
    out = layers.Dense(2, use_bias=False, name=name, **dense_kwargs)(inp)
    model = keras.Model(inp, out, name=f"{name}_model")
    model.get_layer(name).set_weights([W_REG])
    model.compile(sgd(), "mse")
    return model


@pytest.mark.parametrize("regularizer,cls,expected", [
    (keras.regularizers.L1(0.1), "L1", 0.1 * 3.5),
    (keras.regularizers.L2(0.01), "L2", 0.01 * 5.25),
    (keras.regularizers.L1L2(l1=0.1, l2=0.01), "L1L2", 0.1 * 3.5 + 0.01 * 5.25),
    # rows (1, -2)/sqrt5 and (1, 0): cosine 1/sqrt5; factor * 0.5 * (2 off-diagonal entries) / 1 pair
    (keras.regularizers.OrthogonalRegularizer(factor=0.1, mode="rows"), "OrthogonalRegularizer", 0.1 / math.sqrt(5)),
    # columns (1, 0.5)/sqrt1.25 and (-1, 0): |cosine| 1/sqrt1.25
    (keras.regularizers.OrthogonalRegularizer(factor=0.1, mode="columns"), "OrthogonalRegularizer",
     0.1 / math.sqrt(1.25)),
], ids=["L1", "L2", "L1L2", "orthogonal_rows", "orthogonal_columns"])
def test_kernel_regularizer(tmp_path, regularizer, cls, expected):
    model = _dense_model("reg", kernel_regularizer=regularizer)
    a = run(model, tmp_path, x=X_REG, y=Y_REG)
    assert [t.id for t in a.terms] == ["compiled/reg", "regularizer/reg/kernel"]
    t = a.term("regularizer/reg/kernel")
    assert t.kind == "weight_regularizer" and t.fn == cls
    assert t.layer == "reg" and t.variable == "reg/kernel"
    assert t.opaque is False
    assert t.value == approx(expected) and t.contribution == approx(expected)
    assert a.term("compiled/reg").value == approx(MSE_REG)
    check_total(a, MSE_REG + expected)


def test_textbook_regularizer_formulas():
    """The literals in test_kernel_regularizer are sum|W|, sum W^2 and the orthogonality penalty."""
    w = W_REG.astype(np.float64)
    assert np.sum(np.abs(w)) == 3.5 and np.sum(w ** 2) == 5.25
    for vectors, expected in ((w, 1 / math.sqrt(5)), (w.T, 1 / math.sqrt(1.25))):  # rows, columns
        n = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        cos = n @ n.T
        off_diagonal = np.abs(cos - np.diag(np.diag(cos))).sum()
        pairs = 1  # two vectors
        assert 0.5 * off_diagonal / pairs == pytest.approx(expected)


@pytest.mark.parametrize("regularizer,cls,expected", [
    # outputs [[1.5, -2], [2, -4]]: sum of squares 26.25, sum of |.| 9.5; batch size 2
    (keras.regularizers.L2(0.5), "L2", 0.5 * 26.25 / 2),
    (keras.regularizers.L1(0.1), "L1", 0.1 * 9.5 / 2),
])
def test_activity_regularizer_divided_by_batch_size(tmp_path, regularizer, cls, expected):
    model = _dense_model("act", activity_regularizer=regularizer)
    a = run(model, tmp_path, x=X_REG, y=Y_REG)
    assert [t.id for t in a.terms] == ["compiled/act", "activity/act"]
    t = a.term("activity/act")
    assert t.kind == "activity_regularizer" and t.fn == cls and t.layer == "act"
    assert t.opaque is False
    assert t.value == approx(expected)
    assert any("divided by the batch size 2" in s for s in t.steps)
    check_total(a, MSE_REG + expected)


# ---------------------------------------------------------------- add_loss
class Penalty(layers.Layer):
    """Passes its input through and adds half of it (its mean, or the tensor itself) as a loss."""

    def __init__(self, scalar=True, **kwargs):
        super().__init__(**kwargs)
        self.scalar = scalar

    def call(self, x):
        self.add_loss(0.5 * ops.mean(x) if self.scalar else 0.5 * x)
        return x


@pytest.mark.parametrize("scalar,expected,shape", [
    (True, 0.5 * (1.5 - 2 + 2 - 4) / 4, []),     # half the mean of [[1.5, -2], [2, -4]]
    (False, 0.5 * (1.5 - 2 + 2 - 4), [2, 2]),    # every entry of 0.5 * x, summed
], ids=["scalar", "non_scalar"])
def test_add_loss(tmp_path, scalar, expected, shape):
    inp = keras.Input((2,), name="x")
    h = layers.Dense(2, use_bias=False, name="lin")(inp)
    out = Penalty(scalar=scalar, name="pen")(h)
    model = keras.Model(inp, out, name="penalised")
    model.get_layer("lin").set_weights([W_REG])
    model.compile(sgd(), "mse")
    a = run(model, tmp_path, x=X_REG, y=Y_REG)
    assert [t.id for t in a.terms] == ["compiled/pen", "add_loss/pen/0"]
    t = a.term("add_loss/pen/0")
    assert t.kind == "add_loss" and t.layer == "pen" and t.opaque is True
    assert t.shape == shape
    assert t.value == approx(expected) and t.contribution == approx(expected)
    check_total(a, MSE_REG + expected)
    assert ("ADD_LOSS_NON_SCALAR" in codes(a, "add_loss/pen/0")) is (not scalar)


# ---------------------------------------------------------------- a nested model
def test_nested_model_terms(tmp_path):
    """A functional sub-model used as a layer: its add_loss and kernel regularizer are found."""
    inner_in = keras.Input((2,), name="inner_x")
    h = layers.Dense(2, use_bias=False, name="inner_dense",
                     kernel_regularizer=keras.regularizers.L2(0.1))(inner_in)
    inner = keras.Model(inner_in, Penalty(name="inner_pen")(h), name="inner")
    x = keras.Input((2,), name="x")
    out = layers.Dense(1, use_bias=False, name="head")(inner(x))
    model = keras.Model(x, out, name="outer")
    inner.get_layer("inner_dense").set_weights([W_REG])
    model.get_layer("head").set_weights([f32([[1.0], [1.0]])])
    model.compile(sgd(), "mse")
    # inner output [[1.5, -2], [2, -4]]; head sums the row: [-0.5, -2]
    y = f32([[0], [-1]])  # squared errors 0.25, 1 -> mse 0.625
    a = run(model, tmp_path, x=X_REG, y=y)
    kernel = inner.get_layer("inner_dense").kernel
    assert [t.id for t in a.terms] == ["compiled/head", "add_loss/inner_pen/0", f"regularizer/{kernel.path}"]
    assert kernel.path == "inner_dense/kernel"
    assert a.term("compiled/head").value == approx(0.625)
    pen = a.term("add_loss/inner_pen/0")
    assert pen.layer == "inner_pen" and pen.value == approx(0.5 * -2.5 / 4)   # -0.3125
    reg = a.term("regularizer/inner_dense/kernel")
    assert reg.variable == "inner_dense/kernel" and reg.layer == "inner_dense"
    assert reg.value == approx(0.1 * 5.25)
    check_total(a, 0.625 - 0.3125 + 0.525)


# ---------------------------------------------------------------- two outputs: zeta, then alpha
X_TWO = f32([[1, 1], [2, -1]])
W_ZETA = f32([[1.0], [2.0]])             # zeta = [3, 0]
W_ALPHA = f32([[1.0, 0.0], [0.0, -1.0]])  # alpha = [[1, -1], [2, 1]]
Y_ZETA = f32([[1], [0]])                 # mse per sample: 4, 0 -> 2.0   (mae would be 1.0)
Y_ALPHA = f32([[0, -1], [2, 3]])         # mae per sample: 0.5, 1.0 -> 0.75   (mse would be 1.25)
MSE_ZETA, MAE_ALPHA = 2.0, 0.75
TWO_BATCH = {"x": X_TWO, "y/zeta": Y_ZETA, "y/alpha": Y_ALPHA}


def _two_output_model(kind):
    """zeta first, then alpha. For dict outputs the layer names sort the other way round
    from the keys (zeta comes out of layer "a_head", alpha out of "z_head"): pairing must go
    by key. List outputs are named by their layers, "zeta" and "alpha"."""
    names = {"zeta": "a_head", "alpha": "z_head"} if kind == "dict" else {"zeta": "zeta", "alpha": "alpha"}
    inp = keras.Input((2,), name="x")
    zeta = layers.Dense(1, use_bias=False, name=names["zeta"])(inp)
    alpha = layers.Dense(2, use_bias=False, name=names["alpha"])(inp)
    outputs = {"zeta": zeta, "alpha": alpha} if kind == "dict" else [zeta, alpha]
    model = keras.Model(inp, outputs, name=f"two_{kind}")
    model.get_layer(names["zeta"]).set_weights([W_ZETA])
    model.get_layer(names["alpha"]).set_weights([W_ALPHA])
    return model


@pytest.fixture(scope="module")
def dict_model():
    return _two_output_model("dict")


@pytest.fixture(scope="module")
def list_model():
    return _two_output_model("list")


def _check_pairing(a, w_zeta=2.0, w_alpha=0.5):
    zeta, alpha = a.term("compiled/zeta"), a.term("compiled/alpha")
    assert (zeta.output, zeta.fn, zeta.weight) == ("zeta", "mean_squared_error", w_zeta)
    assert (alpha.output, alpha.fn, alpha.weight) == ("alpha", "mean_absolute_error", w_alpha)
    assert zeta.value == approx(MSE_ZETA) and zeta.contribution == approx(w_zeta * MSE_ZETA)
    assert alpha.value == approx(MAE_ALPHA) and alpha.contribution == approx(w_alpha * MAE_ALPHA)
    check_total(a, w_zeta * MSE_ZETA + w_alpha * MAE_ALPHA)   # 4 + 0.375
    assert "PER_OUTPUT_LOGS_UNWEIGHTED" in codes(a)


def test_dict_outputs_pair_losses_by_key(dict_model, tmp_path):
    dict_model.compile(sgd(), loss={"zeta": "mse", "alpha": "mae"}, loss_weights={"zeta": 2.0, "alpha": 0.5})
    _check_pairing(run(dict_model, tmp_path, **TWO_BATCH))


@pytest.mark.parametrize("loss,weights", [
    (["mse", "mae"], [2.0, 0.5]),
    ({"alpha": "mae", "zeta": "mse"}, {"alpha": 0.5, "zeta": 2.0}),  # keys by output layer name
], ids=["list_loss", "dict_loss"])
def test_list_outputs_pair_losses_by_position(list_model, tmp_path, loss, weights):
    list_model.compile(sgd(), loss=loss, loss_weights=weights)
    a = run(list_model, tmp_path, **TWO_BATCH)
    _check_pairing(a)
    assert [t.id for t in a.terms] == ["compiled/zeta", "compiled/alpha"]


def test_dict_outputs_with_sample_weight_on_one_output(dict_model, tmp_path):
    dict_model.compile(sgd(), loss={"zeta": "mse", "alpha": "mae"}, loss_weights={"zeta": 2.0, "alpha": 0.5})
    # alpha's per-sample mae [0.5, 1.0] weighted by [3, 1] -> (1.5 + 1) / 2 = 1.25
    a = run(dict_model, tmp_path, **TWO_BATCH, **{"sample_weight/alpha": [3.0, 1.0]})
    assert a.term("compiled/zeta").value == approx(MSE_ZETA)
    assert a.term("compiled/alpha").value == approx(1.25)
    check_total(a, 2.0 * MSE_ZETA + 0.5 * 1.25)


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_none_loss_for_one_output(dict_model, list_model, tmp_path, kind):
    model = dict_model if kind == "dict" else list_model
    loss = {"zeta": "mse", "alpha": None} if kind == "dict" else ["mse", None]
    model.compile(sgd(), loss=loss)
    a = run(model, tmp_path, x=X_TWO, **{"y/zeta": Y_ZETA})   # no labels for alpha
    assert [t.id for t in a.terms] == ["compiled/zeta"]
    assert a.term("compiled/zeta").fn == "mean_squared_error"
    check_total(a, MSE_ZETA)


def test_zero_loss_weight(dict_model, tmp_path):
    dict_model.compile(sgd(), loss={"zeta": "mse", "alpha": "mae"}, loss_weights={"zeta": 1.0, "alpha": 0.0})
    a = run(dict_model, tmp_path, **TWO_BATCH)
    alpha = a.term("compiled/alpha")
    assert alpha.weight == 0.0 and alpha.value == approx(MAE_ALPHA) and alpha.contribution == 0.0
    assert "ZERO_LOSS_WEIGHT" in codes(a, "compiled/alpha")
    assert "ZERO_LOSS_WEIGHT" not in codes(a, "compiled/zeta")
    check_total(a, MSE_ZETA)


# ---------------------------------------------------------------- user-defined losses
def cubic_error(y_true, y_pred):
    return ops.mean(ops.abs(y_pred - y_true) ** 3, axis=-1)


class CubicError(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return ops.mean(ops.abs(y_pred - y_true) ** 3, axis=-1)


# errors [[1, 0], [0, -1.5], [2, -1]] -> mean |e|^3 per sample: 0.5, 1.6875, 4.5 (sum 6.6875)
# weighted by [2, 1, 0.5]: 1, 1.6875, 2.25 (sum 4.9375)
@pytest.mark.parametrize("make_loss,weighted,expected", [
    (lambda: cubic_error, False, 6.6875 / 3),
    (lambda: cubic_error, True, 4.9375 / 3),
    (lambda: CubicError(reduction="sum"), False, 6.6875),
    (lambda: CubicError(reduction="sum"), True, 4.9375),
], ids=["function", "function_weighted", "subclass_sum", "subclass_sum_weighted"])
def test_user_defined_loss(lin_model, tmp_path, make_loss, weighted, expected):
    lin_model.compile(sgd(), make_loss())
    batch = dict(x=X_LIN, y=Y_LIN)
    if weighted:
        batch["sample_weight"] = SW_LIN
    a = run(lin_model, tmp_path, **batch)
    t = a.term("compiled/lin")
    assert t.opaque is True
    assert t.value == approx(expected)
    assert "OPAQUE_TERM" in codes(a, "compiled/lin")
    check_total(a, expected)


# ---------------------------------------------------------------- not compiled
def test_uncompiled_model_lists_its_regularizer(tmp_path):
    """No compiled loss and no train_step: model.losses is still explained and checked."""
    inp = keras.Input((2,), name="x")
    out = layers.Dense(2, use_bias=False, name="reg", kernel_regularizer=keras.regularizers.L1(0.1))(inp)
    model = keras.Model(inp, out, name="uncompiled")
    model.get_layer("reg").set_weights([W_REG])
    a = run(model, tmp_path, x=X_REG, y=Y_REG)
    assert [t.id for t in a.terms] == ["regularizer/reg/kernel"]
    assert a.term("regularizer/reg/kernel").value == approx(0.35)   # 0.1 * sum |W| = 0.1 * 3.5
    assert a.total.reproduced == approx(0.35) and a.total.compute_loss == approx(0.35)
    assert a.total.train_step is None
    assert "NOT_COMPILED" in codes(a)
