"""Every fast Smooth-NDCG kernel in the registry against the chunked path, on CPU (timm style: the
tests are parametrised over ``list_kernels()``, so a newly registered kernel is tested as it lands).

A kernel that does not run on CPU in this process but names a ``cpu_env`` (Triton:
``TRITON_INTERPRET=1``, which must be set before Triton decorates the kernels) is checked in a
child process started with it.
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch
from kernel_parity import run_kernel_checks

from listwise_ranking.losses import smooth_ndcg_loss
from listwise_ranking.losses.kernels import KERNELS, get_kernel, list_kernels, resolve_kernel
from listwise_ranking.losses.kernels import compiled as compiled_kernel

CPU = torch.device("cpu")
#: What a kernel needs on this machine to be tested at all (the kernel registry cannot know it).
NEEDS = {
    "compiled": (shutil.which("g++") or shutil.which("c++"), "Inductor's CPU backend needs a C++ compiler"),
    "triton": (
        importlib.util.find_spec("triton"),
        "Triton is not installed (it ships with CUDA builds of torch)",
    ),
}


def _skip_unless_testable(name: str) -> None:
    present, reason = NEEDS.get(name, (True, ""))
    if not present:
        pytest.skip(reason)


def test_kernel_names_are_the_registry():
    assert KERNELS == ("auto", "torch", *list_kernels())
    assert {"compiled", "triton"} <= set(list_kernels())
    with pytest.raises(KeyError, match="unknown Smooth-NDCG fast kernel .torch.; registered: .*compiled"):
        get_kernel("torch")
    with pytest.raises(ValueError, match="kernel must be one of"):
        smooth_ndcg_loss(torch.randn(2, 3), torch.rand(2, 3), kernel="cuda")


def test_every_kernel_name_is_a_model_listwise_kernel_value():
    ListwiseConfig = pytest.importorskip("lavis_listwise.config", reason="the LAVIS plugin").ListwiseConfig
    for name in KERNELS:
        assert ListwiseConfig.from_cfg({"kernel": name}).build_loss().kernel == name


@pytest.mark.parametrize("name", list_kernels())
def test_kernel_matches_chunked_path(name):
    _skip_unless_testable(name)
    kernel = get_kernel(name)
    if kernel.available(CPU):
        run_kernel_checks(name)
        return
    if not kernel.cpu_env:
        pytest.skip(f"the {name} kernel does not run on CPU")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, **kernel.cpu_env, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    code = f"from kernel_parity import run_kernel_checks; run_kernel_checks({name!r}); print('passed')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().endswith("passed")


@pytest.mark.parametrize("name", list_kernels())
def test_kernel_resolution_on_cpu(name):
    kernel = get_kernel(name)
    assert resolve_kernel("auto", CPU) == "torch"
    assert resolve_kernel("auto", torch.device("cuda")) == "compiled"
    if kernel.available(CPU):
        assert resolve_kernel(name, CPU) == name
    elif kernel.needs_cuda:
        with pytest.raises(ValueError, match="needs CUDA"):
            smooth_ndcg_loss(torch.randn(3, 4), torch.rand(3, 4), kernel=name)
    else:
        assert resolve_kernel(name, CPU) == "torch"


def test_compiled_kernel_does_not_recompile_across_batch_sizes():
    _skip_unless_testable("compiled")
    import torch._dynamo

    torch._dynamo.reset()
    compiled_kernel._COMPILED.clear()
    counts = []
    for q, n in [(8, 40), (12, 64), (5, 17), (30, 100)]:
        s = (torch.randn(q, n) * 0.05).requires_grad_()
        smooth_ndcg_loss(s, torch.rand(q, n), kernel="compiled").backward()
        counts.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    # the first two shapes may compile (static, then dynamic); later shapes reuse the dynamic graph
    assert counts[-1] == counts[1], counts


def test_compiled_kernel_falls_back_once_with_a_warning(monkeypatch):
    def broken(*args):
        raise RuntimeError("no backend")

    monkeypatch.setattr(compiled_kernel, "_get", lambda name, fn: broken)
    monkeypatch.setattr(compiled_kernel, "_FAILED", set())
    s = (torch.randn(4, 9) * 0.05).requires_grad_()
    r = torch.rand(4, 9)
    with pytest.warns(RuntimeWarning, match="chunked PyTorch path"):
        loss = smooth_ndcg_loss(s, r, kernel="compiled")
    torch.testing.assert_close(loss, smooth_ndcg_loss(s, r, kernel="torch"))
    assert resolve_kernel("compiled", CPU) == "torch"  # no second attempt
