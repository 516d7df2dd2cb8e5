"""``lavis-listwise relevance-report``: how well a run's training relevance agrees with the ground
truth, before training.

For a run YAML whose ``run.gt_relevance`` names ground-truth files, it builds the datasets as training
would (LAVIS's ``Config``, the task's ``build_datasets``, which reads and checks the files). For every
evaluation split with ground truth, it computes RSC on that split's captions with the YAML's
``model.listwise.relevance`` (encoder, ``floor``, ``sharpen``), the relevance the evaluation's NDCG
uses. It prints :func:`~.evaluation.ground_truth.relevance_agreement`. No model is built. Change the
shaping with ``--options model.listwise.relevance.floor=0.6`` to compare relevance sources.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .evaluation.report import format_agreement

__all__ = ["relevance_report", "run_relevance_report"]


def relevance_report(cfg_path: str, options: list[str]) -> dict:
    """``{"relevance": <description>, <split>: agreement, ...}`` for the YAML's evaluation splits
    with ground truth.

    Raises:
        ConfigError if ``run.gt_relevance`` names no split; the errors of building the datasets.
    """
    import lavis.tasks as tasks
    from lavis.common.config import Config

    import lavis_listwise  # noqa: F401  (registers the plugin before the config is parsed)

    from .config import ListwiseConfig
    from .config_check import check_config
    from .config_io import read_yaml_file
    from .errors import ConfigError

    check_config(read_yaml_file(cfg_path), options)
    cfg = Config(argparse.Namespace(cfg_path=cfg_path, options=options))
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    relevance = ListwiseConfig.from_cfg(cfg.model_cfg.get("listwise")).relevance
    report: dict = {"relevance": relevance.describe()}
    if relevance.relevance_file is not None:
        report["note"] = (
            "the training relevance is a file for the train split; shown: RSC on the evaluation splits"
        )
    for splits in datasets.values():
        for split, dataset in splits.items():
            agreement = task.relevance_agreement(dataset, relevance)
            if agreement is not None:
                report[split] = agreement
    if len(report) == 1 + ("note" in report):
        raise ConfigError(
            "run.gt_relevance names no evaluation split: give ground-truth relevance files, e.g. "
            "--options run.gt_relevance.val=/data/relevance/val.npy"
        )
    return report


def run_relevance_report(args: argparse.Namespace) -> int:
    """The ``relevance-report`` command: print the agreement (and write it as JSON with ``--json``)."""
    report = relevance_report(args.cfg_path, list(args.options))
    print(f"agreement of the training relevance ({report['relevance']}) with the ground truth:")
    if "note" in report:
        print(f"  ({report['note']})")
    for split, values in report.items():
        if isinstance(values, dict):
            print(format_agreement(split, values))
    if args.json is not None:
        out = Path(args.json)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out)  # never a half-written file
        print(f"written to {out}")
    return 0
