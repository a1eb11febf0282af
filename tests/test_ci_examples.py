"""The documented CI integration, run as documented: examples/ci/ and .pre-commit-hooks.yaml.

The command lines are read from the files themselves (the workflow's `run:` steps,
the GitLab job's `script:`, the README's lock command, the hook's `entry`) and run
with bash against the bundled example, as the CI systems would; then the files they
write are checked: annotations, the job summary, SARIF against the official
schema, JUnit.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import jsonschema
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples", "ci")
SCHEMA = os.path.join(REPO, "tests", "data", "sarif-schema-2.1.0.json")
EXE_DIR = os.path.dirname(sys.executable)


def load_yaml(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def lossmap_lines(lines):
    return [line for line in lines if isinstance(line, str) and line.startswith("lossmap ")]


def sh(command, cwd, env):
    """Run a documented command line with bash, `lossmap` being this checkout's."""
    if not shutil.which("lossmap", path=EXE_DIR):
        command = re.sub(r"^lossmap ", f"{sys.executable} -m lossmap ", command)
    full = dict(os.environ, PATH=EXE_DIR + os.pathsep + os.environ.get("PATH", ""),
                PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=full, capture_output=True, text=True, timeout=600)


def validate_sarif(path):
    with open(SCHEMA, encoding="utf-8") as fh:
        validator = jsonschema.Draft4Validator(json.load(fh), format_checker=jsonschema.FormatChecker())
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    errors = [e.message for e in validator.iter_errors(doc)]
    assert not errors, errors[:5]
    return doc


@pytest.fixture(scope="module")
def workflow():
    doc = load_yaml("examples", "ci", "github-actions.yml")
    job = doc["jobs"]["loss"]
    return job["env"], lossmap_lines(step.get("run", "") for step in job["steps"]), job["steps"]


@pytest.fixture(scope="module")
def lock_made(tmp_path_factory, workflow):
    """A repository folder with the lock file made by the README's command (once for the module)."""
    folder = tmp_path_factory.mktemp("repo")
    proc = sh(_readme_lock_commands()[0], folder, workflow[0])
    assert proc.returncode == 0, proc.stderr
    assert (folder / "lossmap.lock.json").exists()
    return folder


@pytest.fixture
def locked(lock_made, tmp_path):
    """A copy of that folder for one test."""
    shutil.copytree(lock_made, tmp_path / "repo")
    return tmp_path / "repo"


def test_the_documented_commands_are_the_workflows(workflow):
    env, commands, steps = workflow
    assert env["MODEL"] == "lossmap.examples:multitask"
    assert commands == ["lossmap check $MODEL --lock lossmap.lock.json --format github --output sarif=lossmap.sarif"]
    upload = next(s for s in steps if "upload-sarif" in s.get("uses", ""))
    assert upload["if"] == "always()" and upload["with"]["sarif_file"] == "lossmap.sarif"
    with open(os.path.join(EXAMPLES, "README.md"), encoding="utf-8") as fh:
        assert commands[0] in fh.read()


def test_github_job_on_an_unchanged_and_a_changed_model(workflow, locked):
    env, commands, _ = workflow
    summary = locked / "summary.md"
    github_env = dict(env, GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
    proc = sh(commands[0], locked, github_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("::group::lossmap lossmap.examples:multitask: VERIFIED, lock unchanged")
    assert "::error" not in proc.stdout and "::notice " in proc.stdout
    assert "## ✅ lossmap multitask: VERIFIED, lock unchanged" in summary.read_text(encoding="utf-8")
    results = validate_sarif(locked / "lossmap.sarif")["runs"][0]["results"]
    assert {r["level"] for r in results} == {"note"}

    # the pull request changed the model: here, its lock file says the price head weighed 0.5
    path = locked / "lossmap.lock.json"
    lock = json.loads(path.read_text())
    lock["models"]["lossmap.examples:multitask"]["terms"]["compiled/price"]["weight"] = 0.5
    path.write_text(json.dumps(lock, indent=2))
    proc = sh(commands[0], locked, github_env)
    assert proc.returncode == 1, proc.stderr
    error = next(line for line in proc.stdout.splitlines() if line.startswith("::error "))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if '"compiled/price": {' in text)
    assert error.startswith(f"::error file=lossmap.lock.json,line={line},title=lossmap multitask%3A "
                            "LOCK_WEIGHT_CHANGED::compiled/price: the loss weight of the loss on output 'price'")
    assert "went from 0.5 to 0.4" in error
    text = summary.read_text(encoding="utf-8")
    assert text.count("## ") == 2 and "## ❌ lossmap multitask: VERIFIED, lock changed" in text
    assert "```diff\nLock lossmap.lock.json (lossmap.examples:multitask): 1 change" in text
    results = validate_sarif(locked / "lossmap.sarif")["runs"][0]["results"]
    weight = next(r for r in results if r["ruleId"] == "LOCK_WEIGHT_CHANGED")
    assert weight["level"] == "error"
    assert weight["locations"][0]["physicalLocation"]["region"]["startLine"] == line


def test_gitlab_job_writes_the_junit_report(workflow, locked):
    job = load_yaml("examples", "ci", "gitlab-ci.yml")["lossmap"]
    commands = lossmap_lines(job["script"])
    assert commands == ["lossmap check $MODEL --lock lossmap.lock.json --output junit=lossmap-junit.xml "
                        "--output json=lossmap.json"]
    assert job["artifacts"]["reports"]["junit"] == "lossmap-junit.xml" and job["artifacts"]["when"] == "always"
    proc = sh(commands[0], locked, job["variables"])
    assert proc.returncode == 0, proc.stderr
    assert "Verification (eager path" in proc.stdout and "Lock lossmap.lock.json" in proc.stdout
    root = ET.parse(locked / "lossmap-junit.xml").getroot()
    assert (root.get("failures"), root.get("errors")) == ("0", "0")
    names = [c.get("name") for c in root.iter("testcase")]
    assert names[:2] == ["verification", "lock lossmap.lock.json"] and "compiled/price" in names
    doc = json.loads((locked / "lossmap.json").read_text())
    assert doc["schema"] == "lossmap/1" and doc["lock"]["changed"] is False
    for path in job["artifacts"]["paths"]:
        assert (locked / path).exists()


def _readme_lock_commands():
    with open(os.path.join(EXAMPLES, "README.md"), encoding="utf-8") as fh:
        blocks = re.findall(r"```sh\n(.*?)```", fh.read(), flags=re.S)
    return [line for b in blocks for line in b.splitlines() if line.startswith("lossmap lock")]


def test_pre_commit_hook(multitask_archive, tmp_path):
    hooks = load_yaml(".pre-commit-hooks.yaml")
    hook = next(h for h in hooks if h["id"] == "lossmap-check")
    assert hook["language"] == "python" and hook["require_serial"] is True
    files = re.compile(hook["files"])
    assert files.search("models/multitask.keras") and files.search("legacy.h5") and not files.search("train.py")
    shutil.copy(multitask_archive, tmp_path / "multitask.keras")
    # pre-commit passes the touched files after the entry and the user's args
    proc = sh(f"{hook['entry']} --import lossmap.examples multitask.keras", tmp_path, {})
    assert proc.returncode == 0, proc.stderr
    assert "VERIFIED" in proc.stdout
