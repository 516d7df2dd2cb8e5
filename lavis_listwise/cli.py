"""Command line: ``lavis-listwise`` (also ``python -m lavis_listwise``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__


def _default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lavis-listwise"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lavis-listwise",
        description="Listwise ranking (RSC relevance + Smooth-NDCG) for LAVIS image-text retrieval.",
    )
    parser.add_argument("--version", action="version", version=f"lavis-listwise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    quick = sub.add_parser(
        "quickstart",
        help="short CPU run: RSC relevance and S-NDCG vs ITC on a toy task",
        description="Short CPU run: RSC relevance and S-NDCG vs ITC on a toy task.",
    )
    quick.add_argument(
        "--cache-dir",
        type=Path,
        default=_default_cache_dir(),
        help="where caption embeddings are cached (default: %(default)s)",
    )
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument("--steps", type=int, default=150)
    quick.add_argument("--weight", type=float, default=1.0, help="S-NDCG weight (default: %(default)s)")
    for name, help_text in (
        ("train", "fine-tune a LAVIS retrieval model from a YAML (LAVIS's train.py flow)"),
        ("evaluate", "evaluate a LAVIS retrieval model from a YAML (LAVIS's evaluate.py flow)"),
    ):
        from .train import add_config_arguments

        add_config_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "quickstart":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from .quickstart import run

        run(args.cache_dir, seed=args.seed, steps=args.steps, weight=args.weight)
    elif args.command in ("train", "evaluate"):
        from . import train

        getattr(train, args.command)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
