"""Valid files to attack: a small model saved by Keras 3 and by tf_keras, and a batch for it.

The model has something in every part of its config: two dict outputs with their own
losses and loss weights, an L2 kernel regularizer, an L1 activity regularizer,
BatchNormalization and Adam. Files are built byte for byte the same every time (seeded
weights, metadata.json rewritten without the save time), so that a seeded mutation of
them is the same mutation in every run.
"""
import json
import os
import zipfile

import numpy as np

FIXED_METADATA = {"keras_version": None, "date_saved": "2026-01-01@00:00:00"}


def build_model(k):
    """The model, in the Keras module `k` (keras or tf_keras)."""
    k.utils.set_random_seed(0)
    layers = k.layers
    x = k.Input((4,), name="x")
    h = layers.Dense(3, name="trunk", kernel_regularizer=k.regularizers.L2(0.01),
                     activity_regularizer=k.regularizers.L1(0.001))(x)
    h = layers.BatchNormalization(name="norm")(h)
    a = layers.Dense(2, name="a")(h)
    b = layers.Dense(3, activation="softmax", name="b")(h)
    model = k.Model(x, {"a": a, "b": b}, name="hostile_target")
    model.compile(optimizer=k.optimizers.Adam(0.01, name="adam"), loss={"a": "mse", "b": "sparse_categorical_crossentropy"},
                  loss_weights={"a": 0.5, "b": 1.0})
    return model


def _stable_ids(text: bytes) -> bytes:
    """config.json with its shared_object_ids (Python object ids) numbered in order of appearance."""
    import re

    ids = {}
    return re.sub(rb'"shared_object_id": (\d+)',
                  lambda m: b'"shared_object_id": %d' % ids.setdefault(m.group(1), len(ids) + 1), text)


def _fixed_metadata(path):
    """Rewrite metadata.json without the save time, and config.json with stable object ids
    (members, order and method kept)."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info.filename)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            if info.filename == "metadata.json":
                meta = {**FIXED_METADATA, "keras_version": json.loads(data)["keras_version"]}
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = _stable_ids(data)
            fixed = zipfile.ZipInfo(info.filename, date_time=(2026, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            zf.writestr(fixed, data)


def batch_arrays(n=8):
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((n, 4)).astype("float32"),
        "y/a": rng.standard_normal((n, 2)).astype("float32"),
        "y/b": rng.integers(0, 3, size=(n,)).astype("int32"),
        "sample_weight/a": rng.uniform(0.5, 1.5, size=(n,)).astype("float32"),
    }


def build(folder, tf_keras=True):
    """{name: path}: keras3 (.keras), tf_keras (.keras) and h5 (tf_keras .h5) when tf_keras is
    installed, and batch (.npz) for all of them."""
    import keras

    paths = {}
    paths["keras3"] = os.path.join(folder, "k3.keras")
    build_model(keras).save(paths["keras3"])
    _fixed_metadata(paths["keras3"])
    if tf_keras:
        try:
            import tf_keras
        except ImportError:
            tf_keras = None
        if tf_keras is not None:
            model = build_model(tf_keras)
            paths["tf_keras"] = os.path.join(folder, "tk.keras")
            model.save(paths["tf_keras"])
            _fixed_metadata(paths["tf_keras"])
            paths["h5"] = os.path.join(folder, "tk.h5")
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "HDF5 is a legacy format"
                model.save(paths["h5"])
    paths["batch"] = os.path.join(folder, "batch.npz")
    np.savez(paths["batch"], **batch_arrays())
    return paths
