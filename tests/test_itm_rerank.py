"""The fast ITM re-ranking evaluation against LAVIS's own ``compute_sim_matrix``, on tiny models."""

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lavis.common.registry import registry
from lavis.models.albef_models import compute_sim_matrix
from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageEvalProcessor
from lavis.tasks.retrieval import RetrievalTask
from omegaconf import OmegaConf
from stock_twins import stock_twin
from torch.utils.data import DataLoader

import lavis_listwise  # noqa: F401
from lavis_listwise.config import EvalSettings
from lavis_listwise.datasets.retrieval_listwise import ListwiseRetrievalEvalDataset
from lavis_listwise.evaluation import RerankView, coco_1k_folds, compute_sim_matrix_fast, ranking_report
from lavis_listwise.evaluation.rerank import itm_batches
from listwise_ranking.metrics import lavis_recalls

ARCHS = ("blip_retrieval_listwise", "albef_retrieval_listwise")
N_TEST = 20


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    from lavis_listwise.demo.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("rerank") / "data", n_train=4, n_val=4, n_test=N_TEST, image_size=32, seed=3
    )


def _dataset(root, annotation="test.json"):
    return ListwiseRetrievalEvalDataset(
        BlipImageEvalProcessor(image_size=32),
        BlipCaptionProcessor(),
        str(root),
        [str(root / "annotations" / annotation)],
    )


def _model(arch, seed=0):
    cls = registry.get_model_class(arch)
    torch.manual_seed(seed)
    return cls.from_config(OmegaConf.load(cls.default_config_path("tiny")).model).eval()


def _lavis(model, loader, k):
    with torch.no_grad():
        return compute_sim_matrix(model, loader, k_test=k)


def _assert_same_scores(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a == -100, b == -100)  # the same ITC candidates
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("k_test,max_pairs", [(4, 7), (12, 1024)])
def test_fast_scores_equal_lavis_compute_sim_matrix(eval_data, arch, k_test, max_pairs, lavis_output_dir):
    dataset = _dataset(eval_data)
    model = _model(arch)
    loader = DataLoader(dataset, batch_size=8)
    theirs = _lavis(model, loader, k_test)
    ours = compute_sim_matrix_fast(model, loader, k_test, max_pairs=max_pairs, progress=False)
    _assert_same_scores(ours, theirs)
    report = RetrievalTask._report_metrics
    lavis = report(*theirs, dataset.txt2img, dataset.img2txt)
    assert report(*ours, dataset.txt2img, dataset.img2txt) == lavis
    assert lavis_recalls(*ours, dataset.txt2img, dataset.img2txt) == {
        k: lavis[k] for k in lavis if k != "agg_metrics"
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_serves_stock_lavis_models(eval_data, arch):
    """LAVIS's own BlipRetrieval / AlbefRetrieval (no plugin class) go through the same path."""
    stock = stock_twin(_model(arch, seed=1)).eval()
    loader = DataLoader(_dataset(eval_data), batch_size=5)
    _assert_same_scores(compute_sim_matrix_fast(stock, loader, 5, progress=False), _lavis(stock, loader, 5))


def test_a_view_equals_lavis_on_that_subset(eval_data, tmp_path):
    """A fold re-ranked as a view, sharing one pass with the whole split, equals LAVIS on the fold alone."""
    annotation = json.loads((eval_data / "annotations" / "test.json").read_text())
    lo, hi = 5, 15
    fold_file = eval_data / "annotations" / "fold.json"
    fold_file.write_text(json.dumps(annotation[lo:hi]))
    whole, fold = _dataset(eval_data), _dataset(eval_data, "fold.json")
    texts = torch.tensor([t for i in range(lo, hi) for t in whole.img2txt[i]])
    model = _model("blip_retrieval_listwise")
    views = [
        RerankView(torch.arange(N_TEST), torch.arange(len(whole.text))),
        RerankView(torch.arange(lo, hi), texts),
    ]
    full, sub = compute_sim_matrix_fast(
        model, DataLoader(whole, batch_size=8), 4, views=views, progress=False
    )
    _assert_same_scores(sub, _lavis(model, DataLoader(fold, batch_size=8), 4))
    _assert_same_scores(full, _lavis(model, DataLoader(whole, batch_size=8), 4))


def test_batches_cover_every_pair_once_within_the_budget():
    image_of_pair = torch.tensor([0] * 9 + [2] * 3 + [3] * 1 + [7] * 4)
    seen = []
    for images, rows, row_group in itm_batches(image_of_pair, max_pairs=4):
        assert len(rows) <= 4 and torch.equal(image_of_pair[rows], images[row_group])
        assert torch.all(row_group[1:] >= row_group[:-1])  # grouped by image
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(image_of_pair)))


