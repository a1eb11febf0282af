"""Small models for the backend tests (tests/test_backends_cli.py): factories `path.py:function`, from
`lossmap.examples.backend_differences` (the learning site's backends page uses them too).

`saturated`: a softmax output whose probabilities saturate (large output weights), so that
sparse crossentropy from the cached logits (TensorFlow) and from the clipped probabilities (the
other backends) differ measurably. `agreeing`: MSE, an L2 and an add_loss, which every backend
computes alike. `jax_only_penalty`: a `stateless_compute_loss` override, which only the JAX trainer calls.
"""


from lossmap.examples.backend_differences import agreeing, jax_only_penalty, saturated  # noqa: E402,F401


def compute_loss(weights_npz, batch_npz, factory="saturated"):
    """What Keras's own compute_loss gives on the backend of this process, with these weights and this
    batch (keys w/<i>; x/x, y/<output>): the reference a backend's run is held to."""
    import keras
    import numpy as np

    model = globals()[factory]()
    w = np.load(weights_npz)
    model.set_weights([w[f"w/{i}"] for i in range(len(w.files))])
    b = np.load(batch_npz)
    x = b["x/x"]
    y = b[next(k for k in b.files if k.startswith("y/"))]
    pred = model(x, training=True)
    compiled = model.compute_loss(x=x, y=y, y_pred=pred) - sum(model.losses)
    return float(keras.ops.convert_to_numpy(compiled))


if __name__ == "__main__":
    import sys

    print(compute_loss(*sys.argv[1:]))
