"""Ground-truth relevance: the synthetic formula, the relevance-file format, the gt_* metrics, the
agreement of a training relevance with it, and its wiring through the task's YAML."""

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_run_yaml
from lavis.common.config import Config
from lavis.common.registry import registry
from lavis.processors.blip_processors import BlipCaptionProcessor

import lavis_listwise  # noqa: F401
from lavis_listwise.demo import synthetic
from lavis_listwise.demo.synthetic import (
    caption_relevance,
    caption_scene_with_statements,
    ground_truth_relevance,
    relevance_file,
    sample_scene,
)
from lavis_listwise.evaluation import (
    GroundTruth,
    average_ranks,
    ground_truth_metrics,
    gt_relevance_paths,
    positive_threshold,
    relevance_agreement,
)
from listwise_ranking.errors import ConfigError, DataError
from listwise_ranking.relevance import read_relevance_file

SCENE = {
    "objects": [
        {"colour": "red", "shape": "circle", "size": "small", "position": "top left"},
        {"colour": "blue", "shape": "square", "size": "large", "position": "centre"},
    ],
    "background": {"colour": "white", "style": "plain"},
}


def _statements(*objects, background=None, count=None):
    return {"objects": list(objects), "background": background, "count": count}


# ----------------------------------------------------------------------------- the formula
def test_ground_truth_formula_on_hand_built_scenes():
    red_circle = {"colour": "red", "shape": "circle"}
    # every statement holds: a plausible positive, whatever else the image shows
    assert caption_relevance(SCENE, _statements(red_circle)) == 1.0
    full = _statements(
        {**red_circle, "size": "small", "position": "top left"},
        {"colour": "blue", "shape": "square", "size": "large", "position": "centre"},
        background={"colour": "white", "style": "plain"},
        count=2,
    )
    assert caption_relevance(SCENE, full) == 1.0
    # another colour: 1 of 2 statements
    assert caption_relevance(SCENE, _statements({"colour": "green", "shape": "circle"})) == 0.5
    # attributes are bound per object: "blue circle" holds for neither object as a whole
    assert caption_relevance(SCENE, _statements({"colour": "blue", "shape": "circle"})) == 0.5
    # one to one: two mentioned red circles cannot both use the image's one red circle
    two_red = _statements(red_circle, red_circle)
    assert caption_relevance(SCENE, two_red) == 0.5  # the second is left with the blue square
    # background and count are statements too
    assert caption_relevance(SCENE, _statements(red_circle, background={"colour": "black"})) == pytest.approx(
        2 / 3
    )
    assert caption_relevance(
        SCENE, _statements(red_circle, background={"colour": "white", "style": "noisy"})
    ) == (pytest.approx(3 / 4))
    assert caption_relevance(SCENE, _statements(red_circle, count=3)) == pytest.approx(2 / 3)
    # a mentioned object the image lacks matches nothing
    three = _statements(
        red_circle, {"colour": "blue", "shape": "square"}, {"colour": "green", "shape": "star"}
    )
    assert caption_relevance(SCENE, three) == pytest.approx(4 / 6)
    nothing = _statements({"colour": "orange", "shape": "star"}, background={"colour": "grey"})
    assert caption_relevance(SCENE, nothing) == 0.0


def test_vectorised_ground_truth_matches_the_reference_definition(monkeypatch):
    rng = random.Random(7)
    scenes = [sample_scene(rng) for _ in range(25)]
    statements = [c for s in scenes for c in caption_scene_with_statements(s, rng)]
    # captions stating things about scenes of other shapes, positions and backgrounds
    matrix = ground_truth_relevance(scenes, statements)
    assert matrix.shape == (25, 125) and matrix.dtype == np.float32
    expected = np.array([[caption_relevance(sc, st) for st in statements] for sc in scenes])
    np.testing.assert_array_equal(matrix, expected.astype(np.float32))  # the float32 of the exact share
    monkeypatch.setattr(synthetic, "_GT_CHUNK_ELEMENTS", 3 * 125)  # chunks of 3 images, the last of 1
    np.testing.assert_array_equal(ground_truth_relevance(scenes, statements), matrix)
    for i in range(25):  # every caption is a plausible positive of its own image, exactly
        assert (matrix[i, 5 * i : 5 * i + 5] == 1.0).all()
    assert 0 < (matrix == 1).sum() - 125 < matrix.size  # some other captions hold too, most do not
    assert (matrix == 0).any() and ((matrix > 0) & (matrix < 1)).any()


