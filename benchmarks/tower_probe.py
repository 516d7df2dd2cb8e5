"""Can the demo model's towers learn the demo's data, alone and contrastively? (validation split only)

Three probes on the encoders of the model a demo YAML builds (the same weights at initialisation as
the demo's run), trained with AdamW at ``--lr`` on the demo's training split and scored on its
validation split every 50 steps:

* ``image``: the ViT's pooled output -> a linear head predicting which colours appear in the scene
  (objects and background, multi-label, binary cross-entropy). Reports label accuracy next to the
  accuracy of predicting "absent" everywhere.
* ``text``: the text encoder's pooled output -> which object colours a caption names.
* ``contrastive``: both towers with LAVIS's ``vision_proj``/``text_proj``, a CLIP-style symmetric
  in-batch loss with same-image targets at a fixed temperature ``--temp`` (no queue, no momentum
  encoder, no ITM): text->image R@1/R@10 over the validation images, and the spread of the similarity
  over captions (``caption_spread``) and over images (``image_spread``); 0 means one tower's
  features no longer depend on its input.

``--pool cls`` uses token 0 as BLIP's ITC does; ``--pool mean`` averages the patch tokens / the
caption's tokens.

    .venv/bin/python benchmarks/tower_probe.py --probe image
    .venv/bin/python benchmarks/tower_probe.py --probe contrastive --temp 0.07 --steps 300
    .venv/bin/python benchmarks/tower_probe.py --cfg-path my_demo_small.yaml --probe contrastive --pool mean
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_recipe import DEMO_YAML, build_validation_run  # noqa: E402


def load_split(root: Path, scenes: list[dict], processor) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Images ``[N, 3, H, W]`` (eval processor), captions ``[T]`` and each caption's image ``[T]``."""
    images, captions, owner = [], [], []
    for i, scene in enumerate(scenes):
        images.append(processor(Image.open(root / scene["image"]).convert("RGB")))
        for caption in scene["captions"]:
            captions.append(caption["caption"].lower())
            owner.append(i)
    return torch.stack(images), captions, torch.tensor(owner)


