"""The work `lossmap check` cannot skip on a backend, and nothing else: a floor for bench_backend.py.

    python bench/real_step_alone.py MODEL.keras BATCH.npz     (KERAS_BACKEND chooses the backend)

Imports Keras, loads the archive as lossmap loads it, and runs the model's real `train_step` once,
eagerly, as lossmap's verification does (on JAX the stateless `train_step(state, data)` with the
optimizer's `stateless_apply` compiled, the state it returns dropped; elsewhere `train_step(data)`);
then prints the loss it logged. No capture, no NumPy reproduction, no attribution, no findings: what
this takes, lossmap takes at least.
"""
import os
import sys

import numpy as np


def main(model_path, batch_path):
    import keras

    if keras.backend.backend() == "jax":
        from lossmap.engines.common.initial_values import initial_values_deferred

        with initial_values_deferred():
            model = keras.saving.load_model(model_path)
    else:
        model = keras.saving.load_model(model_path)
    batch = np.load(batch_path)
    y = {k.split("/", 1)[1]: batch[k] for k in batch.files if k.startswith("y/")}
    data = (batch["x"], y, None)
    model.optimizer.build(model.trainable_variables)
    if keras.backend.backend() == "jax":
        import jax

        model.optimizer.stateless_apply = jax.jit(model.optimizer.stateless_apply)
        state = tuple([v.value for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables,
                                                         model.optimizer.variables, model.metrics_variables))
        logs, _ = model.train_step(state, data)
    else:
        logs = model.train_step(data)
    print(float(np.asarray(logs["loss"])))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(*sys.argv[1:3])
