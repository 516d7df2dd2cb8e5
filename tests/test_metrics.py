import math

import numpy as np
import pytest
import torch

import listwise_ranking.metrics as metrics
from listwise_ranking.metrics import map_at_r, map_at_r_and_r_precision, ndcg_at_k, r_precision, recall_at_k


def test_ndcg_hand_computed():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    rel = torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    g = math.sqrt(2) - 1
    row0 = (0 + 1 / math.log2(3) + g / 2) / (1 + g / math.log2(3) + 0)
    row0_k1 = 0.0
    row1 = (0 + 1 / math.log2(3) + 1 / 2) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(scores, rel, 3) == pytest.approx((row0 + row1 + 0) / 3)
    assert ndcg_at_k(scores, rel, 1) == pytest.approx((row0_k1 + 0 + 0) / 3)
    assert ndcg_at_k(scores, rel, 10) == ndcg_at_k(scores, rel, 3)  # k past the list uses all of it


def test_recall_hand_computed():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    pos = torch.tensor([[False, False, True, True], [False, False, False, True]])
    assert recall_at_k(scores, pos, 1) == 0.5
    assert recall_at_k(scores, pos, 2) == 0.5
    assert recall_at_k(scores, pos, 3) == 1.0


def test_ndcg_matches_sklearn_on_untied_scores():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((30, 50))
    rel = rng.random((30, 50)) * (rng.random((30, 50)) > 0.5)
    rel[3] = 0
    for k in (1, 5, 10, 20):
        ours = ndcg_at_k(torch.from_numpy(scores), torch.from_numpy(rel), k)
        ref = sklearn_metrics.ndcg_score(2**rel - 1, scores, k=k)
        assert ours == pytest.approx(ref, rel=1e-12)


def test_recall_matches_lavis_rank_rule():
    """LAVIS: image->text rank = best position of any of the image's 5 captions in argsort order."""
    rng = np.random.default_rng(1)
    n_img, per = 20, 5
    scores = rng.standard_normal((n_img, n_img * per))
    pos = np.zeros_like(scores, dtype=bool)
    for i in range(n_img):
        pos[i, i * per : (i + 1) * per] = True
    ranks = []
    for i in range(n_img):
        order = np.argsort(scores[i])[::-1]
        ranks.append(min(np.where(order == j)[0][0] for j in range(i * per, (i + 1) * per)))
    ranks = np.array(ranks)
    for k in (1, 5, 10):
        assert recall_at_k(torch.from_numpy(scores), torch.from_numpy(pos), k) == pytest.approx(
            np.mean(ranks < k)
        )


def test_chunking_gives_the_same_result(monkeypatch):
    torch.manual_seed(0)
    scores, rel = torch.randn(37, 23), torch.rand(37, 23)
    pos = rel > 0.8
    full = (ndcg_at_k(scores, rel, 5), recall_at_k(scores, pos, 5))
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)  # two rows per chunk
    assert (ndcg_at_k(scores, rel, 5), recall_at_k(scores, pos, 5)) == pytest.approx(full, rel=1e-12)


def test_map_at_r_and_r_precision_hand_computed():
    # row 0: R = 2, ranking [p, n, p, ...]: P@1 = 1, the 2nd position is not a positive -> (1 + 0) / 2
    # row 1: R = 1, ranking [n, p]: mAP@R = 0, R-Precision = 0; row 2: R = 3, all first -> 1
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.9, 0.8, 0.1, 0.0], [0.4, 0.3, 0.2, 0.1]])
    pos = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert map_at_r(scores, pos) == pytest.approx((0.5 + 0 + 1) / 3)
    assert r_precision(scores, pos) == pytest.approx((0.5 + 0 + 1) / 3)
    # positions past R never count: [n, p, p] with R = 2 -> (0 + 1/2) / 2
    row = torch.tensor([[0.9, 0.8, 0.7]]), torch.tensor([[0, 1, 1]], dtype=torch.bool)
    assert map_at_r(*row) == pytest.approx(0.25) and r_precision(*row) == pytest.approx(0.5)
    # ties: lower candidate index first
    assert map_at_r(torch.zeros(1, 3), torch.tensor([[0, 0, 1]], dtype=torch.bool)) == 0.0
    assert map_at_r(torch.zeros(1, 3), torch.tensor([[1, 0, 0]], dtype=torch.bool)) == 1.0
    with pytest.raises(ValueError, match=r"1 query row\(s\) have no positive \(first: \[1\]\)"):
        map_at_r(scores, pos & torch.tensor([[True], [False], [True]]))


