"""Training steps on tf_keras (the legacy engine), as its users write them.

Read by lossmap from this file's source.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

LAM = 0.5


class PhysicsModel(keras.Model):
    """A train_step override: the compiled loss with model.losses, plus a physics term."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(5, activation="tanh", kernel_regularizer=keras.regularizers.L2(1e-2),
                                         name="hidden")
        self.out = keras.layers.Dense(2, name="out")
        self.lam = LAM

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            data_loss = self.compiled_loss(y, y_pred, regularization_losses=self.losses)
            physics = tf.reduce_mean(tf.square(y_pred[:, 0] - x[:, 0]))
            total = data_loss + self.lam * physics
        grads = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": total}


class ForgetfulModel(PhysicsModel):
    """The same, but the compiled loss without the regularization losses."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compiled_loss(y, y_pred)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss}


class PenalisedModel(keras.Model):
    """Overrides compute_loss only."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        loss = super().compute_loss(x, y, y_pred, sample_weight)
        return loss + 0.05 * tf.reduce_mean(tf.square(y_pred))


def _build(cls):
    keras.utils.set_random_seed(5)
    model = cls()
    model(tf.zeros((1, 4)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def physics():
    return _build(PhysicsModel)


def forgetful():
    return _build(ForgetfulModel)


def penalised():
    keras.utils.set_random_seed(6)
    inputs = keras.Input(shape=(4,), name="x")
    h = keras.layers.Dense(5, activation="tanh", kernel_regularizer=keras.regularizers.L2(1e-2), name="hidden")(inputs)
    out = keras.layers.Dense(2, name="out")(h)
    model = PenalisedModel(inputs, out, name="penalised")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype("float32"), rng.standard_normal((n, 2)).astype("float32")


class MinimizingModel(PhysicsModel):
    """tf_keras's own idiom: `optimizer.minimize(loss, var_list, tape=tape)`."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compiled_loss(y, y_pred, regularization_losses=self.losses)
            loss += 0.1 * tf.reduce_mean(tf.square(y_pred))
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return {"loss": loss}


def minimizing():
    return _build(MinimizingModel)


def with_dropout():
    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(4,), name="x")
    h = keras.layers.Dense(5, activation="tanh", kernel_regularizer=keras.regularizers.L2(1e-2), name="hidden")(inputs)
    h = keras.layers.Dropout(0.5, name="drop")(h)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(h), name="with_dropout")


sgd = keras.optimizers.SGD(learning_rate=0.1)
mse = keras.losses.MeanSquaredError()


def hand_written_step(model, x, y):
    """A tf_keras training loop's step that forgets training=True and model.losses."""
    with tf.GradientTape() as tape:
        pred = model(x)
        loss = mse(y, pred)
    grads = tape.gradient(loss, model.trainable_weights)
    sgd.apply_gradients(zip(grads, model.trainable_weights))
    return loss
