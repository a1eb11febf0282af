"""Where Keras 3's backends give a different loss for the same model on the same batch.

`lossmap report --compare-backends` (`lossmap.compare_backends`) runs one model on every installed
backend and puts the JSON documents side by side; each term that differs beyond tolerance is
explained here from the lines of the backends' own source that make the difference. The lines
are found by structure in the installed files (libcst matchers, `lossmap.engine_diff.citation`),
read without importing another backend's modules (a module of the JAX backend would import JAX),
never by line number: a Keras that moved or renamed the code gives "not found", not a wrong line.

One check per difference, `_diff_<name>(cmp) -> dict | None`, in `CHECKS`; what no check explains
is still listed (`UNEXPLAINED`), with the reasons lossmap knows of (random layers, a failed run).
Plain data out.

    >>> nn_module("jax")
    'keras.src.backend.jax.nn'
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os

import libcst as cst
import libcst.matchers as m

from lossmap.engine_diff import _fmt, citation, where  # one way to print a value in both comparisons
from lossmap.engines.common.anchor_kit import assign_to, call_attr, self_attr, step_loss

LABEL = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
CROSSENTROPIES = ("categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy")
ACTIVATION = {"categorical_crossentropy": "softmax", "sparse_categorical_crossentropy": "softmax",
              "binary_crossentropy": "sigmoid"}
UNEXPLAINED = "BACKEND_DIFF_UNEXPLAINED"  # terms that differ and no check explains
RANDOM_LAYERS = "BACKEND_DIFF_RANDOM_LAYERS"  # the same, in a model with random layers (Dropout, noise)


def nn_module(backend: str) -> str:
    return f"keras.src.backend.{backend}.nn"


@functools.lru_cache(maxsize=None)
def keras_file(module: str) -> str | None:
    """The installed source file of a `keras.src...` module, from Keras's folder alone (no import)."""
    try:
        spec = importlib.util.find_spec("keras")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, *module.split(".")[1:]) + ".py"
    return path if os.path.isfile(path) else None


def cite(backend: str, module: str, qualname: str, matcher, label: str) -> dict:
    c = citation(backend, module, qualname, [(matcher, label)], path=keras_file(module))
    if c["path"] is None and not c["found"]:
        c["missing"] = c["missing"] or f"{module} is not installed"
    return c


@functools.lru_cache(maxsize=None)
def reads_cached_logits(backend: str) -> bool | None:
    """Whether the backend's nn module reads the `_keras_logits` a softmax/sigmoid caches on its output
    (an attribute `_keras_logits` anywhere in it, by libcst); None when the file cannot be read."""
    path = keras_file(nn_module(backend))
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            tree = cst.parse_module(fh.read())
    except (OSError, cst.ParserSyntaxError):
        return None
    return bool(m.findall(tree, m.Attribute(attr=m.Name("_keras_logits"))))


def _cached_logits_cites(fn: str) -> list:
    """TensorFlow: where the activation caches its logits, and where the crossentropy takes them."""
    module = nn_module("tensorflow")
    act = ACTIVATION[fn]
    stores = m.Assign(targets=[m.AssignTarget(m.Attribute(value=m.Name("output"), attr=m.Name("_keras_logits")))])
    return [
        cite("tensorflow", module, act, stores, "output._keras_logits = logits"),
        cite("tensorflow", module, "_get_logits",
             assign_to("output_", m.Attribute(value=m.Name("output"), attr=m.Name("_keras_logits"))),
             "output_ = output._keras_logits"),
    ]


def _clip_cite(backend: str, fn: str) -> dict:
    """Another backend: where its crossentropy clips the probabilities to [epsilon, 1 - epsilon]."""
    return cite(backend, nn_module(backend), fn, assign_to("output", call_attr(None, "clip")),
                "output = clip(output, epsilon, 1 - epsilon)")


