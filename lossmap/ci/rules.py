"""Every finding code with its description: the one table SARIF's rules and README's findings table come from.

A row is `code, level, title, when, help`: `level` is the level the code is
raised at (a few codes vary, and say so in `when`); `title` is SARIF's short
description; `when` is the README's column and SARIF's full description;
`help` says what to do. Rows are in order of
importance: the GitHub format shows the first ones when there are too many
findings for the platform's annotation limits.

    python -m lossmap.ci.rules     # README's findings table, generated from this one
"""
from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("info", "warning", "error")


@dataclass(frozen=True)
class Rule:
    code: str
    level: str  # default level; the level of each finding is carried by the finding itself
    title: str  # one line, plain text
    when: str  # when it is raised (Markdown)
    help: str  # what to do about it (Markdown)
    rank: int = 0  # position in the table: lower is more important

    @property
    def sarif_level(self) -> str:
        return {"info": "note"}.get(self.level, self.level)


_LOCK_HELP = ("If the change is intended, run `lossmap lock MODEL --update` and commit the lock file with it; "
              "otherwise restore what the lock file records.")
_ENGINE_HELP = ("Compare both engines on this model with `lossmap report MODEL --compare-engines`; the finding "
                "cites the lines of both Keras sources that differ.")
_CUSTOM_HELP = "See the term's `source` line in the custom training code; `lossmap report` shows it in context."

