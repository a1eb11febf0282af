"""Training the `physics_informed` and `physics_detached` models on measurements that break a law.

The labels satisfy the constitutive law (`x1 = z1 ** 2`) but not the conservation law: they say
`x0 + x1 = z0 + 1`, where the law says `z0`. The data loss and `loss_x` cannot both reach zero,
so `loss_x` settles where its pull and the data's balance.

    python -m lossmap.examples.physics_training
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

STEPS = 200


def measurements(n=256, offset=1.0, seed=0):
    """Inputs `z` and labels `x` with `x1 = z1 ** 2` and `x0 + x1 = z0 + offset`."""
    z = np.random.default_rng(seed).standard_normal((n, 3)).astype("float32")
    x1 = z[:, 1] ** 2
    x0 = z[:, 0] + offset - x1
    return z, np.stack([x0, x1], axis=1).astype("float32")


def train(model, z, x, steps=STEPS):
    """Full-batch training with the model's own `train_step`, run eagerly; the logs of every step."""
    z, x = tf.constant(z), tf.constant(x)
    history = []
    for _ in range(steps):
        logs = model.train_step((z, x))
        history.append({name: float(value) for name, value in logs.items()})
    return history


if __name__ == "__main__":
    from lossmap.examples.physics_detached import physics_detached
    from lossmap.examples.pinn import physics_informed

    z, x = measurements()
    for build in (physics_informed, physics_detached):
        print(build.__name__, train(build(), z, x)[-1])