# ---------------------------------------------------------------- what the checks read
class Comparison:
    """The documents side by side: `docs` backend -> the JSON document of that backend's run."""

    def __init__(self, docs: dict, rows: list, epsilon: float, random_layers=(), arithmetic=None, tol=(1e-5, 1e-7)):
        self.docs = docs
        self.rows = rows
        self.epsilon = epsilon
        self.random_layers = list(random_layers)
        # term id -> each backend's arithmetic on the same outputs (lossmap.compare_backends)
        self.arithmetic = arithmetic or {}
        self.rtol, self.atol = tol

    def close(self, a, b) -> bool:
        return abs(a - b) <= self.atol + self.rtol * max(abs(a), abs(b))

    def arithmetic_differs(self, term_id):
        """True/False: the backends' arithmetic on identical outputs differs beyond tolerance; None: unknown."""
        values = list((self.arithmetic.get(term_id) or {}).get("values", {}).values())
        if len(values) < 2:
            return None
        return any(not self.close(values[0], v) for v in values[1:])

    @property
    def backends(self):
        return list(self.docs)

    def finding(self, backend, code, term_id):
        return next((f for f in self.docs[backend]["findings"] if f["code"] == code and f.get("term") == term_id),
                    None)

    def differing(self):
        return [r for r in self.rows if r["differs"]]


def _values(row) -> str:
    return ", ".join(f"{LABEL.get(b, b)} {_fmt(v['value'])}" for b, v in row["values"].items() if v is not None)


# ---------------------------------------------------------------- the differences, one check each
def _diff_crossentropy_logits(cmp: Comparison) -> list:
    """A crossentropy on a softmax/sigmoid output: TensorFlow takes the cached logits, others clip."""
    out = []
    for row in cmp.differing():
        if row["kind"] != "compiled" or row["fn"] not in CROSSENTROPIES or (row["config"] or {}).get("from_logits"):
            continue
        with_logits = [b for b in cmp.backends if cmp.finding(b, "CROSSENTROPY_FROM_LOGITS", row["id"])]
        on_logits = [b for b in cmp.backends if reads_cached_logits(b)]
        clipping = [b for b in cmp.backends if reads_cached_logits(b) is False]
        if not (with_logits and clipping) or cmp.arithmetic_differs(row["id"]) is False:
            continue
        fn, act = row["fn"], ACTIVATION[row["fn"]]
        cites = []
        parts = []
        for b in on_logits:
            tf_cites = _cached_logits_cites(fn) if b == "tensorflow" else []
            cites += tf_cites
            parts.append(
                f"on {LABEL.get(b, b)}, the {act} caches its logits on its output"
                + (f" ({where(tf_cites[0])})" if tf_cites else "")
                + f" and {fn} computes from them, exactly and without clipping"
                + (f" ({where(tf_cites[1])})" if tf_cites else ""))
        for b in clipping:
            c = _clip_cite(b, fn)
            cites.append(c)
            parts.append(f"{LABEL.get(b, b)}'s {fn} never reads the cached logits ({nn_module(b)} has no "
                         f"_keras_logits): it clips the probabilities to [{cmp.epsilon:g}, 1 - {cmp.epsilon:g}] "
                         f"({where(c)}) and takes their log")
        cap = -math.log(cmp.epsilon)
        msg = (f"{row['id']} is {fn} on a {act} output (from_logits=False): " + "; ".join(parts) + ". "
               f"Where the {act} saturates (a probability below {cmp.epsilon:g}) the clipped form counts at most "
               f"-log({cmp.epsilon:g}) = {cap:.4g} per entry, while the logits give the true value, and the "
               f"gradient of a clipped entry is 0. On this batch: {_values(row)}.")
        arith = cmp.arithmetic.get(row["id"])
        if arith and len(arith["values"]) > 1:
            same_outputs = ", ".join(f"{LABEL.get(b, b)} {_fmt(v)}" for b, v in arith["values"].items())
            msg += (f" On identical outputs (this run's forward pass, {arith['outside']} of {arith['entries']} "
                    f"probabilities outside [{cmp.epsilon:g}, 1 - {cmp.epsilon:g}]) the backends' arithmetic alone "
                    f"gives {same_outputs}")
            msg += (": the rest of the difference comes from the forward pass (random layers: "
                    f"{', '.join(cmp.random_layers)})." if cmp.random_layers else ".")
        msg += (" To train on the same number everywhere, give the output layer no activation and compile the "
                "loss with from_logits=True.")
        out.append({"code": "BACKEND_DIFF_CROSSENTROPY_LOGITS", "level": "warning",
                    "title": f"{fn} on a {act} output", "term": row["id"], "message": msg, "cites": cites,
                    "backends": {b: ("from the cached logits" if b in on_logits else "from clipped probabilities")
                                 for b in on_logits + clipping}})
    return out


