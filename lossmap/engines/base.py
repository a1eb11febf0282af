"""The interface every engine (Keras 3, tf_keras, ...) implements.

An engine knows one Keras implementation: how to load a model, where its loss
terms live, how it runs one training-mode forward pass, how its own
`compute_loss` and `train_step` are called, and how it reduces and adds terms.
It hands the rest of lossmap plain data (NumPy arrays, strings, floats).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class TensorSpec:
    name: str
    shape: tuple  # batch dimension first, None where unknown
    dtype: str


@dataclass
class OutputSpec(TensorSpec):
    loss_fn: Optional[str] = None  # name of the built-in loss function scoring it, if known
    ignore_class: Optional[int] = None  # sparse crossentropy's ignore_class: a label value Keras leaves out


@dataclass
class Signature:
    """What a batch for this model must look like."""

    inputs: list  # [TensorSpec], in the order the model takes them
    input_structure: str  # "single" | "list" | "dict"
    outputs: list  # [OutputSpec], in the order of the model's flat outputs
    output_structure: str
    int_input_bound: int = 2  # exclusive bound for synthetic integer inputs


@dataclass
class Batch:
    """Arrays by name; the engine packs them into the model's structures."""

    x: dict
    y: dict
    sample_weight: dict  # output name -> array (outputs without one are absent)
    source: str
    seed: Optional[int]

    @property
    def size(self) -> int:
        return int(next(iter(self.x.values())).shape[0])


@dataclass
class CompiledCapture:
    """One compiled loss, with the tensors of the captured forward pass."""

    name: str
    output: str
    loss_class: str
    fn: Optional[str]  # built-in loss function name, or None when user-defined
    fn_kwargs: dict
    config: Optional[dict]
    reduction: Optional[str]
    dtype: str
    weight: Optional[float]
    y_true: np.ndarray
    y_pred: np.ndarray
    logits: Optional[np.ndarray]  # the logits Keras will use instead of y_pred, if any
    mask: Optional[np.ndarray]
    sample_weight: Optional[np.ndarray]
    keras_value: Any  # what Keras's loss object returns for this output (before weight)
    # For user-defined losses: returns (elementwise values, mask) by calling their code.
    call_user: Optional[Callable] = None
    overrides_call: bool = False  # the Loss overrides __call__: nothing to reproduce
    origin: Optional[dict] = None  # where user code for this loss lives (see code_origin)


@dataclass
class AdditionalCapture:
    """One entry of `model.losses`: add_loss, activity or weight regularizer."""

    kind: str  # "add_loss" | "activity_regularizer" | "weight_regularizer"
    layer: str
    variable: Optional[str]
    index: int  # position among this layer's entries of the same kind
    regularizer: Optional[str]  # class name of the regularizer
    config: Optional[dict]
    builtin: bool
    source_tensor: Optional[np.ndarray]  # the variable's value or the layer's output
    raw: np.ndarray  # the tensor Keras put in model.losses
    keras_value: float  # what Keras adds for it (after its own aggregation)
    call_user: Optional[Callable] = None  # for user regularizers: calls their code
    normalised_by_batch: bool = False  # activity loss divided by the batch size
    origin: Optional[dict] = None  # add_loss: the owning layer's class; custom regularizer: its code


@dataclass
class Capture:
    compiled: list
    additional: list
    compute_loss: Optional[float]
    compute_loss_error: Optional[str]
    dtype: str
    epsilon: float
    loss_free_outputs: list = field(default_factory=list)  # outputs with no loss
    gradient_context: Any = None  # engine-private: a recorded pass for begin_attribution, released by it


@dataclass
class Verification:
    train_step: Optional[float]
    train_step_error: Optional[str]
    path: str
    notes: list
    state_restored: bool
    # the gradient the real step applied, by variable path (with record_gradient; None where not
    # usable): lets gradient attribution derive one term's gradient instead of another backward pass
    total_gradient: Optional[dict] = None


