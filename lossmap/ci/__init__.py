"""lossmap in CI: the finding rules, the GitHub / SARIF / JUnit formats, the lock file, runs of several models.

Everything here reads the data model (`lossmap.analysis.Analysis` and its
`to_dict()`), never Keras; importing it imports no TensorFlow.
"""
