"""Command line: ``lavis-listwise`` (also ``python -m lavis_listwise``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lavis-listwise",
        description="Listwise ranking (RSC relevance + Smooth-NDCG) for LAVIS image-text retrieval.",
    )
    parser.add_argument("--version", action="version", version=f"lavis-listwise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="pairwise vs listwise fine-tuning of a tiny BLIP on synthetic data (CPU, ~5 min)",
        description="Train a tiny BLIP twice from the same seed through LAVIS (ITC+ITM, then ITC+ITM+S-NDCG) "
        "on a generated dataset; print a table, write results.json and rankings.png.",
    )
    demo.add_argument("--quick", action="store_true", help="small data, one epoch: under a minute")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0], help="one pair of runs per seed")
    demo.add_argument("--output-dir", type=Path, default=Path("output/demo"), help="default: %(default)s")
    demo.add_argument("--data-dir", type=Path, default=None, help="where the synthetic data is generated")
    demo.add_argument("--cfg-path", default=None, help="demo YAML (default: projects/demo/demo[_quick].yaml)")
    demo.add_argument("--weight", type=float, default=None, help="S-NDCG weight (default: from the YAML)")
    demo.add_argument("--options", nargs="+", default=[], help="extra key=value overrides for both runs")
    for name, help_text in (
        ("train", "fine-tune a LAVIS retrieval model from a YAML (LAVIS's train.py flow)"),
        ("evaluate", "evaluate a LAVIS retrieval model from a YAML (LAVIS's evaluate.py flow)"),
    ):
        from .train import add_config_arguments

        add_config_arguments(sub.add_parser(name, help=help_text, description=help_text))
    from .check_data import add_arguments as add_check_data_arguments

    add_check_data_arguments(
        sub.add_parser(
            "check-data",
            help="open every image of every split fully and check the annotations (before a GPU job)",
            description="Read every annotation file of the YAML's datasets with the checks of training, "
            "decode every image in a process pool (truncated files count), print every problem; "
            "exit 1 if any.",
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _run(args)
    except Exception as err:
        from .errors import ListwiseError

        # The plugin's own errors are stated for the user in one message; anything else is a bug
        # and keeps its traceback. LAVIS_LISTWISE_TRACEBACK=1 shows it for ours too.
        if not isinstance(err, ListwiseError) or os.environ.get("LAVIS_LISTWISE_TRACEBACK"):
            raise
        print(f"lavis-listwise: error: {err}", file=sys.stderr, flush=True)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from .demo import run_demo

        run_demo(
            quick=args.quick,
            seeds=args.seeds,
            output_dir=args.output_dir,
            data_dir=args.data_dir,
            cfg_path=args.cfg_path,
            listwise_weight=args.weight,
            extra_options=args.options,
        )
    elif args.command in ("train", "evaluate"):
        from . import train

        getattr(train, args.command)(args)
    elif args.command == "check-data":
        from .check_data import run_check_data

        return run_check_data(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
