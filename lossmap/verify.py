"""Stage 4: compare the reproduced total with what Keras computes.

Tolerance follows the dtype; the bound scales with the summed magnitude of
the terms, since float rounding error grows with what was added, not with
the (possibly cancelling) result.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_RTOL = {"float16": 1e-3, "bfloat16": 1e-2, "float32": 1e-5, "float64": 1e-10}
DEFAULT_ATOL = {"float16": 1e-4, "bfloat16": 1e-3, "float32": 1e-7, "float64": 1e-12}


def tolerances(dtype: str, rtol=None, atol=None):
    return (DEFAULT_RTOL.get(dtype, 1e-5) if rtol is None else float(rtol),
            DEFAULT_ATOL.get(dtype, 1e-7) if atol is None else float(atol))


def compare(reproduced: float, keras_values, scale: float, rtol: float, atol: float):
    """Return (max_abs_diff, verified) against every Keras value that exists."""
    present = [v for v in keras_values if v is not None]
    if not present:
        return 0.0, False
    if not all(math.isfinite(v) for v in present) or not math.isfinite(reproduced):
        same = all((math.isnan(v) and math.isnan(reproduced)) or v == reproduced for v in present)
        return (0.0 if same else math.inf), False
    diffs = [abs(reproduced - v) for v in present]
    bound = atol + rtol * max([abs(reproduced), scale] + [abs(v) for v in present])
    worst = max(diffs)
    return worst, bool(worst <= bound)


def scalar(value):
    if value is None:
        return None
    arr = np.asarray(value, np.float64)
    return float(arr) if arr.ndim == 0 else float(np.mean(arr))
