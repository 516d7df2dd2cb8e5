import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lavis_listwise
import lavis_listwise_cli
from lavis_listwise.resources import DATA_PACKAGES, config_path, data_dir


def _run(*args, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, **kwargs)


def test_import_twice_reload_and_submodule_first():
    code = (
        "import listwise_ranking.losses.registry as r, importlib\n"
        "import listwise_ranking.losses.smooth_ndcg\n"  # a submodule before the package
        "import lavis_listwise, listwise_ranking.losses as L\n"
        "import lavis_listwise\n"
        "importlib.reload(listwise_ranking.losses.listwise)\n"
        "importlib.reload(lavis_listwise)\n"
        "print(sorted(r.list_losses()))\n"
    )
    out = _run("-c", code, check=True)
    assert out.stdout.strip() == "['smooth_ndcg', 'triplet']"


def test_reload_in_process_keeps_registry():
    from listwise_ranking.losses import get_loss_class

    importlib.reload(lavis_listwise)
    importlib.reload(importlib.import_module("listwise_ranking.losses.listwise"))
    assert get_loss_class("triplet").__name__ == "TripletLoss"


@pytest.mark.parametrize("name", ["losses", "relevance", "metrics", "errors"])
def test_the_plugins_public_names_are_the_cores_objects(name):
    core = importlib.import_module(f"listwise_ranking.{name}")
    plugin = importlib.import_module(f"lavis_listwise.{name}")
    assert plugin.__all__ == core.__all__ and len(core.__all__) > 3
    assert all(getattr(plugin, n) is getattr(core, n) for n in core.__all__)


def test_python_m_lavis_listwise_runs_the_command_line():
    out = _run("-m", "lavis_listwise", "--version", check=True)
    assert out.stdout.strip() == f"lavis-listwise {lavis_listwise.__version__}"


# ----------------------------------------------------------------------------- the fast command line
_LIGHT_CLI = """
import json, sys
import lavis_listwise_cli
codes = []
for argv in ARGVS:
    try:
        codes.append(lavis_listwise_cli.main(argv))
    except SystemExit as exit:
        codes.append(exit.code)
heavy = sorted(m for m in ("lavis", "lavis_listwise", "torch", "numpy", "omegaconf") if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_version_and_argument_errors_import_neither_lavis_nor_torch(tmp_path):
    argvs = [
        ["--help"],
        ["--version"],
        [],
        ["train", "--help"],
        ["check-data", "--help"],
        ["relevance-report", "--help"],
        ["no-such-command"],
        ["evaluate"],  # --cfg-path is required
        ["check-data", "--cfg-path", "run.yaml", "--workers", "many"],
        ["demo", "--seeds", "one"],
    ]
    out = _run("-c", _LIGHT_CLI.replace("ARGVS", repr(argvs)), cwd=tmp_path)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0, 0, 0, 0, 0, 2, 2, 2, 2], out.stderr
    assert all(cmd in out.stdout for cmd in ("demo", "train", "evaluate", "check-data"))
    assert result["heavy"] == []
    assert f"lavis-listwise {lavis_listwise.__version__}" in out.stdout
    assert "the following arguments are required: --cfg-path" in out.stderr
    assert "invalid int value: 'many'" in out.stderr and "invalid choice: 'no-such-command'" in out.stderr
    assert "Traceback" not in out.stderr


def test_lavis_listwise_cli_is_the_packages_command_line():
    commands = lavis_listwise_cli.build_parser()._subparsers._group_actions[0].choices
    assert {"demo", "train", "evaluate", "check-data", "relevance-report"} <= set(commands)


def _cfg_file(tmp_path, problem):
    path = tmp_path / "run.yaml"
    if problem == "directory":
        path.mkdir()
    elif problem == "not utf-8":
        path.write_bytes(b"model:\n  arch: \xff\xfe\n")
    elif problem == "bad yaml":
        path.write_text("model: {arch: blip_retrieval_listwise\nrun: [\n")
    return path


@pytest.mark.parametrize("command", ["train", "evaluate", "check-data", "relevance-report", "demo"])
@pytest.mark.parametrize(
    "problem, says",
    [("missing", "does not exist"), ("directory", "is a directory, not a YAML file"),
     ("not utf-8", "cannot read"), ("bad yaml", "is not valid YAML")],
)  # fmt: skip
def test_a_bad_cfg_path_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, command, problem, says):
    monkeypatch.delenv("LAVIS_LISTWISE_TRACEBACK", raising=False)
    path = _cfg_file(tmp_path, problem)
    extra = ["--output-dir", str(tmp_path / "out")] if command == "demo" else []
    assert lavis_listwise_cli.main([command, "--cfg-path", str(path), *extra]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lavis-listwise: error: --cfg-path: "), err
    assert f"'{path}'" in err and says in err, err
    assert not (tmp_path / "out").exists()


def test_a_missing_cfg_path_is_the_only_line_on_stderr_of_a_fresh_process(tmp_path):
    # in a fresh process importing LAVIS (as every command does) must add no deprecation notices
    missing = tmp_path / "missing.yaml"
    out = _run("-m", "lavis_listwise", "evaluate", "--cfg-path", str(missing))
    assert out.returncode == 1
    assert out.stderr == f"lavis-listwise: error: --cfg-path: '{missing}' does not exist\n", out.stderr


def test_lavis_listwise_traceback_shows_the_error_itself(tmp_path, monkeypatch):
    from listwise_ranking.errors import ConfigError

    monkeypatch.setenv("LAVIS_LISTWISE_TRACEBACK", "1")
    with pytest.raises(ConfigError, match="does not exist"):
        lavis_listwise_cli.main(["train", "--cfg-path", str(tmp_path / "missing.yaml")])


# ----------------------------------------------------------------------------- shipped YAMLs, LAVIS listing
def test_the_shipped_yamls_are_the_repositorys_own():
    """configs/ and projects/ are read through importlib.resources: in this (editable) install the
    repository's own files, in a wheel the same files (tests/test_wheel.py)."""
    repo = Path(__file__).resolve().parents[1]
    for name in DATA_PACKAGES:
        shipped = {p.relative_to(data_dir(name)): p.read_bytes() for p in data_dir(name).rglob("*.yaml")}
        source = {p.relative_to(repo / name): p.read_bytes() for p in (repo / name).rglob("*.yaml")}
        assert shipped and shipped == source, name
    assert Path(config_path("projects/demo/demo_quick.yaml")).is_file()
    with pytest.raises(FileNotFoundError, match="configs/models/no_such.yaml: lavis-listwise ships no such"):
        config_path("configs/models/no_such.yaml")
    with pytest.raises(ValueError, match="'models' is not one of"):
        config_path("models/blip_retrieval_listwise_tiny.yaml")


@pytest.mark.parametrize("arch", ["blip_retrieval_listwise", "albef_retrieval_listwise"])
def test_the_listwise_archs_are_in_lavis_model_zoo(arch):
    from lavis.common.registry import registry
    from lavis.models import model_zoo

    types = list(registry.get_model_class(arch).PRETRAINED_MODEL_CONFIG_DICT)
    assert {"coco", "flickr", "tiny"} <= set(types)
    assert dict(model_zoo)[arch] == types
    assert f"{arch:<30} {', '.join(types)}" in str(model_zoo).splitlines()
