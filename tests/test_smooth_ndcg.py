import math
import subprocess
import sys
import textwrap

import pytest
import torch

from listwise_ranking.losses import SmoothNDCGLoss, smooth_ndcg_loss
from listwise_ranking.losses.reference import smooth_ndcg_loss_reference
from listwise_ranking.losses.smooth_ndcg import _SmoothNDCG

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _inputs(q, n, dtype=torch.float64, seed=0, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(q, n, generator=g, dtype=torch.float64) * spread).to(dtype)
    relevance = torch.rand(q, n, generator=g, dtype=torch.float64)
    return scores, relevance


@pytest.mark.parametrize("ideal", ["paper", "sorted"])
@pytest.mark.parametrize("q,n", [(6, 40), (1, 7), (9, 3), (4, 1), (1, 1), (3, 130)])
def test_gradcheck_closed_form_backward(q, n, ideal):
    scores, relevance = _inputs(q, n)
    relevance[:, ::3] = 1.0  # tied positives, where the two ideal-DCG rules differ
    scores.requires_grad_()
    # small tiles so several query chunks and candidate blocks are exercised
    assert torch.autograd.gradcheck(
        lambda s: _SmoothNDCG.apply(s, relevance, 0.05, 16, 2048, "torch", ideal),
        (scores,),
        eps=1e-6,
        atol=1e-7,
    )


@pytest.mark.parametrize("q,n,block", [(7, 300, 64), (5, 5, 128), (16, 200, 33), (2, 257, 256)])
def test_value_and_gradient_match_naive_formula(q, n, block):
    scores, relevance = _inputs(q, n, seed=q + n)
    relevance[0] = 0.0  # an all-zero row: IDCG 0
    s1 = scores.clone().requires_grad_()
    s2 = scores.clone().requires_grad_()
    ours = smooth_ndcg_loss(s1, relevance, 0.01, "none", block=block, tile_bytes=1 << 16)
    ref = smooth_ndcg_loss_reference(s2, relevance, 0.01)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    weights = torch.randn(q, dtype=torch.float64)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-9, atol=1e-12)
    assert ours[0] == 0 and torch.all(s1.grad[0] == 0)


