"""Smooth-NDCG forward+backward: the published-style broadcast formula vs lavis-listwise's kernels.

Implementations: ``published`` (every ``B x B x B`` tensor materialised, as the published code does),
``chunked`` (``kernel="torch"``: tiled closed-form backward), ``compiled`` (``kernel="compiled"``:
fused ``torch.compile`` reductions) and, on CUDA, ``triton`` (``kernel="triton"``: hand-written
Triton kernels). Each (implementation, B, device) runs in a fresh process on
identical inputs (Q = N = B, seed 0), after warm-up calls on two small shapes (which also compile):
extra peak memory is measured on the first full-size call (CPU: growth of the process's peak RSS;
CUDA: growth of ``max_memory_allocated``), time is the median of the following calls.

    python benchmarks/bench_smooth_ndcg.py --device cpu                       # B = 128 .. 1024
    python benchmarks/bench_smooth_ndcg.py --device cuda --sizes 256 1024 4096 8192
    python benchmarks/bench_smooth_ndcg.py --device cpu --relevance-topk 8   # plus the sparse approximation
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

IMPLS = ("published", "chunked", "compiled", "triton")
CUBES_ALIVE = 12  # Q*N*N tensors the broadcast formula keeps alive through backward (measured ~10-11)


def _worker(impl: str, size: int, device: str, reps: int, topk: int) -> dict:
    import torch

    from listwise_ranking.losses import smooth_ndcg_loss
    from listwise_ranking.losses.reference import smooth_ndcg_loss_reference

    def step(scores, rel):
        if impl == "published":
            loss = smooth_ndcg_loss_reference(scores, rel, 0.01).mean()
        else:
            kernel = impl if impl in ("compiled", "triton") else "torch"
            loss = smooth_ndcg_loss(
                scores, rel, 0.01, kernel=kernel, relevance_topk=topk if impl == "topk" else None
            )
        loss.backward()
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(size, size, generator=g) * 0.1).to(device).requires_grad_()
    rel = torch.rand(size, size, generator=g).to(device)
    for w in (8, 12):  # kernels, allocator and (dynamic-shape) compilation warm-up
        step(scores[:w, :w].detach().requires_grad_(), rel[:w, :w])
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    loss = step(scores, rel)
    sync()
    first = time.perf_counter() - t0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(reps):
        scores.grad = None
        t0 = time.perf_counter()
        step(scores, rel)
        sync()
        times.append(time.perf_counter() - t0)
    # A kernel that failed falls back to the chunked path with a warning, which the parent hides:
    # report the failure instead of chunked timings under the kernel's name.
    from listwise_ranking.losses.kernels import get_kernel, list_kernels

    if impl in list_kernels() and not get_kernel(impl).available(torch.device(device)):
        raise SystemExit(f"the {impl} kernel failed on {device} and fell back to the chunked path")
    return {"ms": 1e3 * statistics.median(times or [first]), "mib": peak / 2**20, "loss": float(loss)}


def _available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def _run(impl: str, size: int, device: str, reps: int, topk: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, str(size), device, str(reps), str(topk)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        return {
            "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--relevance-topk", type=int, default=0, help="also time the sparse approximation with this K"
    )
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, size, device, reps, topk = args.worker
        print(json.dumps(_worker(impl, int(size), device, int(reps), int(topk))))
        return

    import torch

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else "")
    )
    impls = IMPLS + (("topk",) if args.relevance_topk else ())
    head = "| device | B | " + " | ".join(f"{i} ms | {i} MiB" for i in impls)
    head += " | chunked vs published | compiled vs chunked | triton vs compiled |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for device in devices:
        for size in args.sizes:
            rows = {}
            for impl in impls:
                need = CUBES_ALIVE * size**3 * 4 if impl == "published" else 0
                if need > 0.8 * _available_bytes(device):
                    rows[impl] = {"error": f"skipped (~{need / 2**30:.0f} GiB)"}
                elif impl == "triton" and device != "cuda":
                    rows[impl] = {"error": "CUDA only"}
                else:
                    rows[impl] = _run(impl, size, device, args.reps, args.relevance_topk)
            ok = {k: v for k, v in rows.items() if "error" not in v and k != "topk"}  # topk: another loss
            losses = [v["loss"] for v in ok.values()]
            if losses and max(losses) - min(losses) > 1e-4:
                raise SystemExit(f"loss mismatch at B={size}: {ok}")
            cells = []
            for impl in impls:
                r = rows[impl]
                cells += [r["error"], ""] if "error" in r else [f"{r['ms']:.1f}", f"{r['mib']:.1f}"]
            cells += [_ratio(ok, "published", "chunked"), _ratio(ok, "chunked", "compiled")]
            cells += [_ratio(ok, "compiled", "triton")]
            print(f"| {device} | {size} | " + " | ".join(cells) + " |", flush=True)


def _ratio(ok: dict, slow: str, fast: str) -> str:
    if slow not in ok or fast not in ok:
        return ""
    speed = ok[slow]["ms"] / ok[fast]["ms"]
    memory = ok[slow]["mib"] / max(ok[fast]["mib"], 1.0)
    return f"{speed:.1f}x faster, {memory:.0f}x less memory"


if __name__ == "__main__":
    main()
