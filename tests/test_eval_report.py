"""``lavis-listwise evaluate`` on a split shaped like COCO's 5K Karpathy test: 5K recalls, NDCG, COCO 1K
fold averages, ECCV Caption and CxC, the printed table and per-query rankings, all from one YAML."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import write_run_yaml


@pytest.fixture(scope="module")
def coco_shaped(tmp_path_factory):
    """Synthetic images renamed to the 5,000 Karpathy test images' COCO ids, their captions written as a
    real ``captions_val2014.json`` under the COCO caption ids, and a tiny local sentence encoder (the
    bundled MiniLM would spend a minute on 25,000 captions on CPU)."""
    from eccv_caption import Metrics
    from transformers import BertConfig, BertModel, BertTokenizer

    from lavis_listwise.demo.synthetic import generate_synthetic_dataset
    from listwise_ranking.relevance import default_encoder_path

    base = tmp_path_factory.mktemp("coco5k")
    root = generate_synthetic_dataset(base / "data", n_train=8, n_val=8, n_test=5000, image_size=32, seed=0)
    gts = Metrics().coco_gts["i2t"]  # COCO image id -> its 5 caption ids, for the Karpathy test split
    ann_file = root / "annotations" / "test.json"
    annotation = json.loads(ann_file.read_text())
    (root / "val2014").mkdir()
    coco = {"images": [], "annotations": []}
    for entry, image_id in zip(annotation, sorted(gts)):
        name = f"val2014/COCO_val2014_{image_id:012d}.jpg"
        shutil.move(root / entry["image"], root / name)
        entry["image"] = name
        coco["images"].append({"id": image_id, "file_name": name.split("/")[1]})
        # COCO's raw text differs from Karpathy's in case and final period; the mapping must see through it
        coco["annotations"] += [
            {"image_id": image_id, "id": cid, "caption": cap.upper() + "."}
            for cid, cap in zip(gts[image_id], entry["caption"])
        ]
    ann_file.write_text(json.dumps(annotation))
    (base / "captions_val2014.json").write_text(json.dumps(coco))

    encoder = base / "tiny_encoder"
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(encoder)
    BertTokenizer(str(default_encoder_path() / "vocab.txt")).save_pretrained(encoder)
    return root, base / "captions_val2014.json", encoder


def _evaluate(tmp_path, root, encoder, *options):
    cfg = write_run_yaml(tmp_path / "r.yaml", root, tmp_path / "out", tmp_path / "cache")
    args = [
        "run.evaluate=True",
        "run.k_test=3",
        "run.batch_size_eval=500",
        f"model.listwise.relevance.encoder={encoder}",
        *options,
    ]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lavis_listwise",
            "evaluate",
            "--cfg-path",
            str(cfg),
            "--job-id",
            "ev",
            "--options",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_coco_karpathy_test_report(tmp_path, coco_shaped):
    root, captions_json, encoder = coco_shaped
    run = _evaluate(tmp_path, root, encoder, f"run.coco_captions_json={captions_json}", "run.save_rankings=2")
    assert run.returncode == 0, run.stderr[-3000:]
    test = json.loads((tmp_path / "out" / "ev" / "evaluate_results.json").read_text())["test"]
    for key in (
        "txt_r1",
        "img_r10",
        "r_mean",
        "txt_ndcg10",
        "coco1k_txt_r1",
        "coco1k_img_r5",
        "coco1k_r_mean",
        "txt_eccv_map_at_r",
        "img_eccv_rprecision",
        "txt_eccv_r1",
        "img_cxc_r10",
    ):
        assert 0 <= test[key] <= 100, key
    # Each 1K fold ranks among 5x fewer candidates: its recalls cannot be lower on average here.
    assert test["coco1k_r_mean"] >= test["r_mean"]
    assert "coco1k image->text" in run.stdout and "eccv_map_at_r" in run.stdout  # the printed table
    rankings = json.loads((tmp_path / "out" / "ev" / "result" / "rankings_test_best.json").read_text())
    assert rankings["k"] == 2 and len(rankings["i2t"]) == 5000 and len(rankings["t2i"]) == 25000
    assert rankings["i2t"][0]["file"].startswith("val2014/COCO_val2014_")


@pytest.mark.slow
def test_missing_captions_file_is_named(tmp_path, coco_shaped):
    root, _, encoder = coco_shaped
    run = _evaluate(tmp_path, root, encoder)
    assert run.returncode != 0 and "run.coco_captions_json is not set" in run.stderr
    run = _evaluate(tmp_path, root, encoder, f"run.coco_captions_json={tmp_path / 'nope.json'}")
    assert run.returncode != 0 and "run.coco_captions_json" in run.stderr and "nope.json" in run.stderr
