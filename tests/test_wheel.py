"""The wheel on its own: built from a copy of the source, installed with ``--no-deps`` into a temporary
target, and used from a directory outside the repository. ``PYTHONPATH=<target>`` puts the wheel's
``lavis_listwise`` ahead of this checkout's editable install; LAVIS and torch come from the venv."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lavis_listwise

REPO = Path(__file__).resolve().parents[1]
#: Repository entries a wheel build neither reads nor should see (besides __pycache__ and egg-info).
NOT_SOURCE = {".git", ".venv", ".pytest_cache", ".ruff_cache", "build", "dist", "output", "tests"}

pytestmark = pytest.mark.slow


def _not_source(directory, names):
    top = Path(directory) == REPO
    return [
        n
        for n in names
        if (top and (n in NOT_SOURCE or n.startswith(".venv")))  # .venv-py3.12 ... (scripts/run.sh)
        or n == "__pycache__"
        or n.endswith(".egg-info")
    ]


def _pip(*args, **kwargs):
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, root / "src", ignore=_not_source)
    # no network: no build isolation (setuptools and wheel from the venv), no index, no dependencies
    build = ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist")]
    _pip(*build, str(root / "src"))
    (path,) = (root / "dist").glob("lavis_listwise-*.whl")
    return path


def test_the_wheel_carries_every_module_every_yaml_and_the_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    dist_info = f"lavis_listwise-{lavis_listwise.__version__}.dist-info"
    for top in ("lavis_listwise", "listwise_ranking"):  # the plugin and its torch-only core
        modules = {f"{top}/{p.relative_to(REPO / top)}" for p in (REPO / top).rglob("*.py")}
        assert modules and modules <= names, top
    assert "lavis_listwise/config_keys.json" in names  # the strict key check's table
    for name in ("configs", "projects"):
        yamls = {f"lavis_listwise/{name}/{p.relative_to(REPO / name)}" for p in (REPO / name).rglob("*.yaml")}
        assert yamls and yamls <= names, name
        assert f"lavis_listwise/{name}/__init__.py" in names
    assert f"{dist_info}/licenses/LICENSE" in names or f"{dist_info}/LICENSE" in names
    # nothing lands at the top of site-packages besides the two packages and the command-line module
    # (LAVIS's wheel already installs a top-level `projects`)
    tops = {"lavis_listwise", "listwise_ranking", "lavis_listwise_cli.py", dist_info}
    assert {n.split("/")[0] for n in names} == tops
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "lavis-listwise = lavis_listwise_cli:main" in entry_points


# The quick demo's own YAML, from the wheel, on a twelfth of its data: the full quick demo takes
# minutes of CPU here and runs in tests/test_demo.py; what the wheel must show is that the demo, its
# model and its datasets find every file they need inside the wheel.
_USE_THE_WHEEL = """
import json, sys
from omegaconf import OmegaConf
import lavis_listwise, lavis_listwise_cli, listwise_ranking
from lavis.models import load_model, model_zoo
from lavis_listwise.resources import config_path, data_dir

model = load_model("blip_retrieval_listwise", "tiny")
quick = OmegaConf.load(config_path("projects/demo/demo_quick.yaml"))
quick.demo.data.update(n_train=16, n_val=8, n_test=8)
quick.run.update(batch_size_train=16, batch_size_eval=8, k_test=8, warmup_steps=1)
OmegaConf.save(quick, "demo_small.yaml")
code = lavis_listwise_cli.main(
    ["demo", "--quick", "--cfg-path", "demo_small.yaml", "--output-dir", "out", "--data-dir", "data"]
)
print(json.dumps({
    "code": code,
    "files": [lavis_listwise.__file__, listwise_ranking.__file__, lavis_listwise_cli.__file__,
              str(data_dir("configs")), config_path("projects/demo/demo_quick.yaml"),
              model.default_config_path("tiny")],
    "model": type(model).__name__,
    "zoo": dict(model_zoo)["blip_retrieval_listwise"],
}))
"""


def test_the_installed_wheel_runs_load_model_and_the_quick_demo_outside_the_repository(wheel, tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "LAVIS_LISTWISE_CACHE": str(tmp_path / "cache")}
    run = dict(cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)

    version = subprocess.run([str(target / "bin" / "lavis-listwise"), "--version"], **run)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"lavis-listwise {lavis_listwise.__version__}"

    out = subprocess.run([sys.executable, "-c", _USE_THE_WHEEL], **run)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["model"] == "BlipRetrievalListwise"
    for path in result["files"]:
        assert Path(path).is_relative_to(target), path  # the wheel's files, not this checkout's
    assert {"coco", "flickr", "tiny"} <= set(result["zoo"])
    assert "[demo] elapsed:" in out.stdout
    assert (elsewhere / "out" / "results.json").is_file() and (elsewhere / "out" / "rankings.png").is_file()
