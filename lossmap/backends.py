"""`--backend tensorflow|jax|torch`: the command again, in a child process running that Keras backend.

Keras fixes its backend once it is imported (`KERAS_BACKEND`, else `keras.json`), so a process
can explain one backend only. When the process already runs the backend asked for, the command
runs here; otherwise it runs as `python -m lossmap ...` with `KERAS_BACKEND` set, its standard
streams the parent's own (one JSON document on stdout stays one), and its exit code returned as
it is. Nothing here imports Keras, TensorFlow or the backend: what is installed is read from
the import system (`importlib.util.find_spec`), so usage errors stay one line and instant.

    >>> usage_error("tf_keras", "jax")
    '--backend jax: tf_keras runs on TensorFlow only; leave out --engine tf_keras or use --backend tensorflow'
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

from lossmap.engines import keras_backend

# backend -> the modules Keras imports for it, and how to install them (CPU wheels from PyPI)
REQUIRES = {
    "tensorflow": (("tensorflow",), "pip install tensorflow-cpu"),
    "jax": (("jax", "jaxlib"), "pip install 'jax[cpu]'"),
    "torch": (("torch",), "pip install torch --index-url https://download.pytorch.org/whl/cpu"),
}


def missing(backend: str) -> str | None:
    """Why `backend` cannot run here (one sentence with the install command), or None when it can."""
    modules, install = REQUIRES[backend]
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"the {backend} backend needs the {module} package, which is not installed: {install}"
    return None


def usage_error(engine: str | None, backend: str) -> str | None:
    """The one line for a `--backend` that cannot work with `--engine`, else None."""
    if engine == "tf_keras" and backend != "tensorflow":
        return (f"--backend {backend}: tf_keras runs on TensorFlow only; leave out --engine tf_keras or use "
                "--backend tensorflow")
    return None


def current() -> str:
    """The backend Keras runs on (or would run on) in this process (`lossmap.engines.keras_backend`)."""
    return keras_backend()


def child_env(backend: str, base=None) -> dict:
    env = dict(os.environ if base is None else base)
    env["KERAS_BACKEND"] = backend
    return env


def command(argv) -> list:
    """The child's command line: this Python, lossmap as a module, the same arguments."""
    return [sys.executable, "-m", "lossmap", *argv]


def run_child(argv, backend: str, *, stdout=None, stderr=None, stdin=subprocess.DEVNULL):
    """Run lossmap with `argv` on `backend` and wait for it; returns (returncode, stdout, stderr), the
    streams as bytes when they were `subprocess.PIPE`, else None. Ctrl-C: a terminal sends SIGINT to the
    whole process group, so the child has it already; when only this process got it (kill -INT), it is
    passed on. Either way the child restores its model and exits 130, and that is waited for; a second
    Ctrl-C kills it."""
    proc = subprocess.Popen(command(argv), env=child_env(backend), stdin=stdin, stdout=stdout, stderr=stderr)
    try:
        out, err = proc.communicate()
    except KeyboardInterrupt:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate()
        except KeyboardInterrupt:
            proc.kill()
            out, err = proc.communicate()
    return proc.returncode, out, err


def run_command(argv, backend: str) -> int:
    """`lossmap ... --backend B` from a process on another backend: the child's exit code."""
    code = run_child(argv, backend, stdin=None)[0]
    if code < 0:  # killed by a signal: as a shell reports it
        return 128 - code
    return code

