"""The pytest plugin (lossmap.pytest_plugin), run in pytest's own `pytester`.

`-p lossmap.pytest_plugin` loads it as the `pytest11` entry point does once
lossmap is installed (`-p no:lossmap` keeps an installed entry point from
loading it a second time).
"""
import os
import sys
import tomllib

# In-process pytester runs drop the modules a run imported: what cannot be imported twice in one
# process (NumPy under TensorFlow) is imported here first, so it is kept.
import keras  # noqa: F401

import lossmap.pipeline  # noqa: F401
import lossmap.pytest_plugin  # noqa: F401
import lossmap.testing  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = ("-p", "no:lossmap", "-p", "lossmap.pytest_plugin")
pytest_plugins = ["pytester"]

MODELS = '''
import os

import keras
from keras import layers, regularizers


def twoheads(aux_weight=0.5):
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    h = layers.Dense(8, name="encoder", kernel_regularizer=regularizers.L2(1e-3))(x)
    model = keras.Model(x, {"main": layers.Dense(1, name="main")(h), "aux": layers.Dense(1, name="aux")(h)},
                        name="twoheads")
    model.compile("sgd", loss={"main": "mse", "aux": "mae"}, loss_weights={"main": 1.0, "aux": aux_weight})
    return model
'''


def test_the_entry_point_is_declared():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["entry-points"]["pytest11"] == {"lossmap": "lossmap.pytest_plugin"}


def test_starting_pytest_imports_no_tensorflow(pytester):
    pytester.makepyfile(test_light='''
        import sys

        def test_nothing_heavy(request, lossmap_check):
            assert request.config.getoption("lossmap_update") is False
            heavy = [m for m in ("tensorflow", "keras", "numpy", "lossmap.pipeline") if m in sys.modules]
            assert not heavy, heavy
    ''')
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=1)
    assert "--lossmap-update" in pytester.runpytest_subprocess(*PLUGIN, "--help").stdout.str()


def test_a_failure_shows_lossmaps_explanation_and_hides_its_frames(pytester):
    pytester.makepyfile(lm_models=MODELS)
    pytester.makepyfile(test_zero='''
        from lm_models import twoheads

        def test_zero_aux(lossmap_check):
            lossmap_check(twoheads(aux_weight=0.0), fail_on="warning", gradients=False)

        def test_passes_and_returns_the_analysis(lossmap_check):
            result = lossmap_check(twoheads(), gradients=False)
            assert result.total.verified and result.model.name == "twoheads"
    ''')
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "lossmap: the training loss of 'twoheads' does not pass (VERIFIED; fail_on='warning')" in out
    assert "       1 x " in out or "0 x " in out  # the equation with this batch's numbers
    assert "[warning] ZERO_LOSS_WEIGHT (compiled/aux): compiled/aux has loss weight 0" in out
    assert "lossmap_check(twoheads(aux_weight=0.0)" in out  # the test's own line is shown
    for hidden in ("lossmap/testing.py", "pytest_plugin.py", "def check_loss", "def __call__"):
        assert hidden not in out, hidden


def test_lock_files_and_lossmap_update(pytester, monkeypatch):
    pytester.makepyfile(lm_models=MODELS)
    pytester.makepyfile(test_locked='''
        import os

        from lm_models import twoheads

        def test_locked(lossmap_check):
            lossmap_check(twoheads(float(os.environ.get("LM_AUX", "0.5"))), lock="lossmap.lock.json",
                          gradients=False)
    ''')
    lock = pytester.path / "lossmap.lock.json"
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*lock file */lossmap.lock.json: no such file; create it with: "
                                 "pytest --lossmap-update*"])
    result = pytester.runpytest(*PLUGIN, "--lossmap-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= lossmap =*", "*lossmap.lock.json: twoheads: created"])
    assert '"twoheads": {' in lock.read_text()
    pytester.runpytest(*PLUGIN).assert_outcomes(passed=1)
    monkeypatch.setenv("LM_AUX", "0")
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "the loss weight of the loss on output 'aux' (mean_absolute_error) went from 0.5 to 0" in out
    assert "(if the change is intended: pytest --lossmap-update)" in out
    assert "[error] LOCK_WEIGHT_CHANGED (compiled/aux)" in out
    result = pytester.runpytest(*PLUGIN, "--lossmap-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*lossmap.lock.json: twoheads: 1 change"])
    pytester.runpytest(*PLUGIN).assert_outcomes(passed=1)
    assert sys.modules.get("lossmap.pytest_plugin") is not None
