"""The property of tests/test_property.py on Keras 3's JAX backend: for random small functional models
scored by each built-in loss, the reproduced total equals the JAX backend's `compute_loss` and stateless
`train_step`, and the model is left bit for bit as it was.

The specs are test_property's; they run in one child process (`tests/jax_child.py property`), one
drawn model per loss (17, about 40 s on 2 CPU cores); LOSSMAP_JAX_PROPERTY_EXAMPLES=N draws N per loss.
"""
import pytest

pytest.importorskip("jax")
pytest.importorskip("hypothesis")

from test_keras3_jax import run_child  # noqa: E402
from test_property import LOSSES  # noqa: E402


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return run_child("property", tmp_path_factory)


@pytest.mark.parametrize("loss", LOSSES)
def test_reproduced_total_matches_keras_on_jax(examples, loss):
    assert examples["ran"][loss] >= 1
    assert loss not in examples["failures"], examples["failures"].get(loss)
