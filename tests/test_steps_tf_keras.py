"""Custom training code on tf_keras: train_step and compute_loss overrides, values checked by hand."""
import numpy as np
import pytest

tf_keras = pytest.importorskip("tf_keras")

import custom_steps_tf_keras as ts  # noqa: E402

_CACHE = {}


def analyse(build):
    import lossmap

    if build.__name__ not in _CACHE:
        model = build()
        before = [np.array(v) for v in model.variables]
        result = lossmap.analyse(model, ts.batch())
        assert all(a.tobytes() == np.array(v).tobytes() for a, v in zip(before, model.variables))
        _CACHE[build.__name__] = (model, result)
    return _CACHE[build.__name__]


def forward(model, x):
    w1, b1 = (np.array(v, np.float64) for v in model.hidden.weights)
    w2, b2 = (np.array(v, np.float64) for v in model.out.weights)
    return np.tanh(x @ w1 + b1) @ w2 + b2


def test_train_step_override_with_compiled_loss_and_regularization():
    model, r = analyse(ts.physics)
    assert r.model.engine == "tf_keras"
    x, y = (a.astype(np.float64) for a in ts.batch())
    pred = forward(model, x)
    kernel = np.array(model.hidden.kernel, np.float64)
    by_kind = {t.kind: t for t in r.terms}
    assert set(by_kind) == {"compiled", "weight_regularizer", "custom"}
    assert by_kind["compiled"].value == pytest.approx(np.mean((y - pred) ** 2), rel=1e-5)
    assert by_kind["weight_regularizer"].value == pytest.approx(1e-2 * np.sum(kernel ** 2), rel=1e-5)
    assert by_kind["custom"].value == pytest.approx(np.mean((pred[:, 0] - x[:, 0]) ** 2), rel=1e-5)
    assert by_kind["custom"].weight == ts.LAM
    assert by_kind["weight_regularizer"].expression == "self.compiled_loss(y, y_pred, regularization_losses=self.losses)"
    assert r.total.verified and r.total.gradients_verified and r.state_restored
    assert not [f for f in r.findings if f.code == "MODEL_LOSSES_IGNORED"]


def test_compiled_loss_without_regularization_losses_ignores_model_losses():
    _, r = analyse(ts.forgetful)
    assert [t.kind for t in r.terms] == ["compiled"]
    f = [f for f in r.findings if f.code == "MODEL_LOSSES_IGNORED"]
    assert len(f) == 1 and "1 weight regularizer" in f[0].message
    assert r.total.verified and r.total.gradients_verified


def test_compute_loss_override():
    _, r = analyse(ts.penalised)
    assert sorted(t.kind for t in r.terms) == ["compiled", "custom", "weight_regularizer"]
    custom = next(t for t in r.terms if t.kind == "custom")
    assert custom.weight == 0.05 and custom.source["function"] == "PenalisedModel.compute_loss"
    assert r.total.verified and r.total.gradients_verified
    # tf_keras's train_step logs the compiled loss's tracker, not what the override returns
    logged = [f for f in r.findings if f.code == "LOGGED_LOSS_DIFFERS"]
    assert len(logged) == 1 and "LossesContainer" in logged[0].message


def test_optimizer_minimize_with_a_tape_is_an_objective():
    _, r = analyse(ts.minimizing)
    assert sorted(t.kind for t in r.terms) == ["compiled", "custom", "weight_regularizer"]
    assert r.total.verified and r.total.gradients_verified and r.state_restored


def test_a_hand_written_tf_keras_step_and_its_mistakes():
    import lossmap

    model = ts.with_dropout()
    r = lossmap.analyse(model, ts.batch(), step=ts.hand_written_step)
    assert r.model.engine == "tf_keras" and [t.kind for t in r.terms] == ["custom"]
    codes = {f.code for f in r.findings}
    assert {"MODEL_LOSSES_IGNORED", "TRAINING_FLAG_MISSING"} <= codes
    assert r.total.verified and r.total.gradients_verified and r.state_restored
