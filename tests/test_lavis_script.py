"""LAVIS's own scripts with the plugin: ``python -m lavis_listwise.commands.lavis_script SCRIPT ARGS``.

``tests/data/lavis-1.0.2-train.py.txt`` is LAVIS v1.0.2's ``train.py``, verbatim (tag v1.0.2, commit
baad2d7c8df599d8d9b081ba2e946626eaa2dc34 of github.com/salesforce/LAVIS; BSD-3-Clause): the wheel does
not ship it, and no test may download it.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_run_yaml

from lavis_listwise.commands import lavis_script

LAVIS_TRAIN_PY = Path(__file__).parent / "data" / "lavis-1.0.2-train.py.txt"


def test_lavis_train_py_trains_and_tests_a_listwise_model(tmp_path, tiny_dataset):
    script = tmp_path / "LAVIS" / "train.py"
    script.parent.mkdir()
    shutil.copy(LAVIS_TRAIN_PY, script)
    cfg = write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache")
    out = subprocess.run(
        [sys.executable, "-m", "lavis_listwise.commands.lavis_script", str(script), "--cfg-path", str(cfg)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    (run_dir,) = (tmp_path / "out").iterdir()  # LAVIS's train.py names the run by the time
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = next(row for row in rows if row["split"] == "train")
    assert float(train["loss_listwise"]) > 0  # the plugin's model, task and runner did the work
    test = next(row for row in rows if row["split"] == "test")
    assert {"txt_r1", "img_r10", "txt_ndcg10"} <= set(test)
    assert (run_dir / "checkpoint_best.pth").is_file()


def test_the_script_runs_as_main_with_its_arguments_and_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    script = tmp_path / "LAVIS" / "report.py"
    script.parent.mkdir()
    script.write_text(
        "import json, sys\n"
        "from lavis.common.registry import registry\n"
        "arch = registry.get_model_class('blip_retrieval_listwise').__name__\n"
        "json.dump({'name': __name__, 'argv': sys.argv, 'path0': sys.path[0], 'arch': arch}, "
        "open(sys.argv[-1], 'w'))\n"
    )
    report = tmp_path / "report.json"
    assert lavis_script.main([str(script), "--flag", str(report)]) == 0
    assert json.loads(report.read_text()) == {
        "name": "__main__",
        "argv": [str(script), "--flag", str(report)],
        "path0": str(script.parent),
        "arch": "BlipRetrievalListwise",
    }


def test_a_missing_script_is_one_message(tmp_path, capsys):
    assert lavis_script.main([str(tmp_path / "train.py"), "--cfg-path", "run.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"SCRIPT: '{tmp_path / 'train.py'}' does not exist" in err


@pytest.mark.parametrize("option", ["run.max_epochs=2", "model.queue_sise=64"])
def test_the_yaml_is_checked_before_the_script_runs(tmp_path, tiny_dataset, capsys, monkeypatch, option):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    script = tmp_path / "train.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    cfg = write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache")
    assert lavis_script.main([str(script), "--cfg-path", str(cfg), "--options", option]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("python -m lavis_listwise.commands.lavis_script: error: ") and err.count("\n") == 1
    ), err
    assert option.split("=")[0] in err
    assert not (tmp_path / "ran").exists()
