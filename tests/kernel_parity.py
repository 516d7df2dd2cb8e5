"""One check shared by the compiled and Triton kernel tests: a kernel's loss and gradient against
the chunked path (the Triton one runs it in a child process under TRITON_INTERPRET=1)."""

import torch

from lavis_listwise.losses import smooth_ndcg_loss


def assert_kernel_matches_chunked(kernel: str, dtype: torch.dtype, q: int, n: int) -> None:
    """Loss to 1e-5 relative; gradient to 1e-5 of its scale in fp32, one bf16 ulp for bf16 inputs
    (both compute in fp32 and round the gradient to the input dtype on the way out)."""
    g = torch.Generator().manual_seed(q * n)
    scores = (torch.randn(q, n, generator=g) * 0.05).to(dtype)
    rel = torch.rand(q, n, generator=g)
    rel[0] = 0
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
