"""Contracts every loss in the registry keeps, parametrised over ``list_losses()`` (as timm's tests run
over ``list_models()``): a loss registered with ``register_loss`` is checked here without editing this
file. What holds for one loss only is in that loss's own tests (test_smooth_ndcg.py,
test_losses_registry.py)."""

import pytest
import torch

from listwise_ranking.losses import build_loss, get_loss_class, list_losses

LOSSES = list_losses()


def test_the_registry_holds_the_listwise_and_the_pairwise_loss():
    assert {"smooth_ndcg", "triplet"} <= set(LOSSES)


def _build(name: str) -> torch.nn.Module:
    """The loss as the package builds it from its config (``listwise_ranking.losses.registry``): a
    listwise loss (``is_listwise``) with the keyword arguments of ``model.listwise`` (their defaults), a
    pairwise loss as ``PairwiseListwiseLoss`` builds it (``pairwise_kwargs``, none by default)."""
    if getattr(get_loss_class(name), "is_listwise", False):
        return build_loss(name, tau=0.01, kernel="auto", relevance_topk=None, ideal_dcg="paper")
    return build_loss(name)


def _target(loss: torch.nn.Module, relevance: torch.Tensor) -> torch.Tensor:
    """What the loss takes besides the scores: a listwise loss the graded relevance, a pairwise loss
    the positives (relevance 1)."""
    return relevance if getattr(loss, "is_listwise", False) else relevance == 1


def _scores_and_relevance(n_queries: int = 5, n_candidates: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Random cosine-range scores ``[Q, N]`` and graded relevance in ``[0, 1]``: one positive (1) per
    query as a same-image caption, one query with two, some irrelevant (0) candidates."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(n_queries, n_candidates, generator=g) * 0.3
    relevance = torch.rand(n_queries, n_candidates, generator=g) * 0.9
    relevance[torch.arange(n_queries), torch.arange(n_queries)] = 1.0
    relevance[0, -1] = 1.0
    relevance[1:3, -2] = 0.0
    return scores, relevance


@pytest.fixture(params=LOSSES)
def loss(request):
    return _build(request.param)


def test_builds_from_its_config_and_gives_a_finite_scalar(loss):
    scores, relevance = _scores_and_relevance()
    target = _target(loss, relevance)
    given = (scores.clone(), target.clone())
    value = loss(scores, target)
    assert value.shape == () and value.dtype == scores.dtype and torch.isfinite(value)
    assert torch.equal(scores, given[0]) and torch.equal(target, given[1])  # inputs left as they were


def test_is_differentiable_in_the_scores(loss):
    scores, relevance = _scores_and_relevance()
    scores.requires_grad_()
    loss(scores, _target(loss, relevance)).backward()
    assert scores.grad.shape == scores.shape and torch.isfinite(scores.grad).all()
    assert scores.grad.abs().sum() > 0


def test_permuting_candidates_or_queries_with_their_relevance_leaves_it_unchanged(loss):
    scores, relevance = _scores_and_relevance()
    target = _target(loss, relevance)
    expected = loss(scores, target)
    g = torch.Generator().manual_seed(1)
    columns = torch.randperm(scores.shape[1], generator=g)
    rows = torch.randperm(scores.shape[0], generator=g)
    torch.testing.assert_close(loss(scores[:, columns], target[:, columns]), expected)
    torch.testing.assert_close(loss(scores[rows], target[rows]), expected)


def test_two_identical_calls_give_identical_losses_and_gradients(loss):
    scores, relevance = _scores_and_relevance()
    target = _target(loss, relevance)
    results = []
    for _ in range(2):
        leaf = scores.clone().requires_grad_()
        value = loss(leaf, target)
        value.backward()
        results.append((value.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