TRAINER = {"tensorflow": ("keras.src.backend.tensorflow.trainer", "TensorFlowTrainer.train_step"),
           "torch": ("keras.src.backend.torch.trainer", "TorchTrainer.train_step")}


def _diff_jax_only_override(cmp: Comparison) -> list:
    """Terms of a `stateless_compute_loss` override: only `JAXTrainer.compute_loss_and_updates` calls it; the
    other backends' `train_step` take the loss from `_compute_loss` (their runs say OVERRIDE_NEVER_CALLED)."""
    if "jax" not in cmp.docs:
        return []
    skipping = [b for b in cmp.backends if any(f["code"] == "OVERRIDE_NEVER_CALLED" for f in cmp.docs[b]["findings"])]
    by_id = {t["id"]: t for t in cmp.docs["jax"]["terms"]}
    out = []
    for row in cmp.differing():
        source = (by_id.get(row["id"]) or {}).get("source") or {}
        function = source.get("function") or ""
        if not skipping or not function.endswith(".stateless_compute_loss"):
            continue
        jax_cite = cite("jax", "keras.src.backend.jax.trainer", "JAXTrainer.compute_loss_and_updates",
                        m.Assign(targets=[m.AssignTarget(target=m.Tuple())],
                                 value=m.Call(func=self_attr("stateless_compute_loss"))),
                        "loss, variables = self.stateless_compute_loss(...)")
        others = [cite(b, *TRAINER[b], *step_loss()) for b in skipping if b in TRAINER]
        msg = (f"{row['id']} is computed in {function} (line {source.get('line')}), which only the JAX backend's "
               f"trainer calls ({where(jax_cite)}); "
               + "; ".join(f"{LABEL.get(c['engine'], c['engine'])}'s train_step takes its loss from "
                           f"self._compute_loss ({where(c)}) and never calls it" for c in others)
               + f", so there the model trains without this term. On this batch: {_values(row)}. To train on the "
               "same loss on every backend, put it in a compute_loss override instead.")
        out.append({"code": "BACKEND_DIFF_OVERRIDE", "level": "warning",
                    "title": "a stateless_compute_loss override only JAX calls", "term": row["id"],
                    "message": msg, "cites": [jax_cite] + others,
                    "backends": {b: ("with the override" if b == "jax" else "without it") for b in ["jax"] + skipping}})
    return out


CHECKS = (_diff_crossentropy_logits, _diff_jax_only_override)


def differences(cmp: Comparison) -> list:
    """Every term that differs beyond tolerance, explained by a check or listed as unexplained."""
    out = []
    for check in CHECKS:
        out += check(cmp)
    explained = {d["term"] for d in out}
    left = [r for r in cmp.differing() if r["id"] not in explained]
    if left:
        why = "lossmap has no explanation for these from the backends' sources"  # no check claims them
        if cmp.random_layers:
            why = (f"The model's random layers ({', '.join(cmp.random_layers)}) draw random numbers in training mode, "
                   "and each backend draws its own, so terms downstream of them differ by chance")
        notes = []
        for r in left:
            if cmp.arithmetic_differs(r["id"]) is False:
                same = ", ".join(f"{LABEL.get(b, b)} {_fmt(v)}" for b, v in cmp.arithmetic[r["id"]]["values"].items())
                notes.append(f"{r['id']}'s arithmetic agrees on identical outputs ({same})")
        out.append({"code": RANDOM_LAYERS if cmp.random_layers else UNEXPLAINED,
                    "level": "warning" if not cmp.random_layers else "info",
                    "title": "differences from the forward pass" if cmp.random_layers else
                    "differences without a known cause",
                    "term": left[0]["id"], "terms": [r["id"] for r in left], "cites": [],
                    "message": "; ".join(f"{r['id']}: {_values(r)}" for r in left) + f". {why}"
                    + (f"; {'; '.join(notes)}" if notes else "") + "."})
    return out
