"""An interrupted run leaves the live model exactly as it was: a fault injected in each stage
(an exception, or Ctrl-C as KeyboardInterrupt) after the stage has run the model."""
import numpy as np
import pytest

import custom_steps as cs


def snapshot(model):
    variables = list(model.variables) + list(model.optimizer.variables)
    return [np.array(v).tobytes() for v in variables], len(variables)


def compiled_model():
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(5, activation="tanh", kernel_regularizer="l2", name="hidden")(inputs)
    h = keras.layers.Dropout(0.3, name="drop")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _after(original, fault):
    def wrapped(*args, **kwargs):
        original(*args, **kwargs)
        raise fault()
    return wrapped


COMPILED_STAGES = [
    ("lossmap.engines.keras3.engine.Keras3Engine", "capture"),
    ("lossmap.engines.keras3.engine.Keras3Engine", "verify_train_step"),
    ("lossmap.engines.keras3.engine.Keras3Engine", "begin_attribution"),
    ("lossmap.engines.keras3.train_step._Pending", "finish"),
    ("lossmap.findings", "collect"),
    ("lossmap.gradients", "summarise"),
]
CUSTOM_STAGES = [
    ("lossmap.steps.run.Attribution", "__call__"),
    ("lossmap.steps.analyse", "_real_run"),
    ("lossmap.steps.analyse", "_assemble"),
    ("lossmap.steps.analyse", "_attribute"),
    ("lossmap.steps.findings", "collect"),
]


def _patch(monkeypatch, target, name, fault):
    import importlib

    module_name, _, attr = target.rpartition(".")
    try:
        owner = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        owner = importlib.import_module(target)
    monkeypatch.setattr(owner, name, _after(getattr(owner, name), fault))


@pytest.mark.parametrize("fault", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("target, name", COMPILED_STAGES)
def test_compiled_path(monkeypatch, target, name, fault):
    import lossmap

    model = compiled_model()
    before = snapshot(model)
    _patch(monkeypatch, target, name, fault)
    with pytest.raises(fault):
        lossmap.analyse(model, cs.batch())
    assert snapshot(model) == before


@pytest.mark.parametrize("fault", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("target, name", CUSTOM_STAGES)
def test_custom_step(monkeypatch, target, name, fault):
    import lossmap

    model = cs.two_heads()
    before = [np.array(v).tobytes() for v in model.variables]
    optimizers = [np.array(v).tobytes() for o in (cs.opt_a, cs.opt_b) for v in o.variables]
    built = (cs.opt_a.built, cs.opt_b.built)
    _patch(monkeypatch, target, name, fault)
    if name == "__call__" and fault is RuntimeError:
        # lossmap's own hook inside the user's step never fails the step: the analysis says so instead
        r = lossmap.analyse(model, cs.batch(), step=cs.step_two_optimizers)
        assert any("per-term gradients" in f.message for f in r.findings)
    else:
        with pytest.raises(fault):
            lossmap.analyse(model, cs.batch(), step=cs.step_two_optimizers)
    assert [np.array(v).tobytes() for v in model.variables] == before
    assert (cs.opt_a.built, cs.opt_b.built) == built
    assert [np.array(v).tobytes() for o in (cs.opt_a, cs.opt_b) for v in o.variables] == optimizers
