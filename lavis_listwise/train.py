"""LAVIS's ``train.py`` / ``evaluate.py`` flow with the plugin imported before the config is parsed."""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

# defined in the light command-line module, so `lavis-listwise --help` builds its parser without torch
from lavis_listwise_cli import add_config_arguments

__all__ = ["add_config_arguments", "build_run", "train", "evaluate", "format_results_table"]

_ROW = re.compile(r"^(?:(?P<group>[a-z0-9]+)_)??(?P<dir>txt|img)_(?P<metric>.+)$")
_DIRECTION = {"txt": "image->text", "img": "text->image"}


def read_yaml_file(path: str, key: str = "--cfg-path"):
    """The YAML file at ``path`` as an OmegaConf object; :class:`ConfigError` naming ``key`` and the file
    if it is missing, unreadable or not valid YAML."""
    from omegaconf import OmegaConf
    from yaml import YAMLError

    from .errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"{key}: {str(path)!r} does not exist")
    try:
        return OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: cannot read {str(path)!r}: {err}") from None
    except YAMLError as err:
        raise ConfigError(f"{key}: {str(path)!r} is not valid YAML: {err}".replace("\n", " ")) from None


# Replaces setup_seeds of LAVIS's train.py, which the wheel does not ship.
def _setup_seeds(run_cfg) -> None:
    from lavis.common.dist_utils import get_rank

    seed = int(run_cfg.get("seed", 42)) + get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


# Replaces main() of LAVIS's train.py (not in the wheel): the same flow, plugin registered first.
def build_run(args: argparse.Namespace, quiet: bool = False):
    """Parse the YAML (after registering the plugin), set up distribution and seeds, and build
    the task, datasets, model and runner. ``quiet`` keeps LAVIS's INFO logging and config dump off."""
    import lavis.tasks as tasks
    from lavis.common.config import Config
    from lavis.common.logger import setup_logger
    from lavis.common.registry import registry

    import lavis_listwise  # noqa: F401  (registers the plugin before the config is parsed)

    from .config_check import check_config
    from .distributed import init_distributed

    # a missing, unreadable or malformed file is one message naming it; keys nothing reads are refused
    check_config(read_yaml_file(args.cfg_path), args.options)
    cfg = Config(argparse.Namespace(cfg_path=args.cfg_path, options=args.options))
    init_distributed(cfg.run_cfg)
    _setup_seeds(cfg.run_cfg)
    setup_logger()
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    else:
        cfg.pretty_print()
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    job_id = args.job_id or datetime.now().strftime("%Y%m%d%H%M")
    runner_cls = registry.get_runner_class(cfg.run_cfg.get("runner", "runner_base"))
    return runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)


def _report_results(runner, logs: dict | None, name: str) -> None:
    """On the main process: the results as JSON in ``output_dir/name``, and as a table on stdout."""
    from lavis.common.dist_utils import is_main_process

    if not logs or not is_main_process():
        return
    path = Path(runner.output_dir) / name
    path.write_text(json.dumps(logs, indent=2, default=float) + "\n")
    logging.info("results written to %s", path)
    print(format_results_table(logs), flush=True)


def format_results_table(logs: dict) -> str:
    """A plain-text table per split: one row per direction (and per protocol, e.g. COCO 1K), one
    column per metric; other values (``r_mean``, ``agg_metrics``...) listed underneath."""
    lines = []
    for split, metrics in logs.items():
        if not isinstance(metrics, dict):
            continue
        rows: dict[str, dict[str, float]] = {}
        columns: list[str] = []
        others = []
        for key, value in metrics.items():
            match = _ROW.match(key)
            if match is None or not isinstance(value, (int, float)):
                others.append(f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}")
                continue
            label = f"{match['group'] or ''} {_DIRECTION[match['dir']]}".strip()
            rows.setdefault(label, {})[match["metric"]] = float(value)
            if match["metric"] not in columns:
                columns.append(match["metric"])
        width = max([len(r) for r in rows] + [len(split)])
        lines.append(f"{split:<{width}}  " + "  ".join(f"{c:>9}" for c in columns))
        for label, values in rows.items():
            cells = (f"{values[c]:9.2f}" if c in values else " " * 9 for c in columns)
            lines.append((f"{label:<{width}}  " + "  ".join(cells)).rstrip())
        if others:
            lines.append("  ".join(others))
        lines.append("")
    return "\n".join(lines)


@contextmanager
def _collectives_named(run_cfg):
    """Turn a collective that timed out or lost its peer into one message naming ``run.dist_timeout``."""
    from .distributed import dist_timeout, is_collective_timeout, rank_and_world
    from .errors import DistributedTimeoutError

    try:
        yield
    except RuntimeError as err:
        rank, world = rank_and_world()
        if world == 1 or not is_collective_timeout(err):
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedTimeoutError(
            f"rank {rank} of {world}: a collective operation failed or waited longer than run.dist_timeout = "
            f"{dist_timeout(run_cfg).total_seconds():g} s for another process, which has stalled or "
            f"exited ({first_line})"
        ) from err


def train(args: argparse.Namespace) -> dict | None:
    runner = build_run(args)
    with _collectives_named(runner.config.run_cfg):
        logs = runner.train()
    _report_results(runner, logs, "test_results.json")
    return logs


def evaluate(args: argparse.Namespace) -> dict | None:
    runner = build_run(args)
    with _collectives_named(runner.config.run_cfg):
        logs = runner.evaluate(skip_reload=True)
    _report_results(runner, logs, "evaluate_results.json")
    return logs
