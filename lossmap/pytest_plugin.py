"""pytest plugin (entry point `pytest11`): the `lossmap_check` fixture and `--lossmap-update`.

    def test_loss(lossmap_check):
        lossmap_check(build_model(), lock="lossmap.lock.json")   # lock path relative to this test file

Starting pytest imports nothing but this module: TensorFlow is imported when a
test calls the fixture. `pytest --lossmap-update` writes the lock entries
instead of comparing with them, as snapshot plugins do, and lists what it wrote.
"""
from __future__ import annotations

import os

import pytest

UPDATES = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("lossmap", "lossmap: the Keras training loss")
    group.addoption("--lossmap-update", action="store_true", default=False,
                    help="write lossmap lock files (lossmap_check(..., lock=...)) instead of comparing with them")


def pytest_configure(config):
    config.stash[UPDATES] = []


@pytest.fixture
def lossmap_check(request):
    """`lossmap_check(model, batch=None, lock=None, fail_on="error", **options)`: fail unless the loss passes.

    It fails with lossmap's explanation (the equation, the verification, the lock
    diff, the findings) and returns the `Analysis`. `lock` is relative to the test
    file's folder.
    """
    return _Checker(str(request.path.parent), request.config.getoption("lossmap_update"),
                    request.config.stash[UPDATES])


class _Checker:
    def __init__(self, base, update, updates):
        self.base, self.update, self.updates = base, update, updates

    def __repr__(self):
        return f"<lossmap_check: locks relative to {self.base}{', --lossmap-update' if self.update else ''}>"

    def __call__(self, model, batch=None, lock=None, **options):
        __tracebackhide__ = True
        from lossmap.testing import check_loss

        if lock is not None:
            lock = os.path.join(self.base, os.fspath(lock))  # an absolute path stays as it is
        return check_loss(model, batch, lock, update=self.update, updates=self.updates,
                          update_hint="pytest --lossmap-update", **options)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    updates = config.stash.get(UPDATES, [])
    if updates:
        terminalreporter.section("lossmap")
        for u in updates:
            terminalreporter.write_line(f"{u.path}: {u.key}: {u.what}")
