"""The ``torch.compile`` path of Smooth-NDCG against the chunked path, on CPU (Inductor's C++ backend)."""

import shutil

import pytest
import torch
from kernel_parity import assert_internals_match_chunked, assert_kernel_matches_chunked

from lavis_listwise.losses import smooth_ndcg_compiled as compiled
from lavis_listwise.losses import smooth_ndcg_loss
from lavis_listwise.losses.smooth_ndcg import resolve_kernel

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="Inductor's CPU backend needs a C++ compiler",
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q,n", [(7, 33), (16, 130), (3, 1)])
def test_compiled_matches_chunked(dtype, q, n):
    assert_kernel_matches_chunked("compiled", dtype, q, n)
    assert compiled.compiled_available(torch.device("cpu")), "compilation failed on CPU"


def test_compiled_internals_match_in_fp32():
    assert_internals_match_chunked(compiled.compiled_ranks, compiled.compiled_rank_backward)


def test_no_recompilation_across_batch_sizes():
    import torch._dynamo

    torch._dynamo.reset()
    compiled._COMPILED.clear()
    counts = []
    for q, n in [(8, 40), (12, 64), (5, 17), (30, 100)]:
        s = (torch.randn(q, n) * 0.05).requires_grad_()
        smooth_ndcg_loss(s, torch.rand(q, n), kernel="compiled").backward()
        counts.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    # the first two shapes may compile (static, then dynamic); later shapes reuse the dynamic graph
    assert counts[-1] == counts[1], counts


def test_kernel_resolution_and_fallback(monkeypatch):
    assert resolve_kernel("auto", torch.device("cpu")) == "torch"
    assert resolve_kernel("auto", torch.device("cuda")) == "compiled"
    with pytest.raises(ValueError, match="kernel"):
        resolve_kernel("triton", torch.device("cpu"))

    def broken(*args):
        raise RuntimeError("no backend")

    monkeypatch.setattr(compiled, "_get", lambda name, fn: broken)
    monkeypatch.setattr(compiled, "_FAILED", set())
    s = (torch.randn(4, 9) * 0.05).requires_grad_()
    r = torch.rand(4, 9)
    with pytest.warns(RuntimeWarning, match="falling back|chunked PyTorch path"):
        loss = smooth_ndcg_loss(s, r, kernel="compiled")
    torch.testing.assert_close(loss, smooth_ndcg_loss(s, r, kernel="torch"))
    assert resolve_kernel("compiled", torch.device("cpu")) == "torch"  # no second attempt
