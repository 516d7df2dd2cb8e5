"""Agreement of RSC relevance options with the synthetic data's ground truth, on the demo's data.

No training: the demo's dataset (``projects/demo/demo.yaml``'s ``demo.data``, generated once with
``ensure_synthetic_dataset`` where the demo keeps it) is read and the captions of one split are
processed as LAVIS's ``blip_caption`` does. They are embedded with the configured sentence encoder
(the bundled all-MiniLM-L6-v2 by default, through the caption-embedding cache). RSC is then
computed with each relevance option exactly as the task computes it for an evaluation split
(``rsc_relevance_from_table`` with the option's ``floor`` / ``sharpen``), and compared with the
split's ground-truth file by :func:`lavis_listwise.evaluation.relevance_agreement`. That gives the
mean per-row Spearman (image->text rows and text->image columns, the image's own captions left
out), NDCG@10 of the relevance used as a ranker, and the gain ``2^r - 1`` other images' captions
receive. The ``oracle`` row is the ground truth used as the training relevance
(``model.listwise.relevance.relevance_file: <data>/relevance/train.npy``), measured the same way.

Settings are chosen on the validation split (the default); the test split is refused so it cannot
be used for choosing. ``--split train`` measures the training captions themselves.

    .venv/bin/python benchmarks/relevance_agreement.py                       # val split, default grid
    .venv/bin/python benchmarks/relevance_agreement.py --floors 0.5 0.7 --sharpens 1 2 --json out.json
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from lavis_listwise.config import RelevanceConfig  # noqa: E402
from lavis_listwise.datasets.retrieval_listwise import caption_groups_to_index  # noqa: E402
from lavis_listwise.demo import demo_data_root  # noqa: E402
from lavis_listwise.demo.synthetic import ensure_synthetic_dataset, relevance_file  # noqa: E402
from lavis_listwise.evaluation import relevance_agreement  # noqa: E402
from listwise_ranking.relevance import rsc_relevance_from_table  # noqa: E402
from listwise_ranking.relevance.calibration import (  # noqa: E402
    RULE,
    RelevanceSetting,
    auto_floor_from_table,
    select_setting,
)

#: The demo recipe in this repository (benchmarks run from a checkout).
DEMO_YAML = Path(__file__).resolve().parents[1] / "projects" / "demo" / "demo.yaml"

COLUMNS = (
    ("spearman_i2t", "Spearman i2t", "{:.3f}"),
    ("spearman_t2i", "Spearman t2i", "{:.3f}"),
    ("ndcg10_i2t", "NDCG@10 i2t", "{:.2f}"),
    ("ndcg10_t2i", "NDCG@10 t2i", "{:.2f}"),
    ("gain_p10", "gain p10", "{:.2f}"),
    ("gain_p50", "gain p50", "{:.2f}"),
    ("gain_p90", "gain p90", "{:.2f}"),
    ("gain_mae", "gain MAE", "{:.3f}"),
    ("gain_mean_gt_zero", "gain, gt = 0", "{:.3f}"),
    ("gain_mean_gt_positive", "gain, gt = 1", "{:.3f}"),
    ("relevant_at_zero", "gt = 1 at gain 0", "{:.1%}"),
    ("irrelevant_share", "gt < 1 share", "{:.1%}"),
)


def split_captions(root: Path, split: str) -> tuple[list[str], list[list[int]]]:
    """The split's captions in LAVIS's order, processed by ``blip_caption``, and each image's rows."""
    from lavis.processors.blip_processors import BlipCaptionProcessor

    process = BlipCaptionProcessor()
    entries = json.loads((root / "annotations" / f"{split}.json").read_text())
    if split == "train":  # one entry per caption; images numbered by first appearance
        images: dict[str, list[int]] = {}
        for t, entry in enumerate(entries):
            images.setdefault(entry["image_id"], []).append(t)
        return [process(e["caption"]) for e in entries], list(images.values())
    captions, groups = [], []
    for entry in entries:
        groups.append(list(range(len(captions), len(captions) + len(entry["caption"]))))
        captions += [process(c) for c in entry["caption"]]
    return captions, groups


