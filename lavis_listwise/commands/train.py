"""LAVIS's ``train.py`` / ``evaluate.py`` flow with the plugin imported before the config is parsed."""

from __future__ import annotations

import argparse
import json
import logging
import random
import secrets
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation.report import format_results_table
from .run_config import load_run_config

__all__ = ["build_run", "default_job_id", "train", "evaluate"]


# Replaces setup_seeds of LAVIS's train.py, which the wheel does not ship.
def _setup_seeds(run_cfg) -> None:
    from lavis.common.dist_utils import get_rank

    seed = int(run_cfg.get("seed", 42)) + get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def default_job_id() -> str:
    """A job id no other run takes: the start time to the second and 8 random hex digits, drawn by rank 0
    and shared with the other ranks (LAVIS's ``%Y%m%d%H%M`` gave two runs started within one minute,
    and the ranks of one run at a minute's turn, different runs the same directory)."""
    import torch.distributed as dist

    job_id = [f"{datetime.now().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(job_id, src=0)
    return job_id[0]


# Replaces main() of LAVIS's train.py (not in the wheel): the same flow, plugin registered first.
def build_run(args: argparse.Namespace, quiet: bool = False):
    """Parse the YAML (after registering the plugin), set up distribution and seeds, and build
    the task, datasets, model and runner. ``quiet`` keeps LAVIS's INFO logging and config dump off."""
    import lavis.tasks as tasks
    from lavis.common.logger import setup_logger
    from lavis.common.registry import registry

    from ..distributed import init_distributed

    cfg = load_run_config(args.cfg_path, args.options)
    init_distributed(cfg.run_cfg)
    _setup_seeds(cfg.run_cfg)
    setup_logger()
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    else:
        cfg.pretty_print()
    _set_cpu_threads(cfg.run_cfg)
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    job_id = args.job_id or default_job_id()
    runner_cls = registry.get_runner_class(cfg.run_cfg.get("runner", "runner_base"))
    return runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)


def _set_cpu_threads(run_cfg) -> None:
    """``run.cpu_threads``: torch's intra-op threads for this process (unset: torch's default, one per
    core). On a machine whose cores other processes also use, 1 keeps a run from stalling: every
    parallel region waits for its slowest thread, and a thread whose core is taken waits for it."""
    import torch

    from listwise_ranking.errors import ConfigError

    value = run_cfg.get("cpu_threads")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"run.cpu_threads must be a whole number >= 1 or null, got {value!r}")
        torch.set_num_threads(value)
    if str(run_cfg.get("device", "cpu")).startswith("cpu"):
        source = "run.cpu_threads" if value is not None else "torch's default; set run.cpu_threads to change"
        logging.info("training on CPU with %d torch thread(s) (%s)", torch.get_num_threads(), source)


def _report_results(runner, logs: dict | None, name: str) -> None:
    """On the main process: the results as JSON in ``output_dir/name``, and as a table on stdout."""
    from lavis.common.dist_utils import is_main_process

    if not logs or not is_main_process():
        return
    path = Path(runner.output_dir) / name
    path.write_text(json.dumps(logs, indent=2, default=float) + "\n")
    logging.info("results written to %s", path)
    print(format_results_table(logs), flush=True)


@contextmanager
def _collectives_named(run_cfg):
    """Turn a collective that timed out or lost its peer into one message naming ``run.dist_timeout``."""
    from listwise_ranking.errors import DistributedTimeoutError

    from ..distributed import dist_timeout, is_collective_timeout, rank_and_world

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


def _run_and_report(
    args: argparse.Namespace, run: Callable[[Any], dict | None], results_name: str
) -> dict | None:
    """Build the run, ``run(runner)``, write and print its results; the process group the run set up
    is destroyed at the end, whatever happens."""
    from ..distributed import process_group_released

    with process_group_released():
        runner = build_run(args)
        try:
            with _collectives_named(runner.config.run_cfg):
                logs = run(runner)
            _report_results(runner, logs, results_name)
        finally:
            getattr(runner, "release_output_dir", lambda: None)()  # the job directory's lock
    return logs


def train(args: argparse.Namespace) -> dict | None:
    """LAVIS's train.py: train, validate and test."""
    return _run_and_report(args, lambda runner: runner.train(), "test_results.json")


def evaluate(args: argparse.Namespace) -> dict | None:
    """LAVIS's evaluate.py: test the configured model."""
    return _run_and_report(args, lambda runner: runner.evaluate(skip_reload=True), "evaluate_results.json")
