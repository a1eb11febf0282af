"""Custom training code written for the JAX backend (a factory, for `lossmap check FILE.py:FUNCTION`).

(A `compute_loss` override is backend-agnostic Keras API: tests/custom_steps.py's `penalised` serves
on JAX too, and lossmap explains it there.) `stateless_step` (explained on JAX: the loss the function
handed to `jax.value_and_grad` returns, split into addends): a `train_step(self, state, data)` override as
Keras's "customizing fit() with JAX" guide writes it: `jax.value_and_grad` of a method that runs
`stateless_call` and `compute_loss`, then `optimizer.stateless_apply` and the metrics' stateless
updates, returning the new state. `stateless_penalised` (explained on JAX): an override of
`stateless_compute_loss`, the method `JAXTrainer.compute_loss_and_updates` gets the loss from, adding a
penalty to what Keras's own returns.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
from keras import layers, regularizers  # noqa: E402

from lossmap.examples import same_weights  # noqa: E402


class StatelessStepModel(keras.Model):
    """A `train_step(state, data)` override: the data loss plus a smoothness penalty on the prediction."""

    def loss_and_updates(self, trainable_variables, non_trainable_variables, x, y, training=False):
        y_pred, non_trainable_variables = self.stateless_call(
            trainable_variables, non_trainable_variables, x, training=training)
        data_loss = self.compute_loss(x, y, y_pred)
        smooth = keras.ops.mean(keras.ops.square(y_pred[:, 1:] - y_pred[:, :-1]))
        loss = data_loss + 0.1 * smooth
        return loss, (y_pred, non_trainable_variables)

    def train_step(self, state, data):
        trainable_variables, non_trainable_variables, optimizer_variables, metrics_variables = state
        x, y = data[0], data[1]
        grad_fn = jax.value_and_grad(self.loss_and_updates, has_aux=True)
        (loss, (y_pred, non_trainable_variables)), grads = grad_fn(
            trainable_variables, non_trainable_variables, x, y, training=True)
        trainable_variables, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, grads, trainable_variables)
        new_metrics_vars, logs = [], {}
        for metric in self.metrics:
            this = metrics_variables[len(new_metrics_vars): len(new_metrics_vars) + len(metric.variables)]
            if metric.name == "loss":
                this = metric.stateless_update_state(this, loss)
            else:
                this = metric.stateless_update_state(this, y, y_pred)
            logs[metric.name] = metric.stateless_result(this)
            new_metrics_vars += this
        state = (trainable_variables, non_trainable_variables, optimizer_variables, new_metrics_vars)
        return logs, state


def stateless_step():
    same_weights(5)
    inputs = keras.Input(shape=(4,), name="x")
    h = layers.Dense(6, activation="tanh", kernel_regularizer=regularizers.L2(1e-2), name="hidden")(inputs)
    out = layers.Dense(3, name="out")(h)
    model = StatelessStepModel(inputs, out, name="stateless_step")
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    return model



class NoisyPenalisedModel(keras.Model):
    """A `compute_loss` override that reads `model.losses` itself, on a model with Dropout, BatchNormalization
    and an activity regularizer: Keras's loss + 0.1 * mean|y_pred| + 0.01 * the losses again."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        base = super().compute_loss(x, y, y_pred, sample_weight, training)
        smooth = keras.ops.mean(keras.ops.abs(y_pred))
        return base + 0.1 * smooth + 0.01 * sum(self.losses)


def noisy_penalised():
    same_weights(6)
    inputs = keras.Input(shape=(4,), name="x")
    h = layers.Dense(6, activation="relu", activity_regularizer=regularizers.L1(1e-3),
                     kernel_regularizer=regularizers.L2(1e-2), name="h")(inputs)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.Dropout(0.3, name="drop")(h)
    out = layers.Dense(2, name="out")(h)
    model = NoisyPenalisedModel(inputs, out, name="noisy_penalised")
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    return model


class StatelessPenalisedModel(keras.Model):
    """A `stateless_compute_loss` override: Keras's loss (compiled + the L2 regularizer) + 0.2 * mean(y_pred^2)."""

    def stateless_compute_loss(self, trainable_variables, non_trainable_variables, metrics_variables,
                               x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss, variables = super().stateless_compute_loss(
            trainable_variables, non_trainable_variables, metrics_variables,
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        penalty = keras.ops.mean(keras.ops.square(y_pred))
        return loss + 0.2 * penalty, variables


def stateless_penalised():
    same_weights(7)
    inputs = keras.Input(shape=(4,), name="x")
    h = layers.Dense(6, activation="tanh", kernel_regularizer=regularizers.L2(1e-2), name="hidden")(inputs)
    out = layers.Dense(2, name="out")(h)
    model = StatelessPenalisedModel(inputs, out, name="stateless_penalised")
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    return model


class BothOverridesModel(StatelessPenalisedModel):
    """Overrides compute_loss as well as stateless_compute_loss (refused on JAX in one line)."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return super().compute_loss(x, y, y_pred, sample_weight, training) * 2.0


def both_overrides():
    same_weights(7)
    inputs = keras.Input(shape=(4,), name="x")
    out = layers.Dense(2, name="out")(inputs)
    model = BothOverridesModel(inputs, out, name="both_overrides")
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    return model