def options_grid(floors: list[float], sharpens: list[float]) -> list[tuple[str, dict]]:
    """``(label, model.listwise.relevance keys)``: the paper's mapping with each sharpening, then
    every floor with each sharpening."""
    grid = [
        ("paper (1 + cos) / 2" + (f", sharpen {p:g}" if p != 1 else ""), {"sharpen": p}) for p in sharpens
    ]
    grid += [
        (f"floor {f:g}" + (f", sharpen {p:g}" if p != 1 else ""), {"floor": f, "sharpen": p})
        for f in floors
        for p in sharpens
    ]
    return grid


def recommend(rows: list[tuple[str, dict, dict]]) -> tuple[str, dict] | None:
    """The setting :func:`~listwise_ranking.relevance.calibration.select_setting` picks (the plausible
    positives as the judged-relevant pairs); the oracle row is not a candidate."""
    candidates = [
        (RelevanceSetting(label), values) for label, keys, values in rows if "relevance_file" not in keys
    ]
    picked = select_setting(candidates)
    return None if picked is None else next((label, keys) for label, keys, _ in rows if label == picked.label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=("val", "train"), default="val", help="default: %(default)s")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: where the demo keeps its data")
    parser.add_argument(
        "--cfg-path", default=None, help="demo YAML for demo.data (default: projects/demo/demo.yaml)"
    )
    parser.add_argument("--floors", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--sharpens", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--encoder", default=None, help="local sentence-encoder directory (default: bundled)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="in-batch list length (default: the YAML's batch_size_train)",
    )
    args = parser.parse_args(argv)

    start = time.time()
    yaml = OmegaConf.load(args.cfg_path or DEMO_YAML)
    data = dict(yaml.demo.data)
    batch_size = args.batch_size or int(yaml.run.batch_size_train)
    root = ensure_synthetic_dataset(args.data_dir or demo_data_root(data), **data)
    captions, groups = split_captions(root, args.split)
    ground_truth = torch.from_numpy(np.load(relevance_file(root, args.split)))
    annotated = torch.zeros(len(groups), len(captions), dtype=torch.bool)
    for image, rows in enumerate(groups):
        annotated[image, rows] = True
    base = RelevanceConfig.from_cfg({"encoder": args.encoder})
    embeddings = base.caption_cache().get(captions)
    index = caption_groups_to_index(groups)
    print(
        f"[relevance] {args.split} split of {root}: {len(groups)} images x {len(captions)} captions; "
        f"encoder {base.encoder or 'all-MiniLM-L6-v2 (bundled)'}",
        flush=True,
    )

    # floor auto as training computes it: from the training captions alone
    train_captions, train_groups = split_captions(root, "train")
    auto = round(
        auto_floor_from_table(
            base.caption_cache().get(train_captions), caption_groups_to_index(train_groups)
        ),
        4,
    )
    grid = options_grid(args.floors, args.sharpens)
    grid.append((f"floor auto (= {auto:.3f}, from the train captions)", {"floor": auto}))
    rows = []
    for label, keys in grid:
        cfg = RelevanceConfig.from_cfg({"encoder": args.encoder, **keys})
        relevance = rsc_relevance_from_table(
            embeddings, index, torch.arange(len(captions)), annotated, **cfg.shaping
        )
        rows.append(
            (label, keys, relevance_agreement(relevance, ground_truth, annotated, batch_size=batch_size))
        )
    oracle = relevance_agreement(ground_truth, ground_truth, annotated, batch_size=batch_size)
    rows.append(
        ("oracle (ground truth as relevance_file)", {"relevance_file": "<data>/relevance/train.npy"}, oracle)
    )

    head = "| relevance | " + " | ".join(name for _, name, _ in COLUMNS) + " |"
    print(head)
    print("|" + "---|" * (len(COLUMNS) + 1))
    for label, _, values in rows:
        cells = ["" if values[k] is None else fmt.format(values[k]) for k, _, fmt in COLUMNS]
        print(f"| {label} | " + " | ".join(cells) + " |")
    picked = recommend(rows)
    print(f"[relevance] batch size {batch_size}; plausible positives (gt = 1) as the judged-relevant pairs")
    if picked is None:
        print(f"[relevance] no setting qualifies ({RULE})")
    else:
        keys = json.dumps(picked[1])
        print(f"[relevance] recommended ({RULE}): {picked[0]}, i.e. model.listwise.relevance: {keys}")
    print(f"[relevance] {time.time() - start:.0f} s", flush=True)
    if args.json is not None:
        table = [{"relevance": label, "keys": keys, **values} for label, keys, values in rows]
        args.json.write_text(
            json.dumps({"split": args.split, "data": str(root), "rows": table}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
