import pytest
import torch

from listwise_ranking.losses import (
    PairwiseListwiseLoss,
    SmoothNDCGLoss,
    TripletLoss,
    bidirectional_smooth_ndcg_loss,
    build_loss,
    get_loss_class,
    list_losses,
    register_loss,
    smooth_ndcg_loss,
    triplet_loss,
)


def published_triplet(scores, margin):
    """The published TripletLoss, written from its formula (square batch, positives on the diagonal)."""
    b = scores.shape[0]
    pos = scores.diag().view(b, 1)
    neg = 1 - torch.eye(b, dtype=scores.dtype)
    loss_t = ((scores - pos.expand_as(scores) + margin).clamp(min=0) * neg).max(dim=1)[0].mean()
    loss_v = ((scores - pos.t().expand_as(scores) + margin).clamp(min=0) * neg).max(dim=0)[0].mean()
    return (loss_t + loss_v) / 2


def test_registry_contents_and_errors():
    assert {"smooth_ndcg", "triplet"} <= set(list_losses())
    assert get_loss_class("smooth_ndcg") is SmoothNDCGLoss
    assert get_loss_class("triplet") is TripletLoss
    assert isinstance(build_loss("smooth_ndcg", tau=0.05), SmoothNDCGLoss)
    with pytest.raises(KeyError, match="unknown loss 'nope'.*smooth_ndcg"):
        get_loss_class("nope")
    with pytest.raises(KeyError, match="already registered"):

        @register_loss("smooth_ndcg")
        class Other(torch.nn.Module):
            pass

    with pytest.raises(TypeError):
        register_loss("not_a_module")(object)


def test_triplet_matches_published_formula():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(12, 8, dtype=torch.float64), dim=1)
    t = torch.nn.functional.normalize(torch.randn(12, 8, dtype=torch.float64), dim=1)
    sim = v @ t.t()
    eye = torch.eye(12, dtype=torch.bool)
    torch.testing.assert_close(triplet_loss(sim, eye, 0.2), published_triplet(sim, 0.2))
    assert TripletLoss(margin=0.2)(sim, eye).item() == pytest.approx(published_triplet(sim, 0.2).item())


def test_triplet_several_positives_per_image():
    sim = torch.tensor([[0.9, 0.8, 0.85], [0.1, 0.2, 0.7]])
    pos = torch.tensor([[True, True, False], [False, False, True]])
    # image->text: image 0's hardest negative caption is 0.85; hinges 0.15 (0.9) and 0.25 (0.8)
    # -> 0.25; image 1: 0.2 + 0.2 - 0.7 < 0 -> 0; mean 0.125.
    # text->image: captions 0 and 1 have hinges below 0; caption 2: 0.2 + 0.85 - 0.7 = 0.35; mean 0.35 / 3.
    assert triplet_loss(sim, pos, 0.2).item() == pytest.approx(0.5 * (0.125 + 0.35 / 3))


def test_bidirectional_uses_transpose_and_reference_compat():
    torch.manual_seed(1)
    sim = torch.randn(6, 6, dtype=torch.float64) * 0.1
    rel = torch.rand(6, 6, dtype=torch.float64)
    both = bidirectional_smooth_ndcg_loss(sim, rel, 0.05)
    expected = 0.5 * (smooth_ndcg_loss(sim, rel, 0.05) + smooth_ndcg_loss(sim.t(), rel.t(), 0.05))
    torch.testing.assert_close(both, expected)
    compat = bidirectional_smooth_ndcg_loss(sim, rel, 0.05, reference_compat=True)
    expected_compat = 0.5 * (smooth_ndcg_loss(sim, rel, 0.05) + smooth_ndcg_loss(sim.t(), rel, 0.05))
    torch.testing.assert_close(compat, expected_compat)
    assert not torch.allclose(both, compat)
    with pytest.raises(ValueError, match="square"):
        bidirectional_smooth_ndcg_loss(sim[:4], rel[:4], reference_compat=True)


@pytest.mark.parametrize("combine", ["convex", "add"])
def test_pairwise_listwise_objective(combine):
    torch.manual_seed(2)
    sim = (torch.randn(5, 5, dtype=torch.float64) * 0.3).requires_grad_()
    rel = torch.rand(5, 5, dtype=torch.float64)
    pos = torch.eye(5, dtype=torch.bool)
    rel[pos] = 1.0
    out = PairwiseListwiseLoss(weight=0.3, tau=0.05, combine=combine)(sim, rel, pos)
    keep = 0.7 if combine == "convex" else 1.0
    expected = keep * published_triplet(sim, 0.2) + 0.3 * bidirectional_smooth_ndcg_loss(sim, rel, 0.05)
    torch.testing.assert_close(out["loss"], expected)
    out["loss"].backward()
    twin = sim.detach().clone().requires_grad_()
    (keep * published_triplet(twin, 0.2) + 0.3 * bidirectional_smooth_ndcg_loss(twin, rel, 0.05)).backward()
    torch.testing.assert_close(sim.grad, twin.grad)
    assert out["loss_pairwise"].item() == pytest.approx(published_triplet(sim, 0.2).item())
    with pytest.raises(ValueError, match="weight"):
        PairwiseListwiseLoss(weight=-0.1)
    with pytest.raises(ValueError, match="combine"):
        PairwiseListwiseLoss(weight=0.1, combine="mul")
    with pytest.raises(KeyError, match="unknown loss"):
        PairwiseListwiseLoss(weight=0.1, pairwise="hinge")