# ----------------------------------------------------------------------------- the file format
def test_dense_and_sparse_files_read_the_same(tmp_path):
    dense = np.zeros((3, 4), dtype=np.float64)
    dense[0, 1], dense[2, 3], dense[1, 0] = 1.0, 0.25, 0.5
    np.save(tmp_path / "r.npy", dense)
    image, caption = np.nonzero(dense)
    np.savez(
        tmp_path / "r.npz", image=image[::-1], caption=caption[::-1], relevance=dense[image, caption][::-1]
    )
    a = read_relevance_file(tmp_path / "r.npy", 3, 4, "k").to_dense()
    b = read_relevance_file(tmp_path / "r.npz", 3, 4, "k").to_dense()
    assert a.dtype == torch.float32 and torch.equal(a, b) and torch.equal(a, torch.from_numpy(dense).float())
    sparse = read_relevance_file(tmp_path / "r.npz", 3, 4, "k", dense=False)
    assert sparse.dense is None
    rows, cols = torch.tensor([2, 0, 1, 1]), torch.tensor([3, 1, 0, 2])
    torch.testing.assert_close(sparse.lookup(rows, cols), a[rows][:, cols])


OUT_OF_RANGE = {"image": [0, 3], "caption": [0, 1], "relevance": [1.0, 1.0]}
REPEATED = {"image": [0, 0], "caption": [1, 1], "relevance": [1.0, 0.5]}


def _save(path, arrays: dict) -> None:
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        np.save(path, arrays["a"])


@pytest.mark.parametrize(
    "name, arrays, match",
    [
        ("r.npy", {"a": np.zeros((3, 5))}, r"has shape \(3, 5\), but the split has 3 images and 4 captions"),
        ("r.npy", {"a": np.full((3, 4), 1.5)}, r"in \[0, 1\]; 12 value\(s\) are not \(first: 1.5"),
        ("r.npy", {"a": np.full((3, 4), np.nan)}, r"must be finite"),
        ("r.npy", {"a": np.array([["a"] * 4] * 3)}, "must be numeric"),
        ("r.npz", {"image": [0], "caption": [0]}, r"exactly the arrays \['image', 'caption', 'relevance'\]"),
        ("r.npz", OUT_OF_RANGE, r"1 image index\(es\) outside \[0, 3\) \(first: 3\)"),
        ("r.npz", REPEATED, r"1 pair\(s\) are listed more than once \(first: image 0, caption 1\)"),
        ("r.npz", {"image": [0.0], "caption": [1], "relevance": [1.0]}, "image must hold integer indices"),
        ("r.npz", {"image": [0], "caption": [1, 2], "relevance": [1.0]}, "1-D arrays of one length"),
        ("r.npz", {"image": [0], "caption": [1], "relevance": [-0.5]}, r"in \[0, 1\]"),
        ("r.txt", None, "a dense .npy or a sparse .npz"),
        ("missing.npy", None, "does not exist"),
    ],
)  # fmt: skip
def test_bad_relevance_files_name_the_key_and_the_file(tmp_path, name, arrays, match):
    path = tmp_path / name
    if arrays is not None:
        _save(path, {k: np.asarray(v) for k, v in arrays.items()})
    elif name.endswith(".txt"):
        path.write_text("1 0\n")
    with pytest.raises(DataError, match=match) as err:
        read_relevance_file(path, 3, 4, "run.gt_relevance.val")
    assert str(err.value).startswith("run.gt_relevance.val: ") and str(path) in str(err.value)


def test_settings_are_checked():
    assert positive_threshold(None) == 1.0 and positive_threshold(0.5) == 0.5
    for bad in (0, 1.5, "x", float("nan")):
        with pytest.raises(ConfigError, match="run.gt_positive_threshold"):
            positive_threshold(bad)
    assert gt_relevance_paths(None, {"val"}) == {}
    assert gt_relevance_paths({"val": "/a/v.npy"}, {"val", "test"}) == {"val": Path("/a/v.npy")}
    with pytest.raises(ConfigError, match=r"run.gt_relevance.train: 'train' is not an evaluation split"):
        gt_relevance_paths({"train": "/a.npy"}, {"val", "test"})
    with pytest.raises(ConfigError, match="run.gt_relevance must map"):
        gt_relevance_paths("/a.npy", {"val"})


