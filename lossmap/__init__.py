"""lossmap: how Keras assembles the loss it trains on, term by term, verified.

    >>> import lossmap
    >>> result = lossmap.analyse("model.keras")   # doctest: +SKIP
    >>> print(result)                             # the loss as an equation with this batch's numbers
    >>> result.to_json()                          # the contract's JSON (schema lossmap/1)
"""
__version__ = "0.1.0"


def analyse(model, data=None, **options):
    """See `lossmap.pipeline.analyse`."""
    from lossmap.pipeline import analyse as _analyse

    return _analyse(model, data, **options)


check = analyse