ROWS = (
    # ---- verification
    ("TOTAL_MISMATCH", "error",
     "The reproduced loss does not match Keras",
     "the reproduced total differs from `compute_loss` or `train_step` beyond tolerance (names the term that "
     "differs most)",
     "Run `lossmap explain MODEL`: every term is shown with Keras's own value next to lossmap's. A random layer "
     "that is not seeded, or user code with side effects, makes passes differ; a difference of numerical noise "
     "only needs a looser `--rtol`/`--atol`."),
    ("NON_FINITE_TERM", "error",
     "A loss term is NaN or Inf", "a term is NaN or Inf (named)",
     "The loss and every gradient through it are not finite: look at the named term's inputs (a log of 0, a "
     "division by 0, exploding weights) or the batch given with `--data`."),
    ("COMPUTE_LOSS_FAILED", "error",
     "Keras's compute_loss raised", "Keras's own `compute_loss` raised",
     "The message quotes the exception; the model would fail the same way in `fit`."),
    ("NAME_BREAKS_FIT", "error",
     "A name that fit and evaluate will reject",
     "a layer, model or loss name has characters a TensorFlow name scope rejects (a space, a quote, `<`, `=`, "
     "...): lossmap runs eagerly, but `fit` and `evaluate` trace their step and fail (names the offenders, cites "
     "the check in the installed TensorFlow)",
     "Rename them as the finding suggests (letters, digits and `_ . - >` only); dict output keys and metric "
     "names may keep any characters."),
    ("STATE_NOT_RESTORED", "error",
     "The model's state was not restored (a lossmap bug)",
     "the model's state could not be restored bit for bit (a lossmap bug)",
     "Please report it with the model or a factory that builds it; the model object in memory may have "
     "changed (files on disk never are)."),
    # ---- the lock file
    ("LOCK_TERM_REMOVED", "error",
     "A locked loss term is gone",
     "a term the lock file records is no longer in the loss (a dropped regularizer, output or `add_loss`)",
     _LOCK_HELP),
    ("LOCK_TERM_ADDED", "error",
     "A loss term is not in the lock file", "the loss has a term the lock file does not record", _LOCK_HELP),
    ("LOCK_WEIGHT_CHANGED", "error",
     "A loss weight changed", "a term's loss weight (or a custom term's coefficient) changed",
     _LOCK_HELP),
    ("LOCK_REGULARIZER_CHANGED", "error",
     "A regularizer's strength changed", "a regularizer's strength (`l1`, `l2`, ...) changed", _LOCK_HELP),
    ("LOCK_REDUCTION_CHANGED", "error",
     "A loss's reduction changed", "a loss's reduction changed", _LOCK_HELP),
    ("LOCK_FUNCTION_CHANGED", "error",
     "A loss or regularizer function changed", "a term's loss or regularizer function changed", _LOCK_HELP),
    ("LOCK_EXPRESSION_CHANGED", "error",
     "A custom loss term's expression changed", "a custom term's expression in the training code changed", _LOCK_HELP),
    ("LOCK_CONFIG_CHANGED", "error",
     "A loss setting changed",
     "another setting of a term that affects its value changed (`from_logits`, `label_smoothing`, ...)",
     _LOCK_HELP),
    ("LOCK_TERM_CHANGED", "error",
     "A loss term moved", "a term moved: its kind, output, owner or objective changed", _LOCK_HELP),
    ("LOCK_ENGINE_CHANGED", "error",
     "The Keras engine or backend changed", "the model is explained by another Keras (tf_keras or Keras 3) or backend",
     _LOCK_HELP),
    ("LOCK_VALUE_CHANGED", "error",
     "A locked loss value moved beyond tolerance",
     "with `lossmap lock --values`: a term's value or the total moved beyond the lock file's tolerance on the "
     "same batch",
     "Values change with the weights: lock values only for a model whose weights are fixed (a factory with a "
     "seed, a committed archive). " + _LOCK_HELP),
    ("LOCK_KERAS_VERSION_CHANGED", "info",
     "Another Keras version than the lock file's", "the installed Keras is another version than the lock file's",
     "The composition is compared all the same; `lossmap lock MODEL --update` records the new version."),
    # ---- custom training code (levels as the custom-code stage raises them)
    ("GRADIENTS_NOT_VERIFIED", "error",
     "The step applies other gradients than its terms add up to",
     "custom training code: the gradients the step applies are not, variable by variable, the sum of its terms' "
     "gradients (or differ between the step as written and its instrumented copy)",
     "The decomposition does not account for what trains the model: look for gradients changed between "
     "`tape.gradient` and `apply_gradients` (clipping, scaling) and for randomness the seed does not fix."),
    ("GRADIENT_TRANSFORMED", "info",
     "The step changes its gradient before applying it",
     "custom training code changes the gradient between `tape.gradient` and the optimizer (clipping, scaling, "
     "masking): the terms add up to what it differentiates; the optimizer receives something else",
     "Per-term gradient statistics describe the gradient before the change; clipping by global norm keeps "
     "each term's direction, per-variable clipping does not."),
    ("MODEL_LOSSES_IGNORED", "warning",
     "The training step ignores model.losses",
     "custom training code: `model.losses` has entries (how many, their sum) and the loss the step differentiates "
     "never includes them, so the model's regularizers and `add_loss` terms train nothing",
     "Add `sum(model.losses)` (or call `model.compute_loss`) inside the tape, or remove the regularizers if they "
     "are not meant to train."),
    ("DEAD_TERM", "warning",
     "A loss term trains nothing",
     "a term's gradient is zero, or below float32 resolution of the summed gradient, on every weight it "
     "reaches: it cannot change a single update (not raised when the cause is a loss weight of 0: "
     "`ZERO_LOSS_WEIGHT` says so); for a term of custom training code, the line where its path breaks "
     "(`.numpy()`, `stop_gradient`, outside the tape, from the batch alone)",
     "A penalty of inputs and targets only, a `stop_gradient`, frozen weights or L1 of a softmax: remove the "
     "term or make it depend on trainable weights."),
    ("TRAINING_FLAG_MISSING", "warning",
     "The training step calls the model without training=True",
     "custom training code calls the model (or a layer) without `training=True`, and it has layers that compute "
     "something else in training (Dropout, BatchNormalization, noise): they run in inference mode",
     "Call the model as `model(x, training=True)` inside the training step."),
    ("LOGGED_LOSS_DIFFERS", "warning",
     "The logged loss is not the trained loss",
     "custom training code: the loss the step returns (or Keras logs, for a `compute_loss` override) is not the "
     "loss it differentiates", _CUSTOM_HELP),
    ("UNSPLIT_LOSS", "info",
     "A custom loss could not be split into terms",
     "custom training code: a loss lossmap could not split further (a loop, a branch), reported as one custom "
     "term with the reason", _CUSTOM_HELP),
    ("INPUT_GRADIENT_TERM", "info",
     "A loss term is built from d(output)/d(input)",
     "custom training code: a term depends on the gradient of an output with respect to an input; which tape "
     "took it, and whether the tape that differentiates the loss recorded it (the second-order path)",
     _CUSTOM_HELP),
    ("MULTIPLE_OPTIMIZERS", "info",
     "Several losses, one optimizer each",
     "custom training code differentiates more than one loss, one optimizer each (see `objectives`): the shared "
     "variables, and their first update as written next to one optimizer on the summed loss", _CUSTOM_HELP),
    # ---- where Keras changes the loss without an error (lossmap.surprises)
    ("SAMPLE_WEIGHT_ON_TIMESTEPS", "error",
     "Per-sample weights applied to time steps",
     "sample weights of shape (batch,) on a loss of shape (batch, time): with batch == time Keras 3 broadcasts "
     "them along time, so weight j scales step j of every sample (the value trained on and the value with rows "
     "weighted); info on tf_keras, which weights rows, saying what Keras 3 would do",
     "Pass the weights with shape (batch, 1) (`sample_weight[:, None]`): both engines then weight whole samples."),
    ("LOSS_SCALE_SKIPPED", "error",
     "A custom step skips the loss scale its optimizer divides by",
     "mixed precision: a custom training step hands its gradients to a `LossScaleOptimizer` without scaling the "
     "loss: Keras 3 divides them by the dynamic scale all the same (warning on tf_keras, which applies them as "
     "given, unprotected from float16 underflow)",
     "Inside the tape, `loss = self.optimizer.scale_loss(loss)` before `tape.gradient` (tf_keras: "
     "`get_scaled_loss`, then `get_unscaled_gradients`)."),
    ("LIST_LOSS_ON_DICT_OUTPUTS", "warning",
     "A loss list paired with dict outputs in sorted-key order",
     "dict outputs with a list `loss` or `loss_weights`: Keras pairs the list with the outputs' sorted keys, not "
     "with the order the code wrote them; says which loss and weight each output really got, and the loss paired "
     "in the code's order",
     "Give `loss` and `loss_weights` as dicts keyed by output name."),
    ("UNSCALED_REPLICA_LOSS", "warning",
     "A loss term the replicas count N times",
     "custom training code under a tf.distribute strategy with N replicas: terms the code computes itself (a "
     "plain mean, `model.losses` read directly) are not divided by N, so the summed gradient counts them N times",
     "Divide them by `self.distribute_strategy.num_replicas_in_sync`, or let Keras compute them "
     "(`super().compute_loss`, a `keras.losses.Loss`)."),
    ("REGULARIZER_GAP", "warning",
     "Layers of a family left without the regularizer the others carry",
     "most trainable layers of one family (convolutions, dense, embeddings, recurrent) carry a weight regularizer "
     "and some do not: names them, and what the same regularizer would add on this batch (not raised when only "
     "output layers are left out, often on purpose)",
     "Set the regularizer on them too; note the argument's name (`DepthwiseConv2D` takes `depthwise_regularizer`)."),
    ("SAMPLE_WEIGHTS_DILUTE", "warning",
     "Zero sample weights still count in the batch size",
     "`sum_over_batch_size` with sample weights that are zero (warning) or not uniform (info): the weighted sum is "
     "divided by the number of entries, not by the weights' sum (both values given)",
     "Keras 3: `reduction='mean_with_sample_weight'` divides by the weights' sum; tf_keras: normalise the weights "
     "per batch."),
    ("DISTRIBUTION_LOSS_SCALING", "info",
     "How the loss is divided over the replicas",
     "the model's tf.distribute strategy has more than one replica: where Keras divides the loss by the replica "
     "count and multiplies the logs back, and what each replica differentiates on this batch",
     "Nothing to do for losses Keras computes; see `UNSCALED_REPLICA_LOSS` for those your code computes."),
    ("MIXED_PRECISION_LOSS_SCALE", "info",
     "The loss is multiplied by a loss scale under mixed_float16",
     "the optimizer is a `LossScaleOptimizer` (compile adds one under `mixed_float16`): Keras's step multiplies "
     "the loss by the dynamic scale before the gradient and divides the gradients back (the scaled value given)",
     "Nothing to do; a custom step must scale its loss itself (see `LOSS_SCALE_SKIPPED`)."),
    # ---- how Keras adds this model's loss
    ("ADD_LOSS_NON_SCALAR", "warning",
     "add_loss of a non-scalar tensor",
     "a layer passed a non-scalar tensor to `add_loss`: Keras sums it, so its strength grows with batch size",
     "Reduce the tensor to a scalar (`ops.mean`) before `add_loss`, unless growth with the batch is intended."),
    ("ZERO_LOSS_WEIGHT", "warning",
     "A compiled loss has loss weight 0", "a compiled loss with loss weight 0",
     "The output is computed and logged but trains nothing; remove it from `loss` or give it a weight."),
    ("REDUCTION_NONE", "warning",
     "A compiled loss has reduction none",
     "a compiled loss with reduction `none`: gradient uses the sum, logs show the mean",
     "Use `sum_over_batch_size` (the default) or `sum` explicitly."),
    ("FROM_LOGITS_ON_PROBABILITIES", "warning",
     "from_logits=True on a softmax/sigmoid output", "`from_logits=True` on a softmax/sigmoid output",
     "Either drop the output's activation or set `from_logits=False`; Keras happens to use the activation's "
     "input here, but other code reading the output will not."),
    ("GRADIENT_CONFLICT", "warning",
     "Two loss terms pull against each other",
     "two terms pull the weights they share in opposing directions (cosine below -0.5); not raised for a weight "
     "regularizer, which pulls against the data terms by design",
     "Expected for some objectives; otherwise rebalance the loss weights or consider PCGrad-style methods."),
    ("GRADIENT_DROWNED", "warning",
     "A loss term's gradient is drowned by another's",
     "a term's gradient is under 1e-3 of the largest one it shares weights with: summed, it barely moves them "
     "(info for a weight regularizer: weight decay is meant to be small next to the data loss)",
     "Raise the term's weight, or lower the dominant term's, if the small term is meant to matter."),
    ("CUSTOM_TRAIN_STEP", "warning",
     "The model overrides train_step, whose source lossmap cannot read",
     "the model overrides `train_step` but lossmap could not read its source (the message says why): the "
     "compile-time inventory is shown instead, and may not be the whole story",
     "Define the class in a `.py` file lossmap can read (a factory or `--import`), so the step is decomposed."),
    ("CUSTOM_COMPUTE_LOSS", "warning",
     "The model overrides compute_loss, whose source lossmap cannot read",
     "the model overrides `compute_loss` but lossmap could not read its source (the message says why): the "
     "compile-time inventory is shown instead, and may not be the whole story",
     "Define the class in a `.py` file lossmap can read (a factory or `--import`), so the method is decomposed."),
    ("NOT_COMPILED", "warning",
     "The model is not compiled",
     "no compiled loss and no train step; `model.losses` is still listed (exit 2 only if there is nothing at all)",
     "Compile the model with its loss to check what `fit` trains on."),
    ("TRAIN_STEP_UNCHECKED", "warning",
     "The real train_step could not be run", "the real `train_step` could not be run",
     "The total was verified against `compute_loss` only; the message says why `train_step` failed."),
    ("PER_OUTPUT_LOGS_UNWEIGHTED", "info",
     "The per-output loss logs do not add up to the loss",
     "the logged `loss` is not the sum of the `<output>_loss` logs (those are unweighted; additional losses "
     "are in none of them)",
     "Read the logged `loss` as the training objective; the per-output logs are before their loss weights."),
    ("CROSSENTROPY_FROM_LOGITS", "info",
     "Crossentropy computed from the activation's logits",
     "a crossentropy on a softmax/sigmoid output is computed by Keras from the logits, not from the clipped "
     "probabilities the documentation describes",
     "Nothing to do; this is why a hand computation from the probabilities differs slightly."),
    ("CROSSENTROPY_CLIPPED", "warning",
     "Crossentropy from clipped probabilities (JAX)",
     "on the JAX backend a crossentropy on a softmax/sigmoid output is computed from the probabilities "
     "clipped to [epsilon, 1 - epsilon], and samples of the batch are at the clip (loss capped, no gradient)",
     "Output the logits (activation=None) and compile the loss with from_logits=True: the same loss on "
     "every backend."),
    ("OVERRIDE_NEVER_CALLED", "warning",
     "A loss override this backend never calls",
     "the model overrides stateless_compute_loss, which only the JAX trainer calls; on TensorFlow and PyTorch "
     "train_step takes the loss from _compute_loss, so the model trains without the override",
     "Override compute_loss instead: every backend's train_step calls it."),
    ("OPAQUE_TERM", "info",
     "A user-defined loss or regularizer", "a user-defined loss or regularizer was called as it is",
     "lossmap verifies the sum but cannot recompute this term independently."),
    ("REGULARIZER_ON_FROZEN_WEIGHT", "info",
     "A regularizer on a frozen weight",
     "a regularizer on a non-trainable variable, which Keras leaves out",
     "Make the variable trainable if the penalty is meant to apply."),
    ("OPTIMIZER_SCALE_NOTE", "info",
     "What the optimizer does with the summed gradient",
     "what the model's optimizer does with the summed gradient (Adam-type optimizers normalise its scale)",
     "Nothing to do; it explains how the gradient shares translate into updates."),
    ("VERIFICATION_NOTE", "info",
     "How the loss was verified",
     "how verification was done (for example a fresh copy of an unbuilt optimizer took the step)",
     "Nothing to do."),
    # ---- where tf_keras and Keras 3 differ
    ("ENGINE_DIFF_ADD_LOSS_NON_SCALAR", "error",
     "tf_keras and Keras 3 differ on a non-scalar add_loss",
     "a non-scalar `add_loss` tensor: Keras 3 sums it, tf_keras's `add_n` does not reduce and fails on mixed "
     "shapes (error: before the user hits it)", _ENGINE_HELP),
    ("ENGINE_DIFF_ACTIVITY_NORMALISATION", "warning",
     "tf_keras and Keras 3 normalise activity regularizers differently",
     "an activity regularizer: whether each engine divides by the batch size (info when they agree)",
     _ENGINE_HELP),
    ("ENGINE_DIFF_PER_OUTPUT_LOGS", "warning",
     "tf_keras and Keras 3 log per-output losses differently",
     "several outputs: whether each engine logs `<output>_loss` before or after the loss weight (info when "
     "they agree)", _ENGINE_HELP),
    ("ENGINE_DIFF_LOSS_WEIGHTS_VALIDATION", "warning",
     "tf_keras and Keras 3 check loss_weights differently",
     "`loss_weights` (or a `loss` list) of another length than the outputs: tf_keras drops outputs, Keras 3 "
     "raises (info on Keras 3)", _ENGINE_HELP),
    ("ENGINE_DIFF_DISTRIBUTION_SCALING", "info",
     "tf_keras and Keras 3 scale for distribution differently",
     "a SUM-reduced loss, or more than one replica: where each engine divides by the replica count (warning "
     "with several replicas)", _ENGINE_HELP),
    ("ENGINE_DIFF_FROZEN_REGULARIZER", "warning",
     "tf_keras and Keras 3 differ on regularizers of frozen weights",
     "a regularizer on a non-trainable weight: tf_keras counts it, Keras 3 does not (info on Keras 3)",
     _ENGINE_HELP),
    ("ENGINE_DIFF_CROSSENTROPY_EPSILON", "info",
     "tf_keras and Keras 3 differ on binary crossentropy's epsilon",
     "binary crossentropy on probabilities: tf_keras adds epsilon inside the logs (both values given)",
     _ENGINE_HELP),
)

RULES = {row[0]: Rule(*row, rank=rank) for rank, row in enumerate(ROWS)}


def rule(code: str) -> Rule:
    """The rule of `code`; a code the table does not know yet still gets a (generic) rule."""
    found = RULES.get(code)
    if found is not None:
        return found
    return Rule(code, "warning", code, f"`{code}` (no description yet)", "See `lossmap explain MODEL`.",
                rank=len(RULES))


def plain(markdown: str) -> str:
    """Markdown's code spans as plain text."""
    return markdown.replace("`", "")


def markdown_table() -> str:
    """README's findings table."""
    lines = ["| code | level | when |", "| --- | --- | --- |"]
    lines += [f"| `{r.code}` | {r.level} | {r.when.replace('|', '&#124;')} |" for r in RULES.values()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