# ----------------------------------------------------------------------------- metrics and agreement
def test_ground_truth_metrics_of_a_perfect_and_a_reversed_ranking():
    g = torch.Generator().manual_seed(0)
    rel = (torch.rand(6, 15, generator=g) * 4).round() / 4
    rel[torch.arange(6), torch.arange(6) * 2] = 1.0  # every image and ...
    rel[torch.randint(0, 6, (15,), generator=g), torch.arange(15)] = 1.0  # ... every caption has a positive
    gt = GroundTruth(rel, 1.0, path=None, key="run.gt_relevance.val")
    perfect = rel + 1e-3 * torch.rand(6, 15, generator=g)  # ties broken, the order of rel kept
    out = ground_truth_metrics(perfect.numpy(), perfect.t().numpy(), gt)
    assert sorted(out) == sorted(
        [f"gt_{d}_{m}" for d in ("txt", "img") for m in ("ndcg5", "ndcg10", "ndcg20", "map_r", "r_precision")]
    )
    for key, value in out.items():
        assert value == pytest.approx(100.0), key
    worst = ground_truth_metrics(-perfect.numpy(), -perfect.t().numpy(), gt)
    for key, value in worst.items():
        assert value < (35 if "ndcg" not in key else 80), (key, value)


@pytest.mark.filterwarnings("ignore:An input array is constant")  # scipy's NaN for constant columns
def test_average_ranks_and_row_spearman_match_scipy():
    from scipy.stats import rankdata, spearmanr

    g = torch.Generator().manual_seed(3)
    x = (torch.rand(5, 40, generator=g) * 5).round()  # many ties
    y = x + torch.rand(5, 40, generator=g) * 3
    np.testing.assert_allclose(average_ranks(x).numpy(), rankdata(x.numpy(), axis=1))
    keep = torch.rand(5, 40, generator=g) > 0.3
    agreement = relevance_agreement(x / 5, (y / 8).clamp(0, 1), annotated=~keep)
    rows = [spearmanr(x[i][keep[i]], y[i][keep[i]])[0] for i in range(5)]
    assert agreement["spearman_i2t"] == pytest.approx(np.mean(rows), abs=1e-9)
    cols = [spearmanr(x[:, j][keep[:, j]], y[:, j][keep[:, j]])[0] for j in range(40)]
    defined = [c for c in cols if np.isfinite(c)]
    assert agreement["spearman_t2i"] == pytest.approx(np.mean(defined), abs=1e-9)
    assert agreement["spearman_rows_left_out"] == len(cols) - len(defined)


def test_agreement_is_order_and_magnitude():
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(8, 30, generator=g)
    annotated = torch.zeros(8, 30, dtype=torch.bool)
    annotated[torch.arange(8), torch.arange(8)] = True
    same = relevance_agreement(gt, gt, annotated)
    assert same["spearman_i2t"] == pytest.approx(1) and same["spearman_t2i"] == pytest.approx(1)
    assert same["ndcg10_i2t"] == pytest.approx(100) and same["gain_mae"] == 0
    # a monotone map keeps the order (Spearman, NDCG of the ranking) but not the gains
    squashed = relevance_agreement(0.5 + gt / 2, gt, annotated)
    assert squashed["spearman_i2t"] == pytest.approx(1) and squashed["ndcg10_t2i"] == pytest.approx(100)
    assert squashed["gain_mae"] > 0.2 and squashed["gain_p10"] > 0.4
    reversed_ = relevance_agreement(1 - gt, gt, annotated)
    assert reversed_["spearman_i2t"] == pytest.approx(-1) and reversed_["ndcg10_i2t"] < 80
    # the annotated pairs are left out: changing them changes nothing
    tampered = gt.clone()
    tampered[annotated] = 0.0
    assert relevance_agreement(tampered, gt, annotated) == same


def test_gain_quantiles_are_exact_past_two_to_the_24_pairs():
    """torch.histc counts in float32, which stops at 2^24 = 16,777,216 per bin: at COCO scale (125M
    pairs) the gain quantiles came out 1.0 where they are 0. 2^24 + 2^21 pairs (the first bin's count
    stops at 89% of them, below the 90% quantile), all of gain 0 but 8 of 1."""
    n = 2**24 + 2**21
    relevance = torch.zeros(1, n)
    relevance[0, :8] = 1.0
    agreement = relevance_agreement(relevance, torch.zeros(1, n))
    assert (agreement["gain_p10"], agreement["gain_p50"], agreement["gain_p90"]) == (0.0, 0.0, 0.0)
    graded = torch.arange(1001, dtype=torch.float32).div_(1000).log1p_().div_(math.log(2)).view(1, -1)
    exact = relevance_agreement(graded, torch.zeros_like(graded))  # gains 0, 0.001, ..., 1
    assert (exact["gain_p10"], exact["gain_p50"], exact["gain_p90"]) == (0.1, 0.5, 0.9)


