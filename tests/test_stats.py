"""The demo's paired comparison against scipy's own paired t-test."""

import math

import pytest
from scipy.stats import ttest_rel

from listwise_ranking.stats import paired_difference


def test_paired_difference_matches_scipy_ttest_rel():
    listwise = [78.1, 80.4, 77.9, 81.2, 79.0]
    pairwise = [76.0, 79.9, 78.3, 78.8, 77.1]
    got = paired_difference(listwise, pairwise)
    ref = ttest_rel(listwise, pairwise)
    assert got.n == 5
    assert got.mean == pytest.approx(sum(a - b for a, b in zip(listwise, pairwise)) / 5)
    assert got.t == pytest.approx(ref.statistic) and got.p_value == pytest.approx(ref.pvalue)
    assert got.beyond_std(0.5) and not got.beyond_std(2.0)


def test_degenerate_inputs():
    one = paired_difference([2.0], [1.0])
    assert one.mean == 1.0 and math.isnan(one.p_value) and not one.beyond_std(0)
    same = paired_difference([2.0, 3.0], [1.0, 2.0])
    assert same.std == 0.0 and same.p_value == 0.0 and same.beyond_std(2)
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([1.0, 2.0], [1.0])


def test_retrieval_concentration_tells_a_popularity_collapse_from_query_specific_scores():
    import torch

    from listwise_ranking.stats import retrieval_concentration

    g = torch.Generator().manual_seed(0)
    specific = torch.randn(300, 100, generator=g)  # every query orders candidates differently
    popularity = torch.linspace(0, 3, 100)  # the same order for every query
    collapsed = specific * 0.1 + popularity
    a, b = retrieval_concentration(specific), retrieval_concentration(collapsed)
    assert a["popularity_share"] < 0.05 < 0.9 < b["popularity_share"]
    assert a["top10_share"] < 0.2 and b["top10_share"] > 0.9
    assert a["never_retrieved"] < 0.1 and b["never_retrieved"] > 0.8


def test_demo_seed_comparison_reports_a_paired_test_per_metric():
    pytest.importorskip("lavis_listwise", reason="the demo is part of the LAVIS plugin")
    from scipy.stats import ttest_rel

    from lavis_listwise.demo import METRICS, seed_comparison

    pairwise = {s: {k: 10.0 + s + i for i, k in enumerate(METRICS)} for s in range(4)}
    listwise = {s: {k: v + (1.0 if s % 2 else 0.5) for k, v in pairwise[s].items()} for s in range(4)}
    got = seed_comparison({s: {"pairwise": pairwise[s], "listwise": listwise[s]} for s in range(4)})
    assert set(got) == set(METRICS)
    for k in METRICS:
        assert got[k].mean == pytest.approx(0.75) and got[k].n == 4
        ref = ttest_rel([listwise[s][k] for s in range(4)], [pairwise[s][k] for s in range(4)])
        assert got[k].p_value == pytest.approx(ref.pvalue)


def test_as_dict_is_strict_json():
    import json

    for diff in (paired_difference([2.0], [1.0]), paired_difference([2.0, 3.0], [1.0, 2.0])):
        json.dumps(diff.as_dict(), allow_nan=False)
