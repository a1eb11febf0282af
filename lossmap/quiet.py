"""TensorFlow's native start-up chatter, kept off the user's terminal.

Importing TensorFlow can write lines to file descriptor 2 from C++ before absl
logging is initialised ("All log messages before absl::InitializeLog() ...",
"oneDNN custom operations are on ...", the CPU feature guard). Which lines
appear depends on the CPU TensorFlow detects, and `TF_CPP_MIN_LOG_LEVEL` set
from Python does not reach all of them. lossmap promises one line on stderr
for bad input, so the import runs with fd 2 pointed at a temporary file; what
it caught is written back, except the lines known to be start-up notices.
Anything else (a real error, a Python warning) still reaches the user.

    >>> from lossmap.quiet import import_tensorflow
    >>> tf = import_tensorflow()          # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile

# Start-up notices that say nothing about the user's model (substrings of one line each).
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Could not find cuda drivers",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "failed call to cuInit",
    "TF-TRT Warning",
    "Cannot dlopen some GPU libraries",
    "cuda_executor.cc",
    "cuda_dnn.cc",
    "cuda_fft.cc",
    "cuda_blas.cc",
)


def quiet_environment():
    """TensorFlow's own log threshold and Keras's backend, unless the user set them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def is_noise(line: str) -> bool:
    return any(marker in line for marker in STARTUP_NOISE)


@contextlib.contextmanager
def native_stderr_filtered():
    """Run the body with fd 2 captured; write back every captured line that is not start-up noise."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a notebook or a test's captured stream: nothing native to catch
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            caught = sink.read().decode("utf-8", "replace")
    kept = [line for line in caught.splitlines(keepends=True) if line.strip() and not is_noise(line)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def import_tensorflow():
    """`import tensorflow`, without its native start-up notices; a no-op once imported."""
    quiet_environment()
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with native_stderr_filtered():
        import tensorflow
    return tensorflow


def import_backend():
    """Before user code runs: TensorFlow imported quietly when Keras runs on it (`import_tensorflow`);
    on another backend (JAX) nothing is imported, only the quiet environment set."""
    from lossmap.engines import keras_backend

    if keras_backend() == "tensorflow":
        return import_tensorflow()
    quiet_environment()
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
    return None


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """On another backend, user code may still import TensorFlow (for tf.data, or a step written with
    it): that import, whoever makes it, runs with its native start-up notices filtered as ours does."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        with native_stderr_filtered():
            self.loader.exec_module(module)
