"""Shared fixtures. TensorFlow is slow to start: build small models, share them."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def multitask_archive(tmp_path_factory):
    """The bundled example saved as a .keras archive (needs --import lossmap.examples)."""
    from lossmap.examples import multitask

    path = tmp_path_factory.mktemp("models") / "multitask.keras"
    multitask().save(path)
    return str(path)


HOSTILE_IMG = "<img src=x onerror=alert(1)>"
HOSTILE_SCRIPT = "</script><script>window.__pwned=1;alert(1)</script>"


def hostile_model():
    """Names that would run script if any reached the page unescaped (Keras forbids '/' in layer
    names, so the script-closing one is a dict output key)."""
    import keras
    from keras import layers

    class HostileLoss(keras.losses.Loss):
        def call(self, y, p):
            return keras.ops.mean((y - p) ** 2, axis=-1)

    i = keras.Input((3,), name="in")
    a = layers.Dense(2, name=HOSTILE_IMG, kernel_regularizer="l2")(i)
    b = layers.Dense(1, name="plain")(a)
    m = keras.Model(i, {HOSTILE_SCRIPT: a, "ok": b}, name='"><svg onload=alert(1)>')
    m.compile("sgd", loss={HOSTILE_SCRIPT: HostileLoss(name="<b onmouseover=alert(1)>bold"), "ok": "mse"})
    return m


@pytest.fixture(scope="session")
def example_analysis():
    import lossmap

    return lossmap.analyse("lossmap.examples:multitask")


@pytest.fixture(scope="session")
def example_report(example_analysis, tmp_path_factory):
    from lossmap.render.html import render

    path = tmp_path_factory.mktemp("reports") / "multitask.lossmap.html"
    path.write_text(render(example_analysis, command="lossmap report --example multitask"), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def hostile_analysis():
    import lossmap

    return lossmap.analyse(hostile_model())


@pytest.fixture(scope="session")
def hostile_report(hostile_analysis, tmp_path_factory):
    from lossmap.render.html import render

    path = tmp_path_factory.mktemp("reports") / "hostile.lossmap.html"
    path.write_text(render(hostile_analysis), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def custom_analysis():
    """A train_step override (custom training code): lossmap.examples.pinn."""
    import lossmap

    return lossmap.analyse("lossmap.examples:physics_informed")


@pytest.fixture(scope="session")
def custom_report(custom_analysis, tmp_path_factory):
    from lossmap.render.html import render

    path = tmp_path_factory.mktemp("reports") / "physics_informed.lossmap.html"
    path.write_text(render(custom_analysis, command="lossmap report --example physics_informed"), encoding="utf-8")
    return str(path)
