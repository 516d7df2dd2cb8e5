"""The ``lavis-listwise`` command line (also ``python -m lavis_listwise``).

This module sits next to the ``lavis_listwise`` package, not inside it: ``import lavis_listwise``
registers the plugin in LAVIS's registry, which imports LAVIS and torch (seconds of CPU), and
Python imports a package before any of its modules. Here only argparse runs until a command is
chosen, so ``--help``, ``--version`` and argument errors answer without importing either; each
command imports what it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["add_check_data_arguments", "add_config_arguments", "build_parser", "main"]

PROG = "lavis-listwise"


def _version() -> str:
    try:
        return version("lavis-listwise")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "(not installed: no package metadata)"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cfg-path`` and ``--options``, as LAVIS's train.py and evaluate.py take them."""
    parser.add_argument("--cfg-path", required=True, help="path to the run's YAML configuration")
    parser.add_argument(
        "--options",
        nargs="+",
        default=[],
        help="override settings of the YAML, as key=value (e.g. run.max_epoch=2 model.listwise.weight=0.5)",
    )
    parser.add_argument("--job-id", default=None, help="output sub-directory name (default: a timestamp)")


def add_check_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``check-data``."""
    parser.add_argument("--cfg-path", required=True, help="the run's YAML (the same file train takes)")
    parser.add_argument("--options", nargs="+", default=[], help="key=value overrides, as for train")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes decoding images (default: CPU count, at most 16)"
    )


# ----------------------------------------------------------------------------- commands
# Each imports the plugin (and so LAVIS and torch) only when it runs.
def _demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lavis_listwise.demo import run_demo

    run_demo(
        quick=args.quick,
        seeds=args.seeds,
        output_dir=args.output_dir,
        data_dir=args.data_dir,
        cfg_path=args.cfg_path,
        listwise_weight=args.weight,
        extra_options=args.options,
        workers=args.workers,
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from lavis_listwise.commands.train import train
    from lavis_listwise.config import check_run_device

    check_run_device(args.cfg_path, args.options)  # before the process group is set up on it
    train(args)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from lavis_listwise.commands.train import evaluate
    from lavis_listwise.config import check_run_device

    check_run_device(args.cfg_path, args.options)
    evaluate(args)
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from lavis_listwise.commands.check_data import run_check_data

    return run_check_data(args)


def _relevance_report(args: argparse.Namespace) -> int:
    from lavis_listwise.commands.relevance_report import run_relevance_report

    return run_relevance_report(args)


def _command(
    sub: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], help: str, **kwargs
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=kwargs.pop("description", help), **kwargs)
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Listwise ranking (RSC relevance + Smooth-NDCG) for LAVIS image-text retrieval.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = _command(
        sub,
        "demo",
        _demo,
        help="pairwise vs listwise fine-tuning of a tiny BLIP on synthetic data (CPU, ~5 min)",
        description="Train a tiny BLIP twice from the same seed through LAVIS (ITC+ITM, then ITC+ITM+S-NDCG) "
        "on a generated dataset; print a table, write results.json and rankings.png.",
    )
    demo.add_argument("--quick", action="store_true", help="small data, one epoch: under a minute")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0], help="one pair of runs per seed")
    demo.add_argument("--output-dir", type=Path, default=Path("output/demo"), help="default: %(default)s")
    demo.add_argument("--data-dir", type=Path, default=None, help="where the synthetic data is generated")
    demo.add_argument(
        "--cfg-path", default=None, help="demo YAML (default: the shipped projects/demo/demo[_quick].yaml)"
    )
    demo.add_argument("--weight", type=float, default=None, help="S-NDCG weight (default: from the YAML)")
    demo.add_argument("--options", nargs="+", default=[], help="extra key=value overrides for both runs")
    demo.add_argument(
        "--workers",
        type=int,
        default=None,
        help="training runs at once, each a single-threaded process "
        "(default: the usable cores); the numbers do not depend on it",
    )
    add_config_arguments(
        _command(
            sub, "train", _train, help="fine-tune a LAVIS retrieval model from a YAML (LAVIS's train.py flow)"
        )
    )
    add_config_arguments(
        _command(
            sub,
            "evaluate",
            _evaluate,
            help="evaluate a LAVIS retrieval model from a YAML (LAVIS's evaluate.py flow)",
        )
    )
    add_check_data_arguments(
        _command(
            sub,
            "check-data",
            _check_data,
            help="open every image of every split fully and check the annotations (before a GPU job)",
            description="Read every annotation file of the YAML's datasets with the checks of training, "
            "decode every image in a process pool (truncated files count), print every problem; "
            "exit 1 if any.",
        )
    )
    report = _command(
        sub,
        "relevance-report",
        _relevance_report,
        help="how good the training relevance is, against human judgments or run.gt_relevance",
        description="With --annotation and --judgments: embed the annotation's captions, and for the "
        "paper's mapping, fixed floors and floor auto print ranking quality and calibration against each "
        "judgment source, with the setting the documented rule recommends (use calibration or validation "
        "judgments only). With --cfg-path alone: build the YAML's datasets, compute RSC on every "
        "evaluation split that has ground truth (run.gt_relevance) and print how well they agree. "
        "No model is built.",
    )
    report.add_argument(
        "--cfg-path",
        default=None,
        help="the run's YAML (the same file train takes); with --annotation: "
        "only its model.listwise.relevance encoder and cache are used",
    )
    report.add_argument(
        "--annotation",
        default=None,
        help="a LAVIS evaluation annotation JSON to judge (instead of the "
        "YAML's datasets); needs --judgments",
    )
    report.add_argument(
        "--judgments",
        action="append",
        default=[],
        metavar="SPEC",
        help="human judgments: eccv, cxc "
        "(the eccv-caption package's positives), cxc-graded:SITS.csv or plain:FILE.csv; repeatable",
    )
    report.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="the run's global batch size, the in-batch list length "
        "(default: %(default)s, the COCO recipes' 8 x 32)",
    )
    report.add_argument(
        "--floors",
        type=float,
        nargs="+",
        default=None,
        help="fixed floors to compare besides the paper's mapping and floor auto "
        "(default: 0.2 0.3 0.35 0.4 0.45 0.5 0.6 0.7)",
    )
    report.add_argument("--options", nargs="+", default=[], help="key=value overrides, as for train")
    report.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    cfg_path = getattr(args, "cfg_path", None)
    if cfg_path is not None and os.path.isdir(cfg_path):  # else reported as "does not exist"
        print(f"{PROG}: error: --cfg-path: {cfg_path!r} is a directory, not a YAML file", file=sys.stderr)
        return 1
    try:
        return args.run(args)
    except Exception as err:
        # The plugin's own errors are stated for the user in one message; anything else is a bug
        # and keeps its traceback. LAVIS_LISTWISE_TRACEBACK=1 shows it for ours too.
        if not _is_listwise_error(err) or os.environ.get("LAVIS_LISTWISE_TRACEBACK"):
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return 1


def _is_listwise_error(err: Exception) -> bool:
    # whatever raised a ListwiseError has imported listwise_ranking.errors; nothing new is imported here
    errors = sys.modules.get("listwise_ranking.errors")
    return errors is not None and isinstance(err, errors.ListwiseError)


if __name__ == "__main__":
    sys.exit(main())
