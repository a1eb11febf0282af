"""A batch that Keras itself refuses is the user's mistake: exit 2, Keras's reason, the shapes, a hint."""
import numpy as np
import pytest

from lossmap.cli import main
from lossmap.errors import UserError
from lossmap.refusals import keras_refusals, raised_by_library, reason

FACTORY = '''
import keras


def build():
    inputs = keras.Input((5, 3), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(inputs))
    model.compile("sgd", "mse")
    return model
'''


def test_per_sample_weights_on_a_per_timestep_output_is_exit_2(tmp_path, capsys):
    (tmp_path / "timesteps.py").write_text(FACTORY)
    data = tmp_path / "batch.npz"
    np.savez(data, x=np.ones((4, 5, 3), "float32"), y=np.ones((4, 5, 1), "float32"),
             sample_weight=np.ones((4,), "float32"))
    code = main(["check", f"{tmp_path / 'timesteps.py'}:build", "--data", str(data)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "Incompatible shapes: [4,5] vs. [4]" in err[0] and "sample_weight (4,)" in err[0]
    assert "shape (batch, time)" in err[0] and "function_node" not in err[0] and "[Op:" not in err[0]


def test_only_what_the_library_raises_is_translated():
    import tensorflow as tf

    with pytest.raises(UserError):
        with keras_refusals("forward pass", {"x": (2,)}):
            tf.reshape(tf.zeros((2, 3)), (4, 4))
    with pytest.raises(ZeroDivisionError):  # lossmap's own bug stays one
        with keras_refusals("forward pass", {"x": (2,)}):
            1 / 0


def test_reason_drops_tensorflow_decorations():
    exc = ValueError("{{function_node __wrapped__Mul_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
                     "Incompatible shapes: [4,5] vs. [4] [Op:Mul] name: \nmore")
    assert reason(exc) == "Incompatible shapes: [4,5] vs. [4]"
    assert not raised_by_library(exc)
