"""Listwise settings of the demo compared on the VALIDATION split, with the ground truth.

Each setting is a list of YAML overrides of ``projects/demo/demo.yaml``. For each seed and setting
the script trains the demo's tiny BLIP exactly as ``lavis-listwise demo`` does (same YAML, data,
runner, best-epoch selection on val r_mean), except that the split the runner tests after training
is the validation split: its annotation entry and ``run.gt_relevance.test`` point at the val files,
so the test split is never read and nothing here can be tuned on it. The printed table has, per
setting, the val recalls' mean and the ground-truth metrics (NDCG@10, mAP@R, both directions) over
the seeds, and each setting's paired difference from ``pairwise`` (mean +- std over seeds).

Like the demo, each (seed, setting) trains in its own single-threaded process, ``--workers`` at a time
(default: the usable cores), so the numbers do not depend on the worker or core count; each run's
LAVIS log is ``<output-dir>/seed<seed>-<setting>.log``.

    .venv/bin/python benchmarks/demo_listwise_sweep.py --seeds 0 1 --json sweep.json
    .venv/bin/python benchmarks/demo_listwise_sweep.py --settings pairwise floor0.4 \
        --extra "floor0.4_w0.3=model.listwise.weight=0.3,model.listwise.relevance.floor=0.4"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lavis_listwise.config_io import read_yaml_file  # noqa: E402
from lavis_listwise.demo import (  # noqa: E402
    demo_data_root,
    train_arms,
    usable_cores,
    validation_data_options,
)
from lavis_listwise.demo.synthetic import ensure_synthetic_dataset, relevance_file  # noqa: E402

DEMO_YAML = Path(__file__).resolve().parents[1] / "projects" / "demo" / "demo.yaml"
REPORTED = ["r_mean", "txt_r1", "img_r1", "gt_txt_ndcg10", "gt_img_ndcg10", "gt_txt_map_r", "gt_img_map_r"]

#: name -> YAML overrides; ``{train_gt}`` is the train split's ground-truth relevance file. ``paper``:
#: the paper's RSC ``(1 + cos) / 2``; ``floor0.4``: cosines <= 0.4 give gain 0, the rest rescaled;
#: ``oracle``: the generator's ground truth as the training relevance (an upper bound a real dataset
#: does not have).
SETTINGS: dict[str, list[str]] = {
    "pairwise": ["model.listwise.weight=0"],
    "paper_w1": ["model.listwise.weight=1", "model.listwise.relevance.floor=null"],
    "paper_w0.3": ["model.listwise.weight=0.3", "model.listwise.relevance.floor=null"],
    "floor0.4_w1": ["model.listwise.weight=1", "model.listwise.relevance.floor=0.4"],
    "floor0.4_w0.3": ["model.listwise.weight=0.3", "model.listwise.relevance.floor=0.4"],
    "oracle_w1": [
        "model.listwise.weight=1",
        "model.listwise.relevance.floor=null",
        "model.listwise.relevance.relevance_file={train_gt}",
    ],
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cfg-path", default=str(DEMO_YAML))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help=f"of {list(SETTINGS)}")
    parser.add_argument(
        "--extra", nargs="*", default=[], help="more settings: name=override,override,... (commas split)"
    )
    parser.add_argument("--output-dir", default="output/demo_listwise_sweep")
    parser.add_argument("--workers", type=int, default=None, help="runs at once (default: usable cores)")
    parser.add_argument("--json", help="write the per-seed metrics and the table here")
    args = parser.parse_args(argv)

    settings = {name: SETTINGS[name] for name in args.settings}
    for spec in args.extra:
        name, _, overrides = spec.partition("=")
        settings[name] = overrides.split(",")
    if "pairwise" not in settings:
        settings = {"pairwise": SETTINGS["pairwise"], **settings}

    data = dict(read_yaml_file(args.cfg_path).demo.data)
    root = Path(ensure_synthetic_dataset(demo_data_root(data), **data))
    subs = {"train_gt": str(relevance_file(root, "train"))}

    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = validation_data_options(root) + [f"run.output_dir={out}"]
    base.append("run.overwrite_output=True")  # a rerun of the sweep replaces its runs
    # the run's "test" split is val (validation_data_options): its ground truth is val's too
    base += [f"run.gt_relevance.{s}={relevance_file(root, 'val')}" for s in ("val", "test")]
    jobs = [
        (seed, name, base + [f"run.seed={seed}"] + [o.format(**subs) for o in overrides])
        for seed in args.seeds
        for name, overrides in settings.items()
    ]
    workers = min(len(jobs), args.workers or usable_cores())
    trained = train_arms(args.cfg_path, jobs, out, workers, picture=False)
    # "test" in each run's metrics is the validation split (validation_data_options)
    runs = {
        name: {seed: {k: trained[seed][name]["metrics"][k] for k in REPORTED} for seed in args.seeds}
        for name in settings
    }
    for seed in args.seeds:
        for name in settings:
            run = trained[seed][name]
            row = {
                "seed": seed,
                "setting": name,
                "relevance": run["relevance"],
                "wall_s": round(run["seconds"]),
            }
            print(json.dumps({**row, **runs[name][seed]}))

    table = {}
    for name in settings:
        mean = {k: statistics.fmean(runs[name][s][k] for s in args.seeds) for k in REPORTED}
        diffs = {k: [runs[name][s][k] - runs["pairwise"][s][k] for s in args.seeds] for k in REPORTED}
        spread = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in diffs.items()}
        table[name] = {
            "mean": mean,
            "diff_mean": {k: statistics.fmean(v) for k, v in diffs.items()},
            "diff_std": spread,
        }

    print(f"\nvalidation split, seeds {args.seeds}: mean, and (setting - pairwise) mean +- std over seeds")
    print(f"{'setting':<16}" + "".join(f"{k:>22}" for k in REPORTED))
    for name, row in table.items():
        cells = [
            f"{row['mean'][k]:7.2f} ({row['diff_mean'][k]:+6.2f}+-{row['diff_std'][k]:4.2f})"
            for k in REPORTED
        ]
        print(f"{name:<16}" + "".join(f"{c:>22}" for c in cells))
    result = {
        "cfg_path": args.cfg_path,
        "seeds": args.seeds,
        "settings": settings,
        "relevance": {name: trained[args.seeds[0]][name]["relevance"] for name in settings},
        "runs": runs,
        "table": table,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
