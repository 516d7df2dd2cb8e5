"""The Triton kernels of Smooth-NDCG against the chunked path, through Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be set before Triton decorates the kernels, so the checks run in a
child process that imports the loss with it set.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (it ships with CUDA builds of torch)")

CHECKS = textwrap.dedent(
    """
    import torch
    from kernel_parity import assert_internals_match_chunked, assert_kernel_matches_chunked
    from lavis_listwise.losses import smooth_ndcg_loss
    from lavis_listwise.losses.smooth_ndcg import resolve_kernel
    from lavis_listwise.losses.smooth_ndcg_triton import triton_rank_backward, triton_ranks

    assert resolve_kernel("triton", torch.device("cpu")) == "triton"  # the interpreter runs on CPU

    # internals, fp32: ranks and the closed-form gradient, factored and direct rows, ragged N
    assert_internals_match_chunked(triton_ranks, triton_rank_backward)

    # the loss and its gradient, fp32 and bf16 inputs
    for dtype in (torch.float32, torch.bfloat16):
        for q, n in [(7, 33), (16, 130), (3, 1)]:
            assert_kernel_matches_chunked("triton", dtype, q, n)

    # fp64 inputs stay on the chunked path (the kernels are fp32)
    s = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    r = torch.rand(4, 10, dtype=torch.float64)
    expected = smooth_ndcg_loss(s, r, kernel="torch")
    torch.testing.assert_close(smooth_ndcg_loss(s, r, kernel="triton"), expected)
    print("triton checks passed")
    """
)


def test_triton_kernels_match_chunked_path_in_the_interpreter():
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1", PYTHONPATH=path)
    run = subprocess.run([sys.executable, "-c", CHECKS], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "triton checks passed" in run.stdout


def test_triton_kernel_needs_cuda_without_the_interpreter():
    from lavis_listwise.losses import smooth_ndcg_loss, smooth_ndcg_triton

    if smooth_ndcg_triton._INTERPRET:
        pytest.skip("this process runs under TRITON_INTERPRET=1")
    with pytest.raises(ValueError, match="needs CUDA"):
        smooth_ndcg_loss(torch.randn(3, 4), torch.rand(3, 4), kernel="triton")
