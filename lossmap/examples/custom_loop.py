"""A hand-written training loop, as Keras's "writing a training loop from scratch" guide writes it.

The step adds `model.losses` (an L2 weight regularizer and an L1 activity regularizer)
to the crossentropy itself: a hand-written loop gets no regularization unless it does.

    lossmap report --example custom_loop
    lossmap explain --step lossmap/examples/custom_loop.py:train_step
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, regularizers  # noqa: E402

keras.utils.set_random_seed(0)  # the same weights, hence the same numbers, every run
inputs = keras.Input(shape=(16,), name="digits")
x = layers.Dense(32, activation="relu", kernel_regularizer=regularizers.L2(1e-3), name="dense_1")(inputs)
x = layers.Dense(32, activation="relu", activity_regularizer=regularizers.L1(1e-4), name="dense_2")(x)
outputs = layers.Dense(10, name="predictions")(x)
model = keras.Model(inputs=inputs, outputs=outputs, name="custom_loop")

optimizer = keras.optimizers.SGD(learning_rate=1e-2)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
train_acc_metric = keras.metrics.SparseCategoricalAccuracy()


@tf.function
def train_step(x, y):
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss_value = loss_fn(y, logits)
        loss_value += sum(model.losses)
    grads = tape.gradient(loss_value, model.trainable_weights)
    optimizer.apply_gradients(zip(grads, model.trainable_weights))
    train_acc_metric.update_state(y, logits)
    return loss_value
