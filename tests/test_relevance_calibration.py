"""Relevance against human judgments: the calibration figures, the selection rule, ``floor: auto``, the
judgment readers and ``lavis-listwise relevance-report --annotation`` on real COCO captions.

The real data is ``tests/data/coco_calibration_slice`` (its README says what it is and where it comes
from): 300 images of the calibration half of COCO's Karpathy test split, their 1,500 captions, and
CxC's ratings of their pairs; ECCV Caption's and CxC's positives come from the ``eccv-caption`` package.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_run_yaml

from lavis_listwise.config import RelevanceConfig
from listwise_ranking.errors import ConfigError, DataError
from listwise_ranking.relevance import best_cosines
from listwise_ranking.relevance.calibration import (
    RelevanceSetting,
    auto_floor_from_table,
    calibration_figures,
    equal_error_cosine,
    select_setting,
    shaped,
)
from listwise_ranking.relevance.judgments import karpathy_test_coco_ids, read_judgments

SLICE = Path(__file__).parent / "data" / "coco_calibration_slice"
ANNOTATION = SLICE / "coco_karpathy_test_calibration_slice.json"
SITS = SLICE / "cxc_sits_test_calibration_slice.csv"


# ----------------------------------------------------------------------------------- the figures, by hand
def test_calibration_figures_by_hand():
    # 2 images x 4 captions; image 0 owns caption 0, image 1 caption 1
    annotated = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    relevant = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)  # one judged extra: (0, 2)
    relevance = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.25, 1.0, 0.0, 0.0]])
    gain = lambda r: 2**r - 1  # noqa: E731
    out = calibration_figures(relevance, annotated, relevant, torch.tensor([True, True]), batch_size=4)
    irrelevant = [gain(0.0), gain(0.5), gain(0.25), gain(0.0), gain(0.0)]
    assert out["gain_relevant"] == pytest.approx(1.0)
    assert out["gain_irrelevant"] == pytest.approx(sum(irrelevant) / 5)
    assert out["gain_ratio"] == pytest.approx(5 / sum(irrelevant))
    assert out["relevant_at_zero"] == 0.0
    m_rel, m_irr = 1.0 / 6, sum(irrelevant) / 6  # per other-image caption: 6 of them over the two rows
    assert out["irrelevant_share"] == pytest.approx(3 * m_irr / (1 + 3 * (m_irr + m_rel)))
    # only judged rows count: row 1 alone has no judged-relevant pair
    alone = calibration_figures(relevance, annotated, relevant, torch.tensor([False, True]), batch_size=4)
    assert math.isnan(alone["gain_relevant"]) and alone["gain_irrelevant"] == pytest.approx(gain(0.25) / 3)
    with pytest.raises(ValueError, match="batch_size"):
        calibration_figures(relevance, annotated, relevant, torch.tensor([True, True]), batch_size=1)


def test_selection_rule_keeps_the_relevant_pairs_then_minimises_the_irrelevant_share():
    rows = [
        (RelevanceSetting("paper"), {"relevant_at_zero": 0.0, "irrelevant_share": 0.99}),
        (RelevanceSetting("floor 0.4", 0.4), {"relevant_at_zero": 0.05, "irrelevant_share": 0.5}),
        (RelevanceSetting("floor 0.45", 0.45), {"relevant_at_zero": 0.10, "irrelevant_share": 0.45}),
        (RelevanceSetting("floor 0.5", 0.5), {"relevant_at_zero": 0.14, "irrelevant_share": 0.38}),
    ]
    assert select_setting(rows).label == "floor 0.45"  # 90% kept exactly qualifies; 86% does not
    assert select_setting(rows[3:]) is None


def test_equal_error_cosine_is_where_misses_equal_false_alarms():
    relevant = torch.tensor([0.5, 0.6, 0.7, 0.8])
    irrelevant = torch.tensor([0.1, 0.2, 0.3, 0.55])
    assert 0.5 <= equal_error_cosine(relevant, irrelevant) <= 0.55  # one miss, one false alarm in 4
    assert math.isnan(equal_error_cosine(relevant[:0], irrelevant))


def test_auto_floor_lies_between_paraphrases_and_other_images_and_is_reproducible():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(40, 64, generator=g), dim=-1)
    table = torch.nn.functional.normalize(
        centres.repeat_interleave(5, 0) + 0.05 * torch.randn(200, 64, generator=g), dim=-1
    )
    index = torch.arange(200).view(40, 5)
    floor = auto_floor_from_table(table, index)
    cos = best_cosines(table[index], table)
    own = torch.zeros(40, 200, dtype=torch.bool)
    own[torch.arange(40).repeat_interleave(5), torch.arange(200)] = True
    assert cos[~own].max() < floor < 0.9  # above every other image's caption, below the paraphrases
    assert auto_floor_from_table(table.clone(), index.clone()) == floor
    with pytest.raises(ValueError, match="two captions"):
        auto_floor_from_table(table[:40], torch.arange(40).view(40, 1))


def test_floor_auto_in_the_yaml():
    relevance = RelevanceConfig.from_cfg({"floor": "auto"})
    assert relevance.floor == "auto" and relevance.describe() == "RSC floor auto"
    table = torch.nn.functional.normalize(
        torch.randn(30, 16, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    resolved = relevance.with_auto_floor(table, torch.arange(30).view(10, 3))
    assert isinstance(resolved.floor, float) and resolved.auto_floor
    assert resolved.describe().startswith("RSC floor auto = ")
    assert RelevanceConfig.from_cfg({"floor": 0.4}).with_auto_floor(table, None).floor == 0.4
    with pytest.raises(ConfigError, match="floor must be a cosine in \\[-1, 1\\), auto or null"):
        RelevanceConfig.from_cfg({"floor": "automatic"})


# ----------------------------------------------------------------------------------- judgments, real data
@pytest.fixture(scope="module")
def annotation() -> list[dict]:
    return json.loads(ANNOTATION.read_text(encoding="utf-8"))


def test_the_slice_maps_onto_the_eccv_caption_ids(annotation):
    images, captions = karpathy_test_coco_ids(annotation, "--judgments")
    assert len(images) == 300 and len(captions) == 1500 and None not in captions
    # 5 ids per image, each image's own in the package's table (checked inside), all distinct
    assert len(set(captions)) == 1500
    bad = [dict(annotation[0], image="train2014/COCO_train2014_000000000009.jpg")] + annotation[1:]
    with pytest.raises(
        DataError, match="--judgments: entry 0 .* not an image of the COCO Karpathy test split"
    ):
        karpathy_test_coco_ids(bad, "--judgments")


def test_judgment_sources_agree_where_they_should(annotation, tmp_path):
    eccv = read_judgments("eccv", annotation, 1500, "--judgments")
    cxc = read_judgments("cxc", annotation, 1500, "--judgments")
    graded = read_judgments(f"cxc-graded:{SITS}", annotation, 1500, "--judgments")
    assert (int(eccv.judged.sum()), eccv.mapped) == (173, 2220)
    assert graded.mapped == graded.total == 1871 and graded.ratings[2].max() <= 5
    # CxC's positives are its pairs rated 3 or more (own captions aside)
    own = torch.zeros(300, 1500, dtype=torch.bool)
    own[torch.arange(300).repeat_interleave(5), torch.arange(1500)] = True
    assert torch.equal(cxc.relevant & ~own, graded.relevant & ~own)
    # the plain format carries the same judgments in LAVIS's numbering
    plain = tmp_path / "eccv.csv"
    rows = [(i, t, 1) for i, t in (eccv.relevant & ~own).nonzero().tolist()] + [(0, 1499, 0)]
    plain.write_text("image,caption,relevant\n" + "".join(f"{i},{t},{r}\n" for i, t, r in rows))
    again = read_judgments(f"plain:{plain}", annotation, 1500, "--judgments")
    assert torch.equal(again.relevant, eccv.relevant & ~own) and bool(again.judged[0])
    plain.write_text("image,caption,relevant\n0,1500,1\n")
    with pytest.raises(DataError, match=r"--judgments: '.*eccv.csv' line 2: \(0, 1500, 1\)"):
        read_judgments(f"plain:{plain}", annotation, 1500, "--judgments")
    with pytest.raises(DataError, match="is not eccv, cxc"):
        read_judgments("ecv", annotation, 1500, "--judgments")


def test_relevance_report_on_real_coco_captions(tmp_path):
    """The report's table on the shipped slice: the paper's mapping gives judged-irrelevant captions
    about half a positive's gain, a floor cuts it ~20x while keeping the judged-relevant pairs, and the
    rule recommends a floor."""
    out = tmp_path / "report.json"
    argv = ["relevance-report", "--annotation", str(ANNOTATION), "--judgments", "eccv",
            "--judgments", f"cxc-graded:{SITS}", "--batch-size", "256", "--json", str(out)]  # fmt: skip
    env = {"LAVIS_LISTWISE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": ""}
    run = subprocess.run(
        [sys.executable, "-m", "lavis_listwise", *argv], capture_output=True, text=True, timeout=600, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| floor auto (= " in run.stdout and "recommended (among the settings" in run.stdout
    report = json.loads(out.read_text())
    assert (report["images"], report["captions"], report["batch_size"]) == (300, 1500, 256)
    assert 0.3 < report["auto_floor"] < 0.6
    eccv = report["sources"]["eccv"]
    assert (eccv["judged_images"], eccv["relevant_pairs"]) == (173, 1356)
    rows = {row["label"]: row for row in eccv["rows"]}
    paper, floor = rows["paper (1 + cos) / 2"], rows["floor 0.4"]
    assert paper["gain_irrelevant"] > 0.4 and paper["gain_ratio"] < 2 and paper["irrelevant_share"] > 0.95
    assert floor["gain_irrelevant"] < paper["gain_irrelevant"] / 20 and floor["relevant_at_zero"] < 0.1
    assert floor["map_r"] == pytest.approx(paper["map_r"])  # a floor keeps the order above it
    assert eccv["recommended"].startswith("floor ")
    graded = report["sources"][f"cxc-graded:{SITS}"]
    assert all(0.3 < row["spearman"] < 0.8 for row in graded["rows"])  # RSC vs CxC's 0-5 ratings


def test_floor_auto_is_computed_from_the_training_captions(tmp_path, tiny_dataset):
    cfg = write_run_yaml(tmp_path / "run.yaml", tiny_dataset, tmp_path / "out", tmp_path / "cache")
    run = subprocess.run(
        [sys.executable, "-m", "lavis_listwise", "train", "--cfg-path", str(cfg), "--job-id", "auto",
         "--options", "model.listwise.relevance.floor=auto"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "model.listwise.relevance.floor auto = " in run.stdout + run.stderr
    lines = [
        json.loads(line) for line in (tmp_path / "out" / "auto" / "metrics.jsonl").read_text().splitlines()
    ]
    train = next(row for row in lines if row["split"] == "train")
    assert math.isfinite(float(train["loss_listwise"]))


def test_shaped_matches_the_training_relevance():
    cos = torch.tensor([[0.9, 0.3, -0.2]])
    assert torch.allclose(shaped(cos, RelevanceSetting("paper")), (1 + cos) / 2)
    assert torch.allclose(shaped(cos, RelevanceSetting("f", 0.4)), torch.tensor([[0.5 / 0.6, 0.0, 0.0]]))


def test_a_csv_without_the_columns_names_the_file(tmp_path, annotation):
    bad = tmp_path / "sits.csv"
    with bad.open("w", newline="") as f:
        csv.writer(f).writerow(["caption", "image"])
    with pytest.raises(DataError, match=r"sits.csv' lacks the column\(s\) \['agg_score'\]"):
        read_judgments(f"cxc-graded:{bad}", annotation, 1500, "--judgments")
