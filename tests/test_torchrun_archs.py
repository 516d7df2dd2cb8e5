"""Every listwise arch the plugin registers trains, validates and tests from a YAML alone under
``torchrun`` with two CPU processes (gloo), through the plugin's CLI: the distributed form of each
arch's single-process ``test_train_validate_test_from_yaml``; then ``evaluate`` of the checkpoint it
wrote (``model.finetuned``), also under ``torchrun``, reproduces the training run's test metrics."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import write_run_yaml

from lavis_listwise.config_check import plugin_archs
from lavis_listwise.demo.synthetic import relevance_file


@pytest.mark.slow
@pytest.mark.parametrize("arch", plugin_archs())
def test_train_validate_test_under_torchrun(tmp_path, tiny_dataset, arch):
    cfg = write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache", arch=arch)
    gt = [f"run.gt_relevance.{s}={relevance_file(tiny_dataset, s)}" for s in ("val", "test")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "lavis_listwise", "train", "--cfg-path", str(cfg), "--job-id", "job"]
    cmd += ["--options", *gt]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-8000:]
    run_dir = tmp_path / "out" / "job"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = next(row for row in rows if row["split"] == "train")
    assert float(train["loss_listwise"]) > 0
    test = next(row for row in rows if row["split"] == "test")
    for key in ("txt_r1", "img_r10", "r_mean", "txt_ndcg10", "gt_txt_ndcg10", "gt_img_map_r"):
        assert key in test, key
    # weights_only: as LAVIS's load_checkpoint reads it for model.finetuned below
    checkpoint = torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)
    assert checkpoint["epoch"] == 0 and len(checkpoint["rng_per_rank"]) == 2  # both ranks trained

    finetuned = [f"model.finetuned={run_dir / 'checkpoint_latest.pth'}", "model.load_finetuned=True"]
    cmd = [*torchrun, "-m", "lavis_listwise", "evaluate", "--cfg-path", str(cfg), "--job-id", "ev"]
    cmd += ["--options", "run.evaluate=True", *finetuned, *gt]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-8000:]
    evaluated = json.loads((tmp_path / "out" / "ev" / "evaluate_results.json").read_text())["test"]
    trained = json.loads((run_dir / "test_results.json").read_text())["test"]
    assert evaluated == pytest.approx(trained, abs=1e-9)