# ----------------------------------------------------------------------------- through the task's YAML
def _config(path, options=()):
    return Config(argparse.Namespace(cfg_path=str(path), options=list(options)))


def _task_and_cfg(tmp_path, data, options):
    cfg = _config(write_run_yaml(tmp_path / "r.yaml", data, tmp_path / "o", tmp_path / "c"), options)
    return registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg), cfg


def test_task_attaches_the_generated_ground_truth(tmp_path, tiny_dataset):
    options = [f"run.gt_relevance.{s}={relevance_file(tiny_dataset, s)}" for s in ("val", "test")]
    task, cfg = _task_and_cfg(tmp_path, tiny_dataset, options)
    splits = task.build_datasets(cfg)["retrieval_listwise_json"]
    assert not hasattr(splits["train"], "ground_truth")
    scenes = json.loads((tiny_dataset / "scenes.json").read_text())["val"]
    gt = splits["val"].ground_truth
    assert gt.relevance.shape == (8, 40) and gt.key == "run.gt_relevance.val"
    # rows follow the split's images, columns its captions, as LAVIS orders them
    process = BlipCaptionProcessor()
    for t, text in enumerate(splits["val"].text):
        i = splits["val"].txt2img[t]
        assert gt.relevance[i, t] == 1.0
        assert text == process(scenes[i]["captions"][t - 5 * i]["caption"])


def test_task_refuses_a_bad_ground_truth_file_naming_the_key(tmp_path, tiny_dataset):
    bad = tmp_path / "val.npy"
    np.save(bad, np.zeros((8, 40), dtype=np.float32))  # no plausible positive at all
    task, cfg = _task_and_cfg(tmp_path, tiny_dataset, [f"run.gt_relevance.val={bad}"])
    with pytest.raises(
        DataError, match=r"run.gt_relevance.val: .*8 of the 8 images have no plausible positive"
    ):
        task.build_datasets(cfg)
    np.save(bad, np.ones((40, 8), dtype=np.float32))  # transposed
    task, cfg = _task_and_cfg(tmp_path, tiny_dataset, [f"run.gt_relevance.val={bad}"])
    with pytest.raises(
        DataError, match=r"run.gt_relevance.val: .*has shape \(40, 8\), but the split has 8 images"
    ):
        task.build_datasets(cfg)
    task, cfg = _task_and_cfg(tmp_path, tiny_dataset, [f"run.gt_relevance.val={tmp_path / 'none.npy'}"])
    with pytest.raises(DataError, match="run.gt_relevance.val: file .*none.npy' does not exist"):
        task.build_datasets(cfg)
    # a lower threshold makes graded pairs plausible positives
    np.save(bad, np.full((8, 40), 0.5, dtype=np.float32))
    task, cfg = _task_and_cfg(
        tmp_path, tiny_dataset, [f"run.gt_relevance.val={bad}", "run.gt_positive_threshold=0.5"]
    )
    assert bool(task.build_datasets(cfg)["retrieval_listwise_json"]["val"].ground_truth.positives.all())


def test_relevance_report_command(tmp_path, tiny_dataset, capsys):
    """``lavis-listwise relevance-report``: the agreement for every split with ground truth, before
    training (no model is built), with the YAML's shaping; one message when there is no ground truth."""
    from lavis_listwise_cli import main

    cfg_path = write_run_yaml(tmp_path / "r.yaml", tiny_dataset, tmp_path / "o", tmp_path / "c")
    options = [f"run.gt_relevance.{s}={relevance_file(tiny_dataset, s)}" for s in ("val", "test")]
    out = tmp_path / "report.json"
    argv = ["relevance-report", "--cfg-path", str(cfg_path), "--json", str(out), "--options", *options]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "agreement of the training relevance (RSC (1 + cos) / 2) with the ground truth" in printed
    assert "val: Spearman" in printed and "test: Spearman" in printed
    report = json.loads(out.read_text())
    assert set(report) == {"relevance", "val", "test"} and -1 <= report["val"]["spearman_i2t"] <= 1
    assert main([*argv, "model.listwise.relevance.floor=0.5"]) == 0
    shaped = json.loads(out.read_text())
    assert shaped["relevance"] == "RSC floor 0.5" and shaped["val"]["gain_p50"] < report["val"]["gain_p50"]
    capsys.readouterr()
    assert main(["relevance-report", "--cfg-path", str(cfg_path)]) == 1
    assert "run.gt_relevance names no evaluation split" in capsys.readouterr().err
