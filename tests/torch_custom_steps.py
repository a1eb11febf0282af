"""Custom training code on the PyTorch backend, as Keras's guides write it (factories for tests/torch_child.py)."""
import keras
import torch
from keras import layers, regularizers


class PenalisedModel(keras.Model):
    """Overrides compute_loss only: Keras's own train_step differentiates what it returns."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        energy = keras.ops.mean(keras.ops.square(y_pred))
        return loss + 0.05 * energy


def _net(cls, name, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(4,), name="x")
    h = layers.Dense(5, activation="tanh", kernel_regularizer=regularizers.L2(1e-2), name="hidden")(inputs)
    out = layers.Dense(2, name="out")(h)
    model = cls(inputs, out, name=name)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def penalised():
    return _net(PenalisedModel, "penalised", 4)


class GuideStepModel(keras.Model):
    """train_step as Keras's "Customizing what happens in fit() with PyTorch" guide writes it."""

    def train_step(self, data):
        x, y = data
        y_pred = self(x, training=True)
        self.zero_grad()
        data_loss = self.compute_loss(y=y, y_pred=y_pred)
        smooth = keras.ops.mean(keras.ops.square(y_pred))
        loss = data_loss + 0.1 * smooth
        loss.backward()
        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)
        return {"loss": loss}


def guide_step():
    return _net(GuideStepModel, "guide_step", 5)


def plain():
    return _net(keras.Model, "plain", 6)


def loop_step(model, x, y):
    """A hand-written torch training step, as Keras's "training loop from scratch" guide writes it for torch."""
    y_pred = model(x, training=True)
    loss = keras.ops.mean(keras.ops.square(y - y_pred)) + sum(model.losses)
    model.zero_grad()
    loss.backward()
    gradients = [v.value.grad for v in model.trainable_weights]
    with torch.no_grad():
        model.optimizer.apply(gradients, model.trainable_weights)
    return loss


class PhysicsStepModel(keras.Model):
    """A hand-built loss differentiated with loss.backward(): a data term, a physics-style residual (the outputs
    conserve the inputs' sum) and the model's own losses (its L2 regularizer)."""

    lam = 0.5

    def train_step(self, data):
        x, y = data
        self.zero_grad()
        y_pred = self(x, training=True)
        data_loss = keras.ops.mean(keras.ops.square(y - y_pred))
        residual = keras.ops.sum(y_pred, axis=1) - keras.ops.sum(x, axis=1)
        physics = keras.ops.mean(keras.ops.square(residual))
        loss = data_loss + self.lam * physics + sum(self.losses)
        loss.backward()
        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)
        return {"loss": loss}


def physics_step():
    return _net(PhysicsStepModel, "physics_step", 7)


class DetachedStepModel(keras.Model):
    """A penalty passed through .detach(): autograd never sees it, so it trains nothing."""

    def train_step(self, data):
        x, y = data
        self.zero_grad()
        y_pred = self(x, training=True)
        data_loss = keras.ops.mean(keras.ops.square(y - y_pred))
        smooth = keras.ops.mean(keras.ops.square(y_pred)).detach()
        loss = data_loss + 0.1 * smooth
        loss.backward()
        gradients = [v.value.grad for v in self.trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, self.trainable_weights)
        return {"loss": loss}


def detached_step():
    return _net(DetachedStepModel, "detached_step", 8)


def backward_only(model, x, y):
    """Differentiates with loss.backward() but applies nothing: nothing to explain (exit 2)."""
    loss = keras.ops.mean(keras.ops.square(y - model(x, training=True)))
    loss.backward()
    return loss


class TwoOptimizerModel(keras.Model):
    """Two losses, two backward() calls, two optimizers on disjoint variables; the second clips .grad in place."""

    def train_step(self, data):
        x, y = data
        head, trunk = self.get_layer("out").trainable_weights, self.get_layer("hidden").trainable_weights
        self.zero_grad()
        fit = keras.ops.mean(keras.ops.square(y - self(x, training=True)))
        fit.backward()
        with torch.no_grad():
            self.optimizer.apply([v.value.grad for v in head], head)
        self.zero_grad()
        y_pred = self(x, training=True)
        smooth = keras.ops.mean(keras.ops.abs(y - y_pred)) + 0.01 * keras.ops.mean(keras.ops.square(y_pred))
        smooth.backward()
        torch.nn.utils.clip_grad_norm_([v.value for v in trunk], 0.01)
        with torch.no_grad():
            self.trunk_optimizer.apply([v.value.grad for v in trunk], trunk)
        return {"loss": fit + smooth}


def two_optimizers():
    model = _net(TwoOptimizerModel, "two_optimizers", 9)
    model.trunk_optimizer = keras.optimizers.SGD(0.01)
    return model
