from lossmap.engines.keras3.citations import specs, facts  # noqa: F401  (placeholder)