def test_ties_in_scores_and_relevance():
    scores = torch.tensor([[0.3, 0.3, 0.3, 0.1], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    relevance = torch.tensor([[1.0, 1.0, 0.5, 0.5], [1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    s1, s2 = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    ours = smooth_ndcg_loss(s1, relevance, 0.1, "none")
    ref = smooth_ndcg_loss_reference(s2, relevance, 0.1)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    # row 0 by hand: tied relevance shares the best ideal rank, so the ideal ranks are 1, 1, 3, 3
    gains = [1.0, 1.0, math.sqrt(2) - 1, math.sqrt(2) - 1]
    idcg = sum(g / math.log2(1 + r) for g, r in zip(gains, [1.0, 1.0, 3.0, 3.0]))
    sig = 1 / (1 + math.exp(2.0))  # sigmoid((0.1 - 0.3) / 0.1)
    ranks = [1 + 2 * 0.5 + sig] * 3 + [1 + 3 * (1 - sig)]  # three tied top scores, then 0.1
    dcg = sum(g / math.log2(1 + r) for g, r in zip(gains, ranks))
    assert ours[0].item() == pytest.approx(1 - dcg / idcg, rel=1e-12)
    # all-equal scores in row 1: every smoothed rank is 1 + 3 * 0.5; ideal ranks 1, 3, 3, 1
    dcg = 2.0 / math.log2(1 + 2.5)
    assert ours[1].item() == pytest.approx(1 - dcg / 2.0, rel=1e-12)


def test_hand_computed_single_row():
    # two items, far apart: ranks are ~1 and ~2 exactly at tau -> 0
    scores = torch.tensor([[1.0, 0.0]])
    relevance = torch.tensor([[0.0, 1.0]])  # the relevant item is ranked second
    loss = smooth_ndcg_loss(scores, relevance, tau=1e-3)
    assert loss.item() == pytest.approx(1 - 1 / math.log2(3), abs=1e-6)
    swapped = smooth_ndcg_loss(scores, relevance.flip(1), tau=1e-3)
    assert swapped.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_module(reduction):
    scores, relevance = _inputs(5, 9)
    relevance[2] = 0
    per_row = smooth_ndcg_loss(scores, relevance, 0.02, "none")
    out = SmoothNDCGLoss(tau=0.02, reduction=reduction)(scores, relevance)
    expected = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
    torch.testing.assert_close(out, expected)
    assert per_row[2] == 0  # the all-zero row contributes 0 and still counts in the mean


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_accumulate_in_fp32(dtype, device):
    scores, relevance = _inputs(8, 50, spread=0.2)
    low = scores.to(dtype).to(device).requires_grad_()
    loss = smooth_ndcg_loss(low, relevance.to(dtype).to(device), 0.05)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    loss.backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()
    # same result as fp64 on the same (rounded) inputs, to fp32 accuracy
    exact = smooth_ndcg_loss(low.detach().double().cpu(), relevance.to(dtype).double(), 0.05)
    assert loss.item() == pytest.approx(exact.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tau": 0.0}, "tau"),
        ({"tau": -1.0}, "tau"),
        ({"tau": float("nan")}, "tau"),
        ({"tau": float("inf")}, "tau"),
        ({"reduction": "max"}, "reduction"),
    ],
)
def test_bad_arguments(kwargs, match):
    scores, relevance = _inputs(2, 3)
    with pytest.raises(ValueError, match=match):
        smooth_ndcg_loss(scores, relevance, **kwargs)


def test_bad_tensors():
    scores, relevance = _inputs(2, 3)
    bad = scores.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="scores"):
        smooth_ndcg_loss(bad, relevance)
    bad[0, 1] = float("inf")
    with pytest.raises(ValueError, match="scores"):
        smooth_ndcg_loss(bad, relevance)
    bad_rel = relevance.clone()
    bad_rel[1, 2] = float("nan")
    with pytest.raises(ValueError, match="relevance"):
        smooth_ndcg_loss(scores, bad_rel)
    with pytest.raises(ValueError, match="relevance"):
        smooth_ndcg_loss(scores, -relevance)
    with pytest.raises(ValueError, match="shape"):
        smooth_ndcg_loss(scores, relevance[:, :2])
    with pytest.raises(ValueError, match="2-D"):
        smooth_ndcg_loss(scores[0], relevance[0])
    with pytest.raises(ValueError, match="tau"):
        SmoothNDCGLoss(tau=0)


def test_no_cube_is_materialised():
    """Peak memory of forward+backward at Q=64, N=2048 stays far below one Q*N*N fp32 tensor (1 GiB)."""
    script = textwrap.dedent(
        """
        import resource, torch
        from listwise_ranking.losses import smooth_ndcg_loss
        torch.manual_seed(0)
        s = (torch.randn(64, 2048) * 0.1).requires_grad_()
        r = torch.rand(64, 2048)
        smooth_ndcg_loss(s[:2, :64], r[:2, :64]).backward()  # warm up allocator and kernels
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        smooth_ndcg_loss(s, r).backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    extra_mib = int(out.stdout.strip().splitlines()[-1])
    assert extra_mib < 200, f"forward+backward grew the process by {extra_mib} MiB"


@pytest.mark.parametrize("topk", [1, 3, 17, 40])
def test_relevance_topk_is_exact_snDCG_on_truncated_relevance(topk):
    """The sparse path equals dense S-NDCG with every gain outside each row's top-k zeroed."""
    scores, relevance = _inputs(6, 40, seed=topk)
    relevance[1] = 0.0
    kept = torch.zeros_like(relevance)
    idx = relevance.topk(topk, dim=1).indices
    kept.scatter_(1, idx, relevance.gather(1, idx))
    s1, s2 = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    sparse = smooth_ndcg_loss(s1, relevance, 0.02, "none", relevance_topk=topk, tile_bytes=4096)
    dense = smooth_ndcg_loss_reference(s2, kept, 0.02)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-12)
    w = torch.randn(6, dtype=torch.float64)
    (sparse * w).sum().backward()
    (dense * w).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-9, atol=1e-12)


def test_relevance_topk_gradcheck_and_errors():
    from listwise_ranking.losses.smooth_ndcg_topk import _SparseSmoothNDCG

    scores, relevance = _inputs(4, 12)
    scores.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s: _SparseSmoothNDCG.apply(s, relevance, 0.05, 5, 1024, "paper"),
        (scores,),
        eps=1e-6,
        atol=1e-7,
    )
    tied = relevance.clone()
    tied[:, :4] = 1.0
    assert torch.autograd.gradcheck(
        lambda s: _SparseSmoothNDCG.apply(s, tied, 0.05, 5, 1024, "sorted"), (scores,), eps=1e-6, atol=1e-7
    )
    with pytest.raises(ValueError, match="relevance_topk"):
        SmoothNDCGLoss(relevance_topk=0)


def test_relevance_topk_is_checked_as_its_yaml_key():
    ListwiseConfig = pytest.importorskip("lavis_listwise.config", reason="the LAVIS plugin").ListwiseConfig

    with pytest.raises(ValueError, match="model.listwise.relevance_topk"):
        ListwiseConfig.from_cfg({"relevance_topk": -2})
    assert ListwiseConfig.from_cfg({"relevance_topk": 8}).relevance_topk == 8
    assert ListwiseConfig.from_cfg({}).ideal_dcg == "paper"
    assert ListwiseConfig.from_cfg({"ideal_dcg": "sorted"}).ideal_dcg == "sorted"
    with pytest.raises(ValueError, match="model.listwise.ideal_dcg"):
        ListwiseConfig.from_cfg({"ideal_dcg": "standard"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centred_exp_gives_the_sigmoid_and_marks_wide_rows(dtype):
    from listwise_ranking.losses.kernels.centred_exp import CENTRED_EXP_LIMIT, centred_exp

    limit = CENTRED_EXP_LIMIT[dtype]
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 50, generator=g, dtype=torch.float64) * 10).to(dtype)
    x[1, :2] = torch.tensor([-limit, limit], dtype=dtype)  # half range exactly at the limit
    x[2, :2] = torch.tensor([-limit, limit * 1.001], dtype=dtype)  # just past it
    u, v, safe = centred_exp(x)
    assert safe.tolist() == [True, True, False, True]
    rows = torch.tensor([0, 1, 3])
    u, v = u[rows], v[rows]
    for factor in (u, v):
        assert bool(torch.isfinite(factor).all() and (factor >= torch.finfo(dtype).tiny).all())
    ours = torch.reciprocal(1 + u.unsqueeze(2) * v.unsqueeze(1))  # [q, i, j] = sigma(x_j - x_i)
    d = x[rows].double()
    exact = torch.sigmoid(d.unsqueeze(1) - d.unsqueeze(2))
    # rounding x - c costs each exponent half an ulp of |x - c|; exps, product, reciprocal a few ulp
    centred = (d - (d.amax(1, keepdim=True) + d.amin(1, keepdim=True)) / 2).abs()
    bound = torch.finfo(dtype).eps * (centred.unsqueeze(2) + centred.unsqueeze(1) + 4) * exact
    assert bool(((ours.double() - exact).abs() <= bound + torch.finfo(dtype).tiny).all())


def test_by_row_kind_routes_rows_and_propagates_failure():
    from listwise_ranking.losses.kernels.centred_exp import by_row_kind

    like = torch.zeros(5, 3)
    safe = torch.tensor([True, False, True, False, False])
    out = by_row_kind(safe, lambda r: like[r] + 1, lambda r: like[r] + 2, like)
    assert out[:, 0].tolist() == [1, 2, 1, 2, 2]
    assert by_row_kind(safe, lambda r: like[r] + 1, lambda r: None, like) is None
    assert by_row_kind(torch.ones(5, dtype=torch.bool), lambda r: like[r] + 1, None, like).sum() == 15
    assert by_row_kind(torch.zeros(5, dtype=torch.bool), None, lambda r: like[r] + 2, like).sum() == 30


def test_ideal_dcg_ties_share_the_best_rank():
    """Sorted-order IDCG against the definition ``rank*_i = 1 + #{j : r_j > r_i}``, counted pairwise."""
    from listwise_ranking.losses.dcg import ideal_dcg

    g = torch.Generator().manual_seed(11)
    relevance = (torch.rand(6, 57, generator=g, dtype=torch.float64) * 4).round() / 4  # many ties
    relevance[1] = 0.5  # one tie group
    relevance[2, :3] = 0.0
    gains = torch.expm1(relevance * math.log(2))
    greater = (relevance.unsqueeze(1) > relevance.unsqueeze(2)).sum(dim=2)  # [q, i] = #{j : r_j > r_i}
    expected = (gains / torch.log2(2.0 + greater.double())).sum(dim=1)
    torch.testing.assert_close(ideal_dcg(gains, relevance), expected, rtol=1e-12, atol=0)


def test_sorted_ideal_dcg_reaches_zero_on_a_perfect_row_with_tied_positives():
    """Three tied positives ranked first, then graded items in order: the standard ideal DCG makes
    the loss 0; the paper's tie rule gives each positive rank 1 in IDCG, a floor no ranking reaches."""
    relevance = torch.tensor([[1.0, 1.0, 1.0, 0.7, 0.4, 0.0, 0.0]], dtype=torch.float64)
    scores = torch.tensor([[0.9, 0.6, 0.3, 0.0, -0.3, -0.6, -0.9]], dtype=torch.float64)  # gaps >> tau
    sorted_loss = smooth_ndcg_loss(scores, relevance, tau=0.01, ideal_dcg="sorted")
    paper_loss = smooth_ndcg_loss(scores, relevance, tau=0.01, ideal_dcg="paper")
    assert sorted_loss.item() == pytest.approx(0.0, abs=1e-12)
    gains = [1, 1, 1, 2**0.7 - 1, 2**0.4 - 1]
    dcg = sum(g / math.log2(2 + p) for p, g in enumerate(gains))
    paper_idcg = 3.0 + (2**0.7 - 1) / math.log2(5) + (2**0.4 - 1) / math.log2(6)  # ranks 1, 1, 1, 4, 5
    assert paper_loss.item() == pytest.approx(1 - dcg / paper_idcg, rel=1e-9)
    assert paper_loss.item() > 0.2
    # the same holds on the sparse path and through the module
    topk = smooth_ndcg_loss(scores, relevance, tau=0.01, relevance_topk=5, ideal_dcg="sorted")
    assert topk.item() == pytest.approx(0.0, abs=1e-12)
    module = SmoothNDCGLoss(tau=0.01, ideal_dcg="sorted")
    assert module(scores, relevance).item() == pytest.approx(0.0, abs=1e-12)
    assert "ideal_dcg='sorted'" in repr(module)


def test_sorted_ideal_dcg_is_the_evaluation_normaliser():
    """``ideal_dcg(rule="sorted")`` is the ideal DCG of ``metrics.ndcg_at_k`` (k = N), and equals the
    paper's rule on rows without tied non-zero gains."""
    from listwise_ranking.losses.dcg import ideal_dcg
    from listwise_ranking.metrics import ndcg_at_k

    g = torch.Generator().manual_seed(5)
    relevance = (torch.rand(8, 30, generator=g, dtype=torch.float64) * 4).round() / 4
    gains = torch.expm1(relevance * math.log(2))
    scores = torch.rand(8, 30, generator=g, dtype=torch.float64)
    order = scores.argsort(dim=1, descending=True)
    dcg = (gains.gather(1, order) / torch.log2(torch.arange(30, dtype=torch.float64) + 2)).sum(1)
    per_row = [ndcg_at_k(scores[i : i + 1], relevance[i : i + 1], 30) for i in range(8)]
    torch.testing.assert_close(
        dcg / ideal_dcg(gains, relevance, "sorted"), torch.tensor(per_row, dtype=torch.float64)
    )
    untied = torch.rand(4, 30, generator=g, dtype=torch.float64)
    untied_gains = torch.expm1(untied * math.log(2))
    torch.testing.assert_close(
        ideal_dcg(untied_gains, untied, "sorted"), ideal_dcg(untied_gains, untied, "paper")
    )
    with pytest.raises(ValueError, match="ideal_dcg"):
        ideal_dcg(gains, relevance, "best")
    with pytest.raises(ValueError, match="ideal_dcg"):
        smooth_ndcg_loss(scores, relevance, ideal_dcg="best")
    with pytest.raises(ValueError, match="ideal_dcg"):
        SmoothNDCGLoss(ideal_dcg="best")


@pytest.mark.parametrize("topk", [None, 4])
def test_unchecked_entry_skips_the_checks_and_never_reads_a_tensor_on_the_host(topk, monkeypatch):
    """The training hot path (``SmoothNDCGLoss.unchecked``) equals ``forward`` on valid input, does not
    check the tensors (NaN scores give a NaN loss instead of an error), and forward + backward never
    convert a tensor to a Python value (on GPU, each would be a device-to-host sync)."""
    loss = SmoothNDCGLoss(tau=0.05, kernel="torch", relevance_topk=topk)
    scores, relevance = _inputs(6, 9)
    s1, s2 = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    checked = loss(s1, relevance)

    def host_read(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    with monkeypatch.context() as m:
        for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
            m.setattr(torch.Tensor, name, host_read)
        unchecked = loss.unchecked(s2, relevance)
        unchecked.backward()
    checked.backward()
    assert torch.equal(unchecked, checked) and torch.equal(s2.grad, s1.grad)
    bad = scores.clone()
    bad[0, 0] = float("nan")
    assert torch.isnan(loss.unchecked(bad, relevance))
    with pytest.raises(ValueError, match="NaN"):
        loss(bad, relevance)
