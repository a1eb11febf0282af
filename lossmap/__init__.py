"""lossmap: how Keras assembles the loss it trains on, term by term, verified.

    >>> import lossmap
    >>> result = lossmap.analyse("model.keras")   # doctest: +SKIP
    >>> print(result)                             # the loss as an equation with this batch's numbers
    >>> result.to_json()                          # the contract's JSON (schema lossmap/1)
    >>> lossmap.explain(model)                    # the HTML report, inline in Jupyter
"""
__version__ = "0.1.0"


def analyse(model=None, data=None, **options):
    """See `lossmap.pipeline.analyse`."""
    from lossmap.pipeline import analyse as _analyse

    return _analyse(model, data, **options)


check = analyse


def explain(model=None, batch=None, **options):
    """Analyse `model` and return an `Explanation` (HTML in Jupyter, `save()`, `to_json()`, `str()`).

    `batch` is None (a synthetic batch), a path to an .npz, or a tuple `(x, y)` /
    `(x, y, sample_weight)` of arrays (dicts or lists for named structures).
    The model is never changed.
    """
    from lossmap.explanation import Explanation

    return Explanation(analyse(model, batch, **options))
