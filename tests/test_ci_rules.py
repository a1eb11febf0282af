"""One table describes every finding code (lossmap/ci/rules.py): SARIF's rules and README's table come from it."""
import os
import re
import subprocess
import sys

from lossmap.ci.rules import LEVELS, RULES, markdown_table, rule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT_CUSTOM_CODES = ("MODEL_LOSSES_IGNORED", "TRAINING_FLAG_MISSING", "DEAD_TERM", "INPUT_GRADIENT_TERM",
                         "LOGGED_LOSS_DIFFERS", "MULTIPLE_OPTIMIZERS", "UNSPLIT_LOSS")
START, END = "<!-- findings table: python -m lossmap.ci.rules -->", "<!-- end of findings table -->"


def codes_in_source():
    """Every code the package can raise: Finding("CODE", ...), the engine differences, the lock changes."""
    found = set()
    for folder, _, files in os.walk(os.path.join(REPO, "lossmap")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as fh:
                    text = fh.read()
                found |= set(re.findall(r'Finding\(\s*"([A-Z][A-Z_]+)"', text))
                found |= set(re.findall(r'"((?:ENGINE_DIFF|LOCK)_[A-Z_]+)"', text))
    return found


def test_every_code_raised_has_a_rule():
    raised = codes_in_source()
    assert {"TOTAL_MISMATCH", "DEAD_TERM", "ENGINE_DIFF_FROZEN_REGULARIZER", "LOCK_TERM_REMOVED"} <= raised
    missing = sorted(raised - set(RULES))
    assert not missing, f"codes without a description in lossmap/ci/rules.py: {missing}"


def test_the_contracts_custom_code_codes_have_rules():
    """The custom-training-code codes the contract names (raised by lossmap/steps once it is wired in)."""
    assert set(CONTRACT_CUSTOM_CODES) <= set(RULES)


def test_rules_are_complete():
    for code, r in RULES.items():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", code)
        assert r.level in LEVELS and r.when and r.help and r.title, code
        assert len(r.title) < 140, code
    assert rule("NOT_A_CODE_YET").title  # a new code without a row still gets a rule


def test_readme_findings_table_is_the_rule_table():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    assert START in readme and END in readme
    table = readme.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert table == markdown_table(), "README's findings table is stale: python -m lossmap.ci.rules prints it"


def test_rules_module_prints_the_table():
    proc = subprocess.run([sys.executable, "-m", "lossmap.ci.rules"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0 and proc.stdout == markdown_table()
