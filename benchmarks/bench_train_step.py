"""Training-step time of each ``*_listwise`` model against LAVIS's stock model, same batch and seed.

One step = forward, backward and AdamW update. Both models hold the same weights (the stock one is
LAVIS's own ``BlipRetrieval``/``AlbefRetrieval``, built offline by ``stock_twin``); steps alternate
between them after warm-up, and the median of each is reported with their ratio.

CLIP and BLIP-2 (``clip_retrieval_listwise``, ``blip2_retrieval_listwise``) have no LAVIS training
step to compare with (LAVIS's CLIP loss has batch-position targets, ``Blip2Qformer.forward`` needs a
process group), so their baseline is the same model with ``model.listwise.weight: 0``: for BLIP-2
that is ``Blip2Qformer.forward``'s losses bit for bit (tests/test_blip2_retrieval.py). They run at
their ``tiny`` size (``--config`` and ``--image-size`` apply to BLIP and ALBEF only).

    python benchmarks/bench_train_step.py                                  # CPU, small config
    python benchmarks/bench_train_step.py --config base --device cuda --batch 32 --image-size 384
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

SIZES = {
    # ViT width/depth/heads/patch, BERT width/depth/heads/ffn
    "tiny": dict(vit=(64, 2, 4, 8), bert=(64, 2, 4, 128)),
    "small": dict(vit=(192, 4, 3, 16), bert=(192, 4, 3, 768)),
}


def build(arch: str, config: str, image_size: int, batch: int):
    from lavis.common.registry import registry

    import lavis_listwise  # noqa: F401

    cls = registry.get_model_class(arch)
    cfg = OmegaConf.load(cls.default_config_path("tiny" if config != "base" else "coco")).model
    cfg.listwise.weight = 1.0
    cfg.image_size = image_size
    cfg.queue_size = 4 * batch
    if config == "base":  # real base-size architecture, random weights (no download)
        cfg.load_finetuned, cfg.pretrained = False, None
        cfg.vit_grad_ckpt = False
    else:
        (vw, vd, vh, vp), (tw, td, th, tf) = SIZES[config]["vit"], SIZES[config]["bert"]
        cfg.update(vit_embed_dim=vw, vit_depth=vd, vit_num_heads=vh, vit_patch_size=vp)
        cfg.text_config.update(
            hidden_size=tw, num_hidden_layers=td, num_attention_heads=th, intermediate_size=tf
        )
    torch.manual_seed(0)
    return cls.from_config(cfg)


#: Archs timed against themselves at ``weight: 0`` (no stock LAVIS training step), at their tiny size.
SELF_BASELINE_ARCHS = ("clip_retrieval_listwise", "blip2_retrieval_listwise")


def build_tiny_with_pairwise_twin(arch: str):
    """``arch``'s tiny model at ``weight: 1``, a copy of it at ``weight: 0``, and its image size."""
    import copy
    import dataclasses

    from lavis.common.registry import registry

    import lavis_listwise  # noqa: F401

    cls = registry.get_model_class(arch)
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.listwise.weight = 1.0
    torch.manual_seed(0)
    model = cls.from_config(cfg)
    pairwise = copy.deepcopy(model)
    pairwise.listwise_cfg = dataclasses.replace(model.listwise_cfg, weight=0.0)
    image_size = cfg.model_config.vision_cfg.image_size if "model_config" in cfg else cfg.image_size
    return model, pairwise, int(image_size)


def make_batch(batch: int, image_size: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    per_image = 2
    ids = torch.arange(batch // per_image).repeat_interleave(per_image)
    caps = torch.arange(len(ids) * 5).view(len(ids), 5)
    words = "a red blue green small large circle square star on the left right top of image".split()
    texts = [
        " ".join(words[j] for j in torch.randint(0, len(words), (12,), generator=g).tolist()) for _ in ids
    ]
    return {
        "image": torch.randn(batch, 3, image_size, image_size, generator=g).to(device),
        "text_input": texts,
        "image_id": ids.to(device),
        "caption_index": caps[ids, torch.arange(batch) % 5].to(device),
        "image_caption_index": caps[ids].to(device),
        "epoch": 0,
        "iters": 1,
        "num_iters_per_epoch": 100,
    }


def time_steps(model, samples, steps: int, device: str) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.manual_seed(0)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(samples)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["tiny", "small", "base"], default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model (after 2 warm-up steps)")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from stock_twins import stock_twin  # a test helper: LAVIS's own model with the same weights

    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads")
    print(f"config {args.config}, batch {args.batch}, {args.image_size} px, median of {args.steps} steps")
    print("| model | stock step ms | listwise step ms | ratio |")
    print("|---|---|---|---|")
    for arch in ("blip_retrieval_listwise", "albef_retrieval_listwise", *SELF_BASELINE_ARCHS):
        g = torch.Generator().manual_seed(1)
        table = F.normalize(torch.randn(args.batch * 5, 384, generator=g), dim=-1)
        if arch in SELF_BASELINE_ARCHS:
            model, stock, image_size = build_tiny_with_pairwise_twin(arch)
            model, stock = model.to(args.device).train(), stock.to(args.device).train()
            model.set_caption_embeddings(table)
            arch = f"{arch} (tiny; baseline: weight 0)"
        else:
            model = build(arch, args.config, args.image_size, args.batch).to(args.device).train()
            model.set_caption_embeddings(table)
            stock = stock_twin(model).train()
            image_size = args.image_size
        samples = make_batch(args.batch, image_size, args.device)
        for m in (stock, model):
            time_steps(m, samples, 2, args.device)
        stock_t, ours_t = [], []
        for _ in range(args.steps):  # alternate, so drift in machine load hits both alike
            stock_t += time_steps(stock, samples, 1, args.device)
            ours_t += time_steps(model, samples, 1, args.device)
        s, o = 1e3 * statistics.median(stock_t), 1e3 * statistics.median(ours_t)
        print(f"| {arch} | {s:.1f} | {o:.1f} | {o / s:.3f} |", flush=True)


if __name__ == "__main__":
    main()
