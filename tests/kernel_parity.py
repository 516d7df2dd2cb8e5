"""Checks shared by the compiled and Triton kernel tests: a kernel's internals, loss and gradient
against the chunked path (the Triton ones run in a child process under TRITON_INTERPRET=1)."""

import torch

from listwise_ranking.losses import smooth_ndcg_loss


def assert_kernel_matches_chunked(kernel: str, dtype: torch.dtype, q: int, n: int) -> None:
    """Loss to 1e-5 relative; gradient to 1e-5 of its scale in fp32, one bf16 ulp for bf16 inputs
    (both compute in fp32 and round the gradient to the input dtype on the way out)."""
    g = torch.Generator().manual_seed(q * n)
    scores = (torch.randn(q, n, generator=g) * 0.05).to(dtype)
    rel = torch.rand(q, n, generator=g)
    rel[0] = 0
    scores[1::3] *= 40  # rows too wide for the exponent factors take the direct path
    a, b = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    w = torch.randn(q, generator=g)
    la = smooth_ndcg_loss(a, rel, 0.01, "none", kernel="torch")
    lb = smooth_ndcg_loss(b, rel, 0.01, "none", kernel=kernel)
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    (la * w).sum().backward()
    (lb * w).sum().backward()
    scale = a.grad.float().abs().max().item()
    rtol = 1e-5 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(b.grad.float(), a.grad.float(), rtol=rtol, atol=rtol * scale)


def assert_internals_match_chunked(ranks_fn, rank_backward_fn) -> None:
    """fp32 ranks and closed-form gradient of a kernel against the chunked path, on rows that factor,
    rows at the factor limit (products overflow), rows too wide to factor, and ragged N (padding
    columns must count 0)."""
    from listwise_ranking.losses.chunked import rank_backward, smoothed_ranks
    from listwise_ranking.losses.kernels.centred_exp import CENTRED_EXP_LIMIT

    g = torch.Generator().manual_seed(3)
    limit = CENTRED_EXP_LIMIT[torch.float32]
    for q, n, wide in [
        (9, 200, "mixed"),
        (2, 1, "none"),
        (5, 64, "all"),
        (3, 129, "mixed"),
        (4, 300, "none"),
    ]:
        x = (torch.randn(q, n, generator=g) * 5).bfloat16().float()
        if wide in ("mixed", "all"):
            rows = slice(1, None, 2) if wide == "mixed" else slice(None)
            x[rows] = torch.empty_like(x[rows]).uniform_(-1.3 * limit, 1.3 * limit, generator=g)
        if n > 1:
            x[0, 0], x[0, -1] = -limit, limit  # exactly at the limit: factors e^+-80, products overflow
        grad_rank = torch.randn(q, n, generator=g)
        torch.testing.assert_close(ranks_fn(x), smoothed_ranks(x), rtol=1e-5, atol=1e-5)
        ours, ref = rank_backward_fn(x, grad_rank), rank_backward(x, grad_rank, 64, 1 << 16)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * max(ref.abs().max().item(), 1e-30))


def run_kernel_checks(name: str) -> None:
    """Every check of one registered fast kernel on CPU: it resolves to itself, its internals, loss
    and gradient match the chunked path (fp32 and bf16 inputs, factored and direct rows), it did
    not fall back, and dtypes it does not take (fp64 for Triton) give the chunked path's result."""
    from listwise_ranking.losses.kernels import get_kernel, resolve_kernel

    kernel, cpu = get_kernel(name), torch.device("cpu")
    assert resolve_kernel(name, cpu) == name, f"{name} does not run on CPU here"
    assert_internals_match_chunked(kernel.ranks, kernel.rank_backward)
    for dtype in (torch.float32, torch.bfloat16):
        for q, n in [(7, 33), (16, 130), (3, 1)]:
            assert_kernel_matches_chunked(name, dtype, q, n)
    assert kernel.available(cpu), f"the {name} kernel failed on CPU and fell back to the chunked path"
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(4, 10, generator=g, dtype=torch.float64) * 0.05).requires_grad_()
    r = torch.rand(4, 10, generator=g, dtype=torch.float64)
    ours, chunked = smooth_ndcg_loss(s, r, kernel=name), smooth_ndcg_loss(s, r, kernel="torch")
    if torch.float64 in kernel.dtypes:
        torch.testing.assert_close(ours, chunked, rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(ours, chunked), f"{name}: fp64 inputs must take the chunked path"
