"""The relevance settings against human judgments on the calibration half of COCO's Karpathy test split.

The 5,000 test images are split by their index in LAVIS's ``coco_karpathy_test.json``: the even ones
are the calibration half, where settings are measured and chosen; the odd half is reserved for
independent checks and is never read here. This script writes the even half to a temporary annotation
and runs ``lavis-listwise relevance-report`` on it with ECCV Caption's and CxC's positives (the
``eccv-caption`` package) and, if given, CxC's graded ratings.

Inputs (public; not downloaded here): LAVIS's ``coco_karpathy_test.json`` (LAVIS's COCO builder
fetches it into ``$LAVIS_CACHE/coco/annotations``; the same file is at github kanadn/diht
``coco_test.json``), and CxC's ``data/sits_test.csv`` (github google-research-datasets/Crisscrossed-Captions).

    .venv/bin/python benchmarks/relevance_calibration.py coco_karpathy_test.json --sits sits_test.csv
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lavis_listwise.commands.relevance_report import format_judgments_report, judgments_report  # noqa: E402
from listwise_ranking.relevance.calibration import DEFAULT_FLOORS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("annotation", type=Path, help="LAVIS's coco_karpathy_test.json (5,000 images)")
    parser.add_argument("--sits", type=Path, default=None, help="CxC's sits_test.csv (graded ratings)")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    args = parser.parse_args(argv)

    images = json.loads(args.annotation.read_text(encoding="utf-8"))
    if len(images) != 5000:
        sys.exit(f"{args.annotation}: {len(images)} images; the Karpathy test split has 5,000")
    specs = ["eccv", "cxc"] + ([f"cxc-graded:{args.sits}"] if args.sits else [])
    with tempfile.TemporaryDirectory() as tmp:
        half = Path(tmp) / "coco_karpathy_test_calibration_half.json"
        half.write_text(json.dumps(images[0::2]), encoding="utf-8")  # even indices only
        report = judgments_report(half, specs, batch_size=args.batch_size, floors=list(DEFAULT_FLOORS))
    report["annotation"] = f"{args.annotation} (even-index images: the calibration half)"
    print(format_judgments_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