class Engine:
    """What the pipeline, `lossmap.compare` and `lossmap.engine_diff` call on an engine.

    Implemented by `lossmap.engines.keras3.Keras3Engine` and
    `lossmap.engines.tf_keras.TfKerasEngine` (shared code in `lossmap.engines.common`).
    Class attributes and class methods work without Keras installed; the rest
    needs an instance (`lossmap.engines.make_engine`).
    """

    name = "?"  # "keras3" | "tf_keras": ModelInfo.engine, the JSON's model.engine
    label = "?"  # how messages name it ("Keras 3")
    backend_name = "tensorflow"  # the Keras backend this engine runs on (lossmap.engines.BACKENDS)
    package = "?"  # the top-level Python package of this Keras ("keras")
    engine_diffs_by_default = False  # the ENGINE_DIFF_* findings without --compare-engines
    reason: Optional[str] = None  # why this engine explains the model, in words (set by `lossmap.load`)
    # How this Keras reduces and adds the terms, as NumPy mirrors (`<engine>/rules.py`):
    # what `lossmap.terms` reproduces each term with.
    rules: Any = None

    # ------------------------------------------------------------ identity (no Keras needed)
    @classmethod
    def installed(cls) -> bool:
        """Whether this Keras can be imported here."""
        raise NotImplementedError

    @classmethod
    def owns(cls, obj) -> bool:
        """Whether `obj` (a live model) belongs to this Keras, by its classes' modules, without importing Keras."""
        raise NotImplementedError

    @classmethod
    def citations(cls) -> dict:
        """This engine's half of the engine-difference citations (`lossmap.engine_diff.cite`).

        key -> (module, qualname, [(libcst matcher, label[, within matcher]), ...]).
        """
        raise NotImplementedError

    # ------------------------------------------------------------ identity
    def version(self) -> str:
        """The installed Keras's version."""
        raise NotImplementedError

    def backend(self) -> str:
        """The Keras backend's name ("tensorflow")."""
        raise NotImplementedError

    def is_model(self, obj) -> bool:
        """Whether `obj` is a model of this Keras."""
        raise NotImplementedError

    def summation(self) -> str:
        """How this Keras adds the terms into the total, in one line (JSON `total.summation`)."""
        raise NotImplementedError

    # ------------------------------------------------------------ loading and the model
    def load_archive(self, path: str, safe_mode: bool):
        """The model saved at `path`; any failure is a one-line `UserError` saying what to do."""
        raise NotImplementedError

    def model_info(self, model, source: str, saved_with: Optional[str]):
        """`lossmap.analysis.ModelInfo` of a live model."""
        raise NotImplementedError

    def signature(self, model) -> Signature:
        """What a batch for `model` must look like."""
        raise NotImplementedError

    def pack_batch(self, model, sig: Signature, batch: Batch):
        """(x, y, sample_weight) of `batch` in the structures `model` takes."""
        raise NotImplementedError

    # ------------------------------------------------------------ the stages
    def capture(self, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
        """One training-mode forward pass; with keep_tape, recorded for begin_attribution."""
        raise NotImplementedError

    def verify_train_step(self, model, batch: Batch, sig: Signature, record_gradient: bool = False) -> Verification:
        """The loss the model's real `train_step` logs on `batch` (the caller restores the state); with
        `record_gradient`, the gradient it applied too (`Verification.total_gradient`)."""
        raise NotImplementedError

    def begin_attribution(self, model, batch: Batch, sig: Signature, terms, limit: int,
                          capture: Optional[Capture] = None, derive: bool = True):
        """The backward passes that need a taped forward pass (the capture's, with keep_tape), which is
        released after them. Returns a pending attribution: `.wants_total_gradient` (whether `finish`
        can derive a term from what the real train_step applied; only with `derive`) and
        `.finish(total_gradient=None)`, which adds the rest and returns (Accumulator, notes)."""
        raise NotImplementedError

    def attribute_gradients(self, model, batch: Batch, sig: Signature, terms, limit: int,
                            total_gradient=None, capture: Optional[Capture] = None):
        """Fold each term's gradient into a `lossmap.gradients.Accumulator`; returns (acc, notes)."""
        pending = self.begin_attribution(model, batch, sig, terms, limit, capture, derive=total_gradient is not None)
        return pending.finish(total_gradient)

    def optimizer_name(self, model) -> Optional[str]:
        """The class name of the optimizer that applies the gradients (None without one)."""
        raise NotImplementedError

    def frozen_regularized_variables(self, model) -> list:
        """Paths of non-trainable regularized variables this Keras leaves out (REGULARIZER_ON_FROZEN_WEIGHT)."""
        raise NotImplementedError

    def engine_facts(self, model, sig: Signature) -> dict:
        """What `lossmap.engine_diff.differences` needs beyond the terms: `engine`, `outputs`,
        `output_names`, `replicas`, `loss_weights` and `losses` as the user gave them, `frozen_regularized`."""
        raise NotImplementedError

    # ------------------------------------------------------------ state and randomness
    def state(self, model):
        """A snapshot of every variable a run can touch: `.restore()`, and `.identical()` (bit for bit)."""
        raise NotImplementedError

    def seed_random(self, seed: int):
        """Make the random draws of the next pass the same as every other pass's."""
        raise NotImplementedError

    # ------------------------------------------------------------ the report
    def walkthrough_anchors(self) -> list:
        """The installed Keras functions behind the total, as `lossmap.sources.Anchor`s (none by default)."""
        return []

    # ------------------------------------------------------------ custom training code (lossmap.steps)
    def custom_code_refusal(self, model, step_fn) -> Optional[str]:
        """Why this engine cannot explain the model's custom training code (an override of `train_step`
        or `compute_loss`, or `--step`), in one line; None when `lossmap.steps` can."""
        return None

    def overrides(self, model) -> dict:
        """{"train_step": function or None, "compute_loss": function or None}: what the model's class overrides."""
        raise NotImplementedError

    def probe(self, model):
        """A context manager for a forward pass that tells `add_loss` entries from activity regularizers."""
        raise NotImplementedError

    def expand_keras_loss(self, model, sig: Signature, call, probe):
        """A step's call of `compute_loss` (a `lossmap.steps.record.KerasCall`) opened into this Keras's
        terms: `.capture` (a `Capture`), `.tensors` and `.regularizer_tensors` (on the user's tape)."""
        raise NotImplementedError

    def additional_for(self, model, losses: list, probe) -> list:
        """`AdditionalCapture`s for the entries of `model.losses` a step read, in the same order."""
        raise NotImplementedError

    def builtin_loss_name(self, obj):
        """The built-in loss function a loss object of this Keras computes, or None (labels for synthetic batches)."""
        raise NotImplementedError

    def optimizer_classes(self) -> tuple:
        """The base classes of this Keras's optimizers (whose `apply_gradients` a run watches)."""
        raise NotImplementedError

    def metric_classes(self) -> tuple:
        """The base classes of this Keras's metrics (state a step may update)."""
        raise NotImplementedError

    def variable_namer(self, model):
        """A function giving each variable of `model` the path the output names it by (`dense/kernel`)."""
        raise NotImplementedError

    def dense_gradient(self, gradient):
        """A gradient as a dense NumPy array (None stays None)."""
        raise NotImplementedError

    def training_layers(self, model) -> list:
        """Paths of layers that compute something else with `training=True` (Dropout, BatchNormalization)."""
        raise NotImplementedError

    def first_update(self, optimizer, gradients: dict, variables: dict) -> dict:
        """Per variable path, the update a fresh copy of `optimizer` makes from `gradients` at `variables`."""
        raise NotImplementedError

    def as_tensors(self, structure):
        """A batch structure of arrays as the tensors a training step receives."""
        raise NotImplementedError

    # ------------------------------------------------------------ the NumPy mirror
    def reduce_weighted(self, values, sample_weight, mask, reduction):
        """A compiled loss's per-sample values reduced as this Keras's `Loss.__call__` does."""
        return self.rules.reduce_weighted(values, sample_weight, mask, reduction)

    def add_terms(self, terms) -> float:
        """The terms added as this Keras adds them into the total."""
        return self.rules.add_terms(terms)
