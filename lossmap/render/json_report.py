"""The contract's JSON document (schema lossmap/1)."""


def render(analysis) -> str:
    return analysis.to_json(indent=2) + "\n"