def colour_labels(scenes: list[dict], colours: list[str], per: str) -> torch.Tensor:
    """Multi-hot colour labels: per scene (objects, then background) or per caption (objects named)."""
    rows = []
    for scene in scenes:
        if per == "scene":
            row = torch.zeros(2 * len(colours))
            for obj in scene["objects"]:
                row[colours.index(obj["colour"])] = 1
            row[len(colours) + colours.index(scene["background"]["colour"])] = 1
            rows.append(row)
        else:
            for caption in scene["captions"]:
                row = torch.zeros(len(colours))
                for obj in caption["objects"]:
                    row[colours.index(obj["colour"])] = 1
                rows.append(row)
    return torch.stack(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cfg-path", default=str(DEMO_YAML))
    parser.add_argument("--probe", choices=["image", "text", "contrastive"], required=True)
    parser.add_argument("--pool", choices=["cls", "mean"], default="cls")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temp", type=float, default=0.07, help="contrastive probe's fixed temperature")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--options", nargs="*", default=[], help="YAML overrides, as for lavis-listwise train"
    )
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    runner, root = build_validation_run(args.cfg_path, ["model.listwise.weight=0", *args.options])
    model = runner.model
    scenes = json.loads((root / "scenes.json").read_text())
    processor = runner.datasets["retrieval_listwise_json"]["val"].vis_processor
    vit, text_encoder = model.visual_encoder, model.text_encoder

    def image_features(x: torch.Tensor) -> torch.Tensor:
        h = vit(x)
        return h[:, 0] if args.pool == "cls" else h[:, 1:].mean(1)

    def text_features(captions: list[str]) -> torch.Tensor:
        tokens = model.tokenizer(
            captions, padding="max_length", truncation=True, max_length=model.max_txt_len, return_tensors="pt"
        )
        h = text_encoder.forward_text(tokens).last_hidden_state
        if args.pool == "cls":
            return h[:, 0]
        mask = tokens.attention_mask.unsqueeze(-1).float()
        return (h * mask).sum(1) / mask.sum(1)

    train_images, train_captions, train_owner = load_split(root, scenes["train"], processor)
    val_images, val_captions, val_owner = load_split(root, scenes["val"], processor)
    colours = sorted({o["colour"] for s in scenes["train"] for o in s["objects"]})
    colours += sorted({s["background"]["colour"] for s in scenes["train"]} - set(colours))
    generator = torch.Generator().manual_seed(0)

    if args.probe == "contrastive":
        modules = [vit, text_encoder, model.vision_proj, model.text_proj]
    else:
        per = "scene" if args.probe == "image" else "caption"
        labels = {
            "train": colour_labels(scenes["train"], colours, per),
            "val": colour_labels(scenes["val"], colours, per),
        }
        tower = vit if args.probe == "image" else text_encoder
        width = vit.embed_dim if args.probe == "image" else text_encoder.config.hidden_size
        head = torch.nn.Linear(width, labels["train"].shape[1])
        modules = [tower, head]
    optimizer = torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=args.lr, weight_decay=0.05)

    def evaluate() -> dict:
        for m in modules:
            m.eval()
        with torch.no_grad():
            if args.probe == "contrastive":
                img = F.normalize(model.vision_proj(image_features(val_images)), dim=-1)
                txt = torch.cat(
                    [
                        F.normalize(model.text_proj(text_features(val_captions[k : k + 256])), dim=-1)
                        for k in range(0, len(val_captions), 256)
                    ]
                )
                sims = txt @ img.t()  # [T, N]
                rank = (sims > sims.gather(1, val_owner.view(-1, 1))).sum(1)
                out = {
                    "t2i_r1": 100 * (rank < 1).float().mean().item(),
                    "t2i_r10": 100 * (rank < 10).float().mean().item(),
                    "caption_spread": sims.std(0).mean().item(),
                    "image_spread": sims.std(1).mean().item(),
                }
            else:
                feats = image_features(val_images) if args.probe == "image" else text_features(val_captions)
                predicted = (head(feats) > 0).float()
                out = {
                    "accuracy": (predicted == labels["val"]).float().mean().item(),
                    "all_absent_accuracy": (labels["val"] == 0).float().mean().item(),
                }
        for m in modules:
            m.train()
        return out

    rows, start = [], time.time()
    for step in range(args.steps + 1):
        if step % 50 == 0:
            row = {"step": step, **{k: round(v, 4) for k, v in evaluate().items()}}
            row["wall_s"] = round(time.time() - start, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if step == args.steps:
            break
        if args.probe == "image":
            idx = torch.randint(0, len(train_images), (args.batch_size,), generator=generator)
            feats = image_features(train_images[idx])
            loss = F.binary_cross_entropy_with_logits(head(feats), labels["train"][idx])
        elif args.probe == "text":
            idx = torch.randint(0, len(train_captions), (args.batch_size,), generator=generator)
            feats = text_features([train_captions[i] for i in idx])
            loss = F.binary_cross_entropy_with_logits(head(feats), labels["train"][idx])
        else:
            idx = torch.randint(0, len(train_captions), (args.batch_size,), generator=generator)
            owner = train_owner[idx]
            img = F.normalize(model.vision_proj(image_features(train_images[owner])), dim=-1)
            txt = F.normalize(model.text_proj(text_features([train_captions[i] for i in idx])), dim=-1)
            positive = (owner.view(-1, 1) == owner.view(1, -1)).float()
            targets = positive / positive.sum(1, keepdim=True)
            logits = img @ txt.t() / args.temp
            loss = (
                -(
                    (F.log_softmax(logits, 1) * targets).sum(1).mean()
                    + (F.log_softmax(logits.t(), 1) * targets).sum(1).mean()
                )
                / 2
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
