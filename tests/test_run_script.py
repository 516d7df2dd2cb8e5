"""``scripts/run.sh`` (the README's two commands) with an absolute and a relative ``LAVIS_LISTWISE_VENV``,
and its filter of pip's dependency report on the Python 3.12+ stack.

The script runs for real, in a copy of the repository's set-up files under ``tmp_path`` (so that its
``pre-commit run --all-files`` sees only the copy), against the venv running this test: its stamps are
current when ``scripts/run.sh`` set it up, so the script installs nothing and each run takes seconds.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run.sh"
CONSTRAINTS = "constraints.txt" if sys.version_info[:2] == (3, 11) else "constraints-py312.txt"
SETUP_FILES = [CONSTRAINTS, "setup.cfg", "setup.py", "pyproject.toml"]  # what the script's stamp digests
VENV = Path(sys.prefix)  # absolute


def _stamp_is_current(kind: str) -> bool:
    digest = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in SETUP_FILES)).hexdigest()
    stamp = VENV / f".lavis-listwise-{kind}"
    return stamp.is_file() and stamp.read_text().strip() == digest


@pytest.fixture
def repo(tmp_path):
    """A git repository with the script, the files its stamp digests, the pre-commit config and one
    passing test: the script cds here, finds the venv's stamps current and installs nothing."""
    if not (_stamp_is_current("base") and _stamp_is_current("dev")):
        pytest.skip(f"{VENV} was not set up by scripts/run.sh from these files (its stamps are not current)")
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts" / "run.sh")
    for name in SETUP_FILES + [".pre-commit-config.yaml", "ruff.toml"]:
        shutil.copy(ROOT / name, root / name)
    (root / "tests").mkdir()
    (root / "tests" / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "."], cwd=root, check=True)
    return root


def _run(root: Path, *args: str, venv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "LAVIS_LISTWISE_VENV": venv, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        ["bash", str(root / "scripts" / "run.sh"), *args],
        cwd=cwd or root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "installing into" not in out.stdout  # the venv was reused as it is
    return out.stdout


def test_demo_with_an_absolute_venv_path(repo, tmp_path):
    # run from another directory, as `bash /path/to/scripts/run.sh ...`
    out = _run(repo, "demo", "--help", venv=str(VENV), cwd=tmp_path)
    assert "--quick" in _ok(out)  # the venv's lavis-listwise, found on PATH, printed its help


def test_setup_with_an_absolute_venv_path(repo):
    assert _ok(_run(repo, "setup", venv=str(VENV))) == ""


def test_test_with_an_absolute_venv_path_runs_pre_commit_then_pytest(repo):
    out = _ok(_run(repo, "test", "-q", venv=str(VENV)))
    assert "ruff lint" in out  # pre-commit, from the venv
    assert "1 passed" in out


def test_test_with_no_test_collected_fails(repo):
    (repo / "tests" / "test_one.py").write_text("")
    out = _run(repo, "test", "-q", venv=str(VENV))
    assert out.returncode == 1
    assert "pytest collected no tests (exit 5)" in out.stderr


def test_relative_venv_path_is_taken_from_the_repository_root(repo, tmp_path):
    (repo / "venv-link").symlink_to(VENV, target_is_directory=True)
    assert "--quick" in _ok(_run(repo, "demo", "--help", venv="venv-link", cwd=tmp_path))
    assert "1 passed" in _ok(_run(repo, "test", "-q", venv="venv-link"))


# pip's report (pip 23.2.1, stderr) after `pip install -c constraints-py312.txt -e .[dev]` into a fresh
# Python 3.12 venv with salesforce-lavis installed by --no-deps: the report the script turns into one line.
PIP_REPORT = """\
ERROR: pip's dependency resolver does not currently take into account all the packages that are \
installed. This behaviour is the source of the following dependency conflicts.
salesforce-lavis 1.0.2 requires ipython, which is not installed.
salesforce-lavis 1.0.2 requires opendatasets, which is not installed.
salesforce-lavis 1.0.2 requires plotly, which is not installed.
salesforce-lavis 1.0.2 requires streamlit, which is not installed.
salesforce-lavis 1.0.2 requires wheel, which is not installed.
salesforce-lavis 1.0.2 requires opencv-python-headless==4.5.5.64, but you have opencv-python-headless \
4.14.0.94 which is incompatible.
salesforce-lavis 1.0.2 requires timm==0.4.12, but you have timm 1.0.31 which is incompatible.
salesforce-lavis 1.0.2 requires transformers<4.27,>=4.25.0, but you have transformers 4.55.4 which is \
incompatible.
"""


def _filter(text: str) -> subprocess.CompletedProcess:
    """The script's own ``pip_report_filter`` (and the lists it reads), run by bash on ``text``."""
    source = SCRIPT.read_text()
    lists = re.findall(r"^(?:replaced_pins|left_out)=.*$", source, re.M)
    function = re.search(r"^pip_report_filter\(\) \{\n.*?^\}\n", source, re.M | re.S)
    assert len(lists) == 2 and function
    return subprocess.run(
        ["bash", "-c", "\n".join(lists) + "\n" + function.group(0) + "pip_report_filter"],
        input=text, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


def test_the_expected_lavis_pins_become_one_line():
    out = _filter("WARNING: something else\n" + PIP_REPORT)
    assert out.stderr == "WARNING: something else\n"  # other lines pass through, on stderr
    (line,) = out.stdout.splitlines()
    assert "ERROR" not in line
    for text in (
        "transformers<4.27,>=4.25.0 -> 4.55.4",
        "timm==0.4.12 -> 1.0.31",
        "opencv-python-headless==4.5.5.64 -> 4.14.0.94",
        "streamlit",
        "ipython",
        "opendatasets",
        "plotly",
        "wheel",
        "docs/setup.md",
    ):
        assert text in line


def test_any_other_conflict_or_error_is_shown_in_full():
    others = [
        "salesforce-lavis 1.0.2 requires fairscale==0.4.4, but you have fairscale 0.4.13 which is "
        "incompatible.",
        "salesforce-lavis 1.0.2 requires torch>=1.10.0, which is not installed.",
        "eccv-caption 0.1.0 requires numpy<2, but you have numpy 2.5.5 which is incompatible.",
    ]
    error = "ERROR: Could not find a version that satisfies the requirement timm==9.9 (from versions: none)"
    out = _filter(PIP_REPORT + "\n".join(others) + "\n" + error + "\n")
    header = PIP_REPORT.splitlines()[0]
    assert out.stderr.splitlines() == [header, *others, error]
    assert "transformers<4.27,>=4.25.0 -> 4.55.4" in out.stdout  # the expected ones still as one line
