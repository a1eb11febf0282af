"""A model and batch that Keras itself refuses are the user's to fix (exit 2), not lossmap's bug (exit 3).

An exception whose innermost frame is in Keras, tf_keras or TensorFlow, raised while lossmap
runs the user's model on the user's batch, becomes one line: Keras's reason without its
op-name decorations, the shapes of the batch, and what Keras expects instead where the
reason is a known one.

    >>> with keras_refusals("forward pass", {"x": (4, 5, 3)}):     # doctest: +SKIP
    ...     model(x)
"""
from __future__ import annotations

import contextlib
import re

from lossmap.errors import UserError

LIBRARIES = ("keras", "tf_keras", "tensorflow", "tensorflow_probability")

# (a phrase in Keras's message, a condition on the batch, what to say) -- first match wins
HINTS = (
    ("Incompatible shapes", lambda shapes: any(k.startswith("sample_weight") for k in shapes),
     "Keras multiplies each output's per-sample loss by sample_weight, which must broadcast against it: for an "
     "output with a time axis the loss has shape (batch, time), so give sample_weight of shape (batch, time)"),
    ("Incompatible shapes", lambda shapes: True,
     "the arrays do not broadcast against the model's outputs: y must have each output's shape"),
    ("expected shape", lambda shapes: True, "x must have the shape the model's inputs declare"),
    ("is incompatible with the layer", lambda shapes: True, "x must have the shape the model's inputs declare"),
    ("Received incompatible tensor", lambda shapes: True, "x must have the shape the model's inputs declare"),
)


def raised_by_library(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc`'s traceback runs a module of Keras, tf_keras or TensorFlow."""
    tb, module = exc.__traceback__, None
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        tb = tb.tb_next
    return module is not None and module.split(".")[0] in LIBRARIES


def reason(exc: BaseException) -> str:
    """Keras's message, first line, without TensorFlow's `{{function_node ...}}` and `[Op:...]` noise."""
    text = str(exc).strip()
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\](\s*name:\s*\S*)?", "", text)
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__)
    return line[:300]


def refusal(exc: BaseException, stage: str, shapes: dict) -> UserError:
    why = reason(exc)
    listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
    hint = next((say for phrase, applies, say in HINTS if phrase in why and applies(shapes)), None)
    return UserError(f"Keras refused this model and batch in its {stage}: {why} (batch: {listed})"
                     + (f"; {hint}" if hint else ""))


@contextlib.contextmanager
def keras_refusals(stage: str, shapes: dict):
    """Turn an exception Keras or TensorFlow raises inside the block into a one-line `UserError`."""
    try:
        yield
    except UserError:
        raise
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        if raised_by_library(exc):
            raise refusal(exc, stage, shapes) from exc
        raise


def batch_shapes(batch) -> dict:
    """`x/<input>`, `y/<output>`, `sample_weight/<output>` -> shape, as the batch file names them."""
    out = {}
    for prefix, arrays in (("x", batch.x), ("y", batch.y), ("sample_weight", batch.sample_weight)):
        for name, arr in (arrays or {}).items():
            if arr is not None:
                out[f"{prefix}/{name}" if len(arrays) > 1 else prefix] = tuple(getattr(arr, "shape", ()))
    return out
