"""Retrieval evaluation time: LAVIS's ``compute_sim_matrix`` against the fast ITM re-ranking.

Same model (random weights, no download), same split of real JPEG files (generated), same
``k_test``, in one run; prints both times, their ratio and the largest score difference.

    python benchmarks/bench_eval.py                                        # CPU, small config
    python benchmarks/bench_eval.py --config base --device cuda --image-size 384 --images 300 --k-test 64
    python benchmarks/bench_eval.py --config base --device cuda --image-size 384 --amp   # ours in bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import build  # noqa: E402  (same model sizes as the training-step benchmark)


def eval_loader(root: Path, image_size: int, batch: int):
    from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageEvalProcessor
    from torch.utils.data import DataLoader

    from lavis_listwise.datasets.retrieval_listwise import ListwiseRetrievalEvalDataset

    dataset = ListwiseRetrievalEvalDataset(
        BlipImageEvalProcessor(image_size=image_size),
        BlipCaptionProcessor(),
        str(root),
        [str(root / "annotations" / "test.json")],
    )
    return DataLoader(dataset, batch_size=batch, num_workers=4 if torch.cuda.is_available() else 0)


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["tiny", "small", "base"], default="small")
    parser.add_argument("--archs", nargs="+", default=["blip_retrieval_listwise", "albef_retrieval_listwise"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=100, help="images in the split (5 captions each)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--k-test", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32, help="evaluation loader batch size")
    parser.add_argument("--max-pairs", type=int, default=None, help="pairs per ITM forward (default: auto)")
    parser.add_argument("--amp", action="store_true", help="run ours under bf16 autocast (CUDA)")
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse/generate the split here")
    args = parser.parse_args()

    from lavis.models.albef_models import compute_sim_matrix

    from lavis_listwise.demo.synthetic import ensure_synthetic_dataset
    from lavis_listwise.evaluation import DEFAULT_MAX_PAIRS, compute_sim_matrix_fast

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench_eval_"))
    root = ensure_synthetic_dataset(
        data_dir, n_train=1, n_val=1, n_test=args.images, image_size=args.image_size, seed=0
    )
    loader = eval_loader(root, args.image_size, args.batch)
    max_pairs = args.max_pairs or DEFAULT_MAX_PAIRS[torch.device(args.device).type]
    n_pairs = args.k_test * (len(loader.dataset.image) + len(loader.dataset.text))
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads")
    print(
        f"config {args.config}, {args.image_size} px, {len(loader.dataset.image)} images / "
        f"{len(loader.dataset.text)} captions, k_test {args.k_test} ({n_pairs} ITM scorings in LAVIS), "
        f"ours: {max_pairs} pairs per forward{', bf16 autocast' if args.amp else ', fp32'}"
    )
    print("| model | LAVIS s | ours s | speed-up | max abs score diff |")
    print("|---|---|---|---|---|")
    for arch in args.archs:
        model = build(arch, args.config, args.image_size, args.batch).to(args.device).eval()
        with torch.no_grad():
            theirs, t_lavis = timed(
                partial(compute_sim_matrix, model, loader, k_test=args.k_test), args.device
            )
        run = partial(
            compute_sim_matrix_fast,
            model,
            loader,
            args.k_test,
            max_pairs=max_pairs,
            amp=args.amp,
            progress=False,
        )
        run()  # warm-up (allocator, kernels) so the timed run is steady state
        ours, t_ours = timed(run, args.device)
        diff = max(float(abs(a - b).max()) for a, b in zip(ours, theirs))
        print(f"| {arch} | {t_lavis:.2f} | {t_ours:.2f} | {t_lavis / t_ours:.1f}x | {diff:.2e} |", flush=True)


if __name__ == "__main__":
    main()
