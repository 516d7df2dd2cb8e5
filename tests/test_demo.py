"""``lavis-listwise demo --quick`` end to end, in a subprocess, as a user runs it: its outputs, and the
same numbers again from a warm cache."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image


def _quick_demo(root, run: str, *extra: str) -> subprocess.CompletedProcess:
    """``demo --quick`` writing to ``root/run``, with its data and cache under ``root``."""
    return subprocess.run(
        [sys.executable, "-m", "lavis_listwise", "demo", "--quick", "--output-dir", str(root / run),
         "--data-dir", str(root / "data"), *extra],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "LAVIS_LISTWISE_CACHE": str(root / "cache")},
    )  # fmt: skip


@pytest.fixture(scope="module")
def cold_demo(tmp_path_factory):
    """The quick demo run once from nothing: no data, an empty cache; its two arms side by side."""
    root = tmp_path_factory.mktemp("demo")
    return root, _quick_demo(root, "cold", "--workers", "2")


def test_demo_quick_end_to_end(cold_demo):
    tmp_path, out = cold_demo
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    table = out.stdout[out.stdout.index("metric ") :]
    for key in (
        "txt_r1",
        "img_r10",
        "r_mean",
        "txt_ndcg5",
        "img_ndcg20",
        "pairwise",
        "listwise",
        "difference",
    ):
        assert key in table
    assert "[demo] elapsed:" in out.stdout
    results = json.loads((tmp_path / "cold" / "results.json").read_text())
    pairwise, listwise = results["mean"]["pairwise"], results["mean"]["listwise"]
    for key, diff in results["mean"]["difference"].items():
        assert abs(diff - (listwise[key] - pairwise[key])) < 1e-9
        assert 0 <= pairwise[key] <= 100 and 0 <= listwise[key] <= 100
    # against the generator's ground truth, both directions, for each model
    gt_keys = [
        f"gt_{d}_{m}" for d in ("txt", "img") for m in ("ndcg5", "ndcg10", "ndcg20", "map_r", "r_precision")
    ]
    for name in ("pairwise", "listwise"):
        per_seed = results["per_seed"]["0"][name]
        assert all(key in per_seed and 0 < per_seed[key] <= 100 for key in gt_keys), per_seed
        assert per_seed["gt_txt_ndcg10"] != per_seed["txt_ndcg10"]  # a different relevance than RSC
    assert "gt_txt_map_r" in table and "gt_img_r_precision" in table
    # how well the training relevance (RSC) agrees with the ground truth, before any training
    agreement = results["relevance_agreement"]
    assert agreement["relevance"] == "RSC floor 0.4"  # projects/demo/demo_quick.yaml
    for split in ("val", "test"):
        values = agreement[split]
        assert 0.1 < values["spearman_i2t"] < 0.9 and 0.1 < values["spearman_t2i"] < 0.9, values
        assert 0 < values["ndcg10_i2t"] < 100 and 0 < values["ndcg10_t2i"] < 100
        # the floor gives most other images' captions little gain (the paper's mapping: about 0.7)
        assert 0 <= values["gain_p50"] < 0.5, values
        assert values["gain_mean_gt_zero"] < values["gain_mean_gt_positive"]
        # the calibration figures of relevance-report, against the ground truth, at the run's list length
        assert values["batch_size"] == 32 and values["gain_irrelevant"] < values["gain_relevant"]
        assert 0 <= values["relevant_at_zero"] < 0.2 and 0 < values["irrelevant_share"] < 1, values
    assert "agreement of the training relevance (RSC floor 0.4) with the ground truth" in out.stdout
    assert "the other pairs' share of a 32-caption list's gain" in out.stdout
    # how query-specific the text->image top-5 lists are (the figure that shows a popularity collapse)
    n_images = 50  # the quick demo's test split
    for name in ("pairwise", "listwise"):
        c = results["concentration"]["per_seed"]["0"][name]
        assert 10 / n_images - 1e-9 <= c["top10_share"] <= 1 and 0 <= c["never_retrieved"] < 1, c
        assert results["concentration"]["mean"][name] == c  # one seed: the mean is that seed
    assert "top-5 concentration on test" in out.stdout
    picture = Image.open(tmp_path / "cold" / "rankings.png")
    assert picture.width > 800 and picture.height > 300
    # both runs went through LAVIS's runner: each has its own run directory with metrics
    assert (tmp_path / "cold" / "seed0-pairwise" / "metrics.jsonl").is_file()
    assert (tmp_path / "cold" / "seed0-listwise" / "metrics.jsonl").is_file()
    assert list((tmp_path / "cache").glob("captions-*.emb"))  # RSC cache under LAVIS_LISTWISE_CACHE


def test_quick_demo_gives_the_same_numbers_with_a_cold_and_a_warm_cache(cold_demo):
    """The rerun also goes to the cold run's output directory: the demo replaces its own earlier runs
    (job directories of finished runs are otherwise kept and refused)."""
    root, cold = cold_demo
    assert cold.returncode == 0, cold.stderr[-4000:]
    assert list((root / "cache").glob("captions-*.emb"))  # the cold run wrote the caption cache
    first = json.loads((root / "cold" / "results.json").read_text())
    warm = _quick_demo(root, "cold")
    assert warm.returncode == 0, warm.stderr[-4000:]
    assert json.loads((root / "cold" / "results.json").read_text())["per_seed"] == first["per_seed"]


def test_quick_demo_numbers_do_not_depend_on_the_worker_count(cold_demo):
    """Each arm trains in its own single-threaded process, so one worker at a time gives the numbers
    two side by side gave; the arms' output goes to their logs, not the terminal."""
    root, cold = cold_demo
    assert cold.returncode == 0, cold.stderr[-4000:]
    one = _quick_demo(root, "one-worker", "--workers", "1")
    assert one.returncode == 0, one.stderr[-4000:]
    results = [json.loads((root / run / "results.json").read_text()) for run in ("cold", "one-worker")]
    assert (results[0]["workers"], results[1]["workers"]) == (2, 1)
    assert results[0]["per_seed"] == results[1]["per_seed"]
    assert results[0]["relevance_agreement"] == results[1]["relevance_agreement"]
    assert (root / "one-worker" / "seed0-listwise.log").stat().st_size > 0
    progress = [line for line in one.stdout.splitlines() if line.startswith("[demo] seed 0:")]
    assert len(progress) == 2 and all(" done in " in line for line in progress), one.stdout


def test_validation_sweep_trains_its_settings_in_worker_processes(cold_demo, tmp_path):
    """``benchmarks/demo_listwise_sweep.py`` on the quick demo: each setting in its own process, on the
    validation split."""
    root, _ = cold_demo
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "demo_listwise_sweep.py")
    out = subprocess.run(
        [sys.executable, script, "--cfg-path", os.path.join("projects", "demo", "demo_quick.yaml"),
         "--seeds", "0", "--settings", "pairwise", "floor0.4_w1", "--workers", "2",
         "--output-dir", str(tmp_path / "sweep"), "--json", str(tmp_path / "sweep.json")],
        capture_output=True, text=True, timeout=300, cwd=os.path.join(os.path.dirname(__file__), ".."),
        env={**os.environ, "LAVIS_LISTWISE_CACHE": str(root / "cache")},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    result = json.loads((tmp_path / "sweep.json").read_text())
    pairwise, floor = result["runs"]["pairwise"]["0"], result["runs"]["floor0.4_w1"]["0"]
    assert all(0 < v <= 100 for v in (*pairwise.values(), *floor.values()))
    assert pairwise != floor
    assert result["relevance"]["floor0.4_w1"] == "RSC floor 0.4"