def _ddp_worker(rank, world, init_file, root, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from pathlib import Path

        model = _model("albef_retrieval_listwise")
        loader = DataLoader(_dataset(Path(root)), batch_size=4)
        scores = compute_sim_matrix_fast(model, loader, 6, max_pairs=16, progress=False)
        torch.save(scores, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_give_the_one_process_matrices(eval_data, tmp_path):
    """Each rank encodes and re-ranks its share only; every rank ends with the whole, exact result."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = tmp_path / "scores"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(eval_data), str(out)), nprocs=2, join=True)
    one = compute_sim_matrix_fast(
        _model("albef_retrieval_listwise"), DataLoader(_dataset(eval_data), batch_size=4), 6, progress=False
    )
    for rank in range(2):
        _assert_same_scores(torch.load(f"{out}.{rank}", weights_only=False), one)


def test_coco_1k_folds_partition_the_split():
    class FiveK:
        image = list(range(5000))
        text = list(range(25000))
        txt2img = {t: t // 5 for t in range(25000)}

    folds = coco_1k_folds(FiveK())
    assert [len(f.image_index) for f in folds] == [1000] * 5 and [len(f.text_index) for f in folds] == [
        5000
    ] * 5
    assert torch.equal(torch.cat([f.text_index for f in folds]), torch.arange(25000))
    FiveK.image = list(range(1000))
    with pytest.raises(ValueError, match="run.coco_1k"):
        coco_1k_folds(FiveK())


@pytest.mark.parametrize(
    "key,value",
    [
        ("itm_eval", "slow"),
        ("itm_eval_pairs", 0),
        ("eval_feature_device", "gpu"),
        ("coco_1k", "maybe"),
        ("eccv_caption", 3),
        ("save_rankings", -1),
    ],
)
def test_eval_settings_name_the_yaml_key(key, value):
    with pytest.raises(ValueError, match=f"run.{key}"):
        EvalSettings.from_run_cfg({key: value})


def test_stock_path_cannot_do_coco_1k():
    with pytest.raises(ValueError, match="run.coco_1k"):
        EvalSettings.from_run_cfg({"itm_eval": "stock", "coco_1k": True})


def test_ranking_report_lists_each_querys_top_k(eval_data):
    dataset = _dataset(eval_data)
    g = torch.Generator().manual_seed(0)
    s_i2t = torch.rand(N_TEST, len(dataset.text), generator=g)
    report = ranking_report(s_i2t.numpy(), s_i2t.t().numpy(), dataset, k=3)
    assert len(report["i2t"]) == N_TEST and len(report["t2i"]) == len(dataset.text)
    first = report["i2t"][0]["top"]
    assert [e["text"] for e in first] == s_i2t[0].topk(3).indices.tolist()
    assert first[0]["caption"] == dataset.text[first[0]["text"]]
    assert all(e["positive"] == (dataset.txt2img[e["text"]] == 0) for e in first)
    json.dumps(report)  # serialisable as written


def test_task_reports_the_same_with_the_stock_path(eval_data, tmp_path, lavis_output_dir):
    """``run.itm_eval: stock`` (LAVIS's compute_sim_matrix) and the default fast path report the same."""
    import argparse

    from conftest import write_run_yaml
    from lavis.common.config import Config

    cfg = Config(
        argparse.Namespace(
            cfg_path=str(write_run_yaml(tmp_path / "r.yaml", eval_data, tmp_path / "o", tmp_path / "c")),
            options=["run.k_test=5", "run.valid_splits=[]"],  # val has 4 images, too few for k 5
        )
    )
    task = registry.get_task_class("retrieval_listwise").setup_task(cfg=cfg)
    loader = DataLoader(task.build_datasets(cfg)["retrieval_listwise_json"]["test"], batch_size=8)
    model = task.build_model(cfg).eval()
    with torch.no_grad():
        fast = task.evaluation(model, loader)
        task.eval_settings = EvalSettings.from_run_cfg({"itm_eval": "stock"})
        stock = task.evaluation(model, loader)
    assert fast.keys() == stock.keys() and "txt_ndcg10" in fast
    for key in fast:
        assert fast[key] == pytest.approx(stock[key], abs=1e-9), key


def test_relative_position_encoders_are_refused_with_the_yaml_key(eval_data):
    model = _model("blip_retrieval_listwise")
    model.text_encoder.config.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match="run.itm_eval: stock"):
        compute_sim_matrix_fast(model, DataLoader(_dataset(eval_data), batch_size=8), 4, progress=False)