def test_map_at_r_matches_eccv_caption():
    """Against ECCV Caption's own implementation (``eccv_caption._metrics.compute_eccv_metrics``)."""
    from eccv_caption._metrics import compute_eccv_metrics

    rng = np.random.default_rng(4)
    scores = rng.standard_normal((40, 60))  # untied
    pos = rng.random((40, 60)) < 0.1
    pos[np.arange(40), rng.integers(0, 60, 40)] = True
    ranked = {q: list(np.argsort(-scores[q])) for q in range(40)}
    ref = compute_eccv_metrics(ranked, {q: list(np.flatnonzero(pos[q])) for q in range(40)})
    both = map_at_r_and_r_precision(torch.from_numpy(scores), torch.from_numpy(pos))
    assert both == pytest.approx((ref["eccv_map_at_r"], ref["eccv_rprecision"]), rel=1e-12)
    assert map_at_r(torch.from_numpy(scores), torch.from_numpy(pos)) == both[0]
    assert r_precision(torch.from_numpy(scores), torch.from_numpy(pos)) == both[1]


def test_map_at_r_chunking_gives_the_same_result(monkeypatch):
    torch.manual_seed(1)
    scores, pos = torch.randn(37, 23), torch.rand(37, 23) > 0.7
    pos[:, 0] = True
    full = map_at_r_and_r_precision(scores, pos)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)  # two rows per chunk
    assert map_at_r_and_r_precision(scores, pos) == pytest.approx(full, rel=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        ndcg_at_k(torch.zeros(2, 3), torch.zeros(3, 2), 1)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="2-D"):
        ndcg_at_k(torch.zeros(3), torch.zeros(3), 1)


def test_recall_matches_lavis_report_metrics(tmp_path):
    """Our R@K on a score matrix equals what LAVIS's own RetrievalTask._report_metrics reports."""
    pytest.importorskip("lavis", reason="compares with LAVIS")
    from lavis.common.registry import registry
    from lavis.tasks.retrieval import RetrievalTask

    rng = np.random.default_rng(2)
    n_img, per = 30, 5
    score_i2t = rng.standard_normal((n_img, n_img * per))
    score_t2i = rng.standard_normal((n_img * per, n_img))
    img2txt = {i: list(range(i * per, (i + 1) * per)) for i in range(n_img)}
    txt2img = {t: t // per for t in range(n_img * per)}
    pos = np.zeros((n_img, n_img * per), dtype=bool)
    for i, caps in img2txt.items():
        pos[i, caps] = True
    saved = registry.mapping["paths"].get("output_dir")
    registry.mapping["paths"]["output_dir"] = str(tmp_path)  # _report_metrics appends evaluate.txt there
    try:
        lavis = RetrievalTask._report_metrics(score_i2t, score_t2i, txt2img, img2txt)
    finally:
        if saved is None:
            registry.mapping["paths"].pop("output_dir")
        else:
            registry.mapping["paths"]["output_dir"] = saved
    for k in (1, 5, 10):
        assert 100 * recall_at_k(torch.from_numpy(score_i2t), torch.from_numpy(pos), k) == pytest.approx(
            lavis[f"txt_r{k}"]
        )
        assert 100 * recall_at_k(torch.from_numpy(score_t2i), torch.from_numpy(pos.T), k) == pytest.approx(
            lavis[f"img_r{k}"]
        )
