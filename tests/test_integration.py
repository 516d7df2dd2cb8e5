"""YAML-only runs through the CLI in a subprocess: real LAVIS flow, tiny models, real JPEG files."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import write_run_yaml


def _cli(*args, timeout=600):
    out = subprocess.run(
        [sys.executable, "-m", "lavis_listwise", *args], capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out


@pytest.mark.parametrize("arch", ["blip_retrieval_listwise", "albef_retrieval_listwise"])
def test_train_validate_test_from_yaml(tmp_path, tiny_dataset, arch):
    cfg = write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache", arch=arch)
    _cli("train", "--cfg-path", str(cfg), "--job-id", "job")
    run_dir = tmp_path / "out" / "job"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = next(row for row in lines if row["split"] == "train")
    assert {"loss", "loss_itc", "loss_itm", "loss_listwise"} <= set(train)
    assert float(train["loss_listwise"]) > 0
    test = next(row for row in lines if row["split"] == "test")
    for key in ("txt_r1", "img_r10", "r_mean", "txt_ndcg5", "img_ndcg10", "txt_ndcg20", "agg_metrics"):
        assert key in test
    assert test["agg_metrics"] == test["r_mean"]
    assert (run_dir / "checkpoint_best.pth").is_file() and (run_dir / "checkpoint_latest.pth").is_file()
    results = json.loads((run_dir / "test_results.json").read_text())
    assert results["test"]["r_mean"] == test["r_mean"]
    assert list((tmp_path / "cache").glob("captions-*.emb"))  # the caption cache was built


def test_resume_is_exact(tmp_path, tiny_dataset):
    """Two epochs in one run equal a resume from that run's epoch-0 checkpoint for the second."""
    cfg = write_run_yaml(tmp_path / "a.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache")
    _cli("train", "--cfg-path", str(cfg), "--job-id", "straight",
         "--options", "run.max_epoch=2", "run.keep_epoch_checkpoints=true")  # fmt: skip
    straight = tmp_path / "out" / "straight"
    _cli("train", "--cfg-path", str(cfg), "--job-id", "resumed",
         "--options", "run.max_epoch=2", f"run.resume_ckpt_path={straight / 'epoch_0.pth'}")  # fmt: skip
    a = torch.load(straight / "checkpoint_latest.pth", weights_only=False)
    c = torch.load(tmp_path / "out" / "resumed" / "checkpoint_latest.pth", weights_only=False)
    assert a["epoch"] == c["epoch"] == 1
    assert a["best_agg_metric"] == c["best_agg_metric"] and a["best_epoch"] == c["best_epoch"]
    assert any("visual_encoder_m" in k for k in a["model"])  # momentum encoders are saved
    for key, value in a["model"].items():
        torch.testing.assert_close(c["model"][key], value, rtol=0, atol=0, msg=key)
