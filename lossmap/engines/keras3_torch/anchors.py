from lossmap.engines.keras3.anchors import anchors  # noqa: F401  (placeholder)
