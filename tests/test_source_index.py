"""The source index's public API works as its docstring shows (`lossmap.sources.index`)."""
import doctest

from lossmap.sources import index


def test_index_docstring_examples_run():
    result = doctest.testmod(index, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
