"""The training loop of Keras's guide "Writing a training loop from scratch in PyTorch", first form, as a step
function (for `lossmap check --step tests/torch_training_loop.py:train_step` on torch): a Keras model, a
torch-native optimizer (`torch.optim.Adam(model.parameters())`) and loss (`torch.nn.CrossEntropyLoss`), and
`model.zero_grad()`, `loss.backward()`, `optimizer.step()`. The loss here adds an L2 penalty on the logits.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import torch  # noqa: E402

keras.utils.set_random_seed(5)
inputs = keras.Input(shape=(6,), name="digits")
hidden = keras.layers.Dense(8, activation="relu", name="dense")(inputs)
model = keras.Model(inputs, keras.layers.Dense(4, name="predictions")(hidden), name="torch_loop")
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = torch.nn.CrossEntropyLoss()


def train_step(inputs, targets):
    logits = model(inputs)
    data_loss = loss_fn(logits, targets)
    penalty = torch.mean(logits ** 2)
    loss = data_loss + 0.05 * penalty
    model.zero_grad()
    loss.backward()
    optimizer.step()
    return loss
