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
