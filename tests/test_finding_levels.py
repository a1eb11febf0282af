"""Findings a person can trust at a glance: the right level, one cause named once, grouped at scale."""
import pytest


def _model(keras, weight0=False, n_dense=0):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    h = inputs
    for i in range(n_dense):
        h = keras.layers.Dense(4, activation="tanh", kernel_regularizer=keras.regularizers.L2(1e-6),
                               name=f"d{i}")(h)
    a = keras.layers.Dense(1, name="a")(h)
    b = keras.layers.Dense(1, name="b")(h)
    model = keras.Model(inputs, {"a": a, "b": b})
    model.compile("sgd", loss={"a": "mse", "b": "mse"}, loss_weights={"a": 1.0, "b": 0.0 if weight0 else 1.0})
    return model


def test_a_zero_loss_weight_is_named_once_and_is_not_an_error():
    import keras
    import lossmap
    from lossmap.cli import exit_code

    r = lossmap.analyse(_model(keras, weight0=True), sources=False)
    codes = [(f.code, f.level, f.term) for f in r.findings]
    assert ("ZERO_LOSS_WEIGHT", "warning", "compiled/b") in codes
    assert not [c for c in codes if c[0] == "DEAD_TERM"]
    assert exit_code(r) == 0


def test_drowned_weight_regularizers_are_one_info_finding_listing_them():
    import keras
    import lossmap

    r = lossmap.analyse(_model(keras, n_dense=30), sources=False)
    drowned = [f for f in r.findings if f.code == "GRADIENT_DROWNED"]
    assert drowned and all(f.level == "info" and f.terms for f in drowned), [f.message for f in drowned]
    listed = sorted(t for f in drowned for t in f.terms)
    assert len(listed) == len(set(listed)) >= 25
    assert all(t.startswith("regularizer/") for t in listed)
    assert not [f for f in r.findings if f.code == "GRADIENT_CONFLICT" and "regularizer/" in f.message]
    doc = r.to_dict()
    assert any("terms" in f for f in doc["findings"]) and all("terms" not in f or f["terms"]
                                                              for f in doc["findings"])


def test_levels_follow_the_rule():
    """error only for what is certainly wrong; the table documents every code's level."""
    from lossmap.ci.rules import RULES

    errors = {code for code, rule in RULES.items() if rule.level == "error"}
    assert errors >= {"TOTAL_MISMATCH", "NON_FINITE_TERM", "STATE_NOT_RESTORED", "GRADIENTS_NOT_VERIFIED"}
    for code in ("DEAD_TERM", "ZERO_LOSS_WEIGHT", "MODEL_LOSSES_IGNORED", "GRADIENT_DROWNED", "GRADIENT_CONFLICT"):
        assert RULES[code].level == "warning", code
