"""What both engines' NumPy mirrors share."""
from __future__ import annotations

# Labels a built-in loss expects, for synthetic batches.
LABEL_KIND = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "onehot",
    "categorical_focal_crossentropy": "onehot",
    "categorical_hinge": "onehot",
    "binary_crossentropy": "binary",
    "binary_focal_crossentropy": "binary",
    "hinge": "binary",
    "squared_hinge": "binary",
    "kl_divergence": "distribution",
    "poisson": "positive",
    "mean_squared_logarithmic_error": "positive",
    "mean_absolute_percentage_error": "positive",
}
