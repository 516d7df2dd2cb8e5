"""``lavis-listwise relevance-report``: how good a training relevance is, before training.

Two routes:

* ``--annotation ANN.json --judgments SPEC ...``: a LAVIS evaluation annotation (one entry per image,
  its captions as a list) and human judgments (:func:`~listwise_ranking.relevance.judgments.read_judgments`:
  ``eccv``, ``cxc``, ``cxc-graded:SITS.csv``, ``plain:FILE.csv``). The captions are processed as LAVIS's
  ``blip_caption`` does and embedded with ``model.listwise.relevance`` (the bundled MiniLM unless
  ``--cfg-path`` names another encoder or cache). For the paper's mapping, each floor and ``floor:
  auto`` (computed from these captions) it prints ranking quality and calibration against each source
  (:func:`~listwise_ranking.relevance.calibration.calibration_table`) and the setting the documented rule
  recommends (:data:`~listwise_ranking.relevance.calibration.RULE`). Use it on validation or calibration
  judgments only, never on the split you report results on.
* ``--cfg-path`` alone: a run YAML whose ``run.gt_relevance`` names ground-truth files. It builds the
  datasets as training would and prints :func:`~.evaluation.ground_truth.relevance_agreement` of RSC
  (the YAML's shaping) for every evaluation split with ground truth. No model is built. Change the
  shaping with ``--options model.listwise.relevance.floor=0.6`` to compare relevance sources.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..evaluation.report import format_agreement

__all__ = ["judgments_report", "relevance_report", "run_relevance_report"]


def relevance_report(cfg_path: str, options: list[str]) -> dict:
    """``{"relevance": <description>, <split>: agreement, ...}`` for the YAML's evaluation splits
    with ground truth.

    Raises:
        ConfigError if ``run.gt_relevance`` names no split; the errors of building the datasets.
    """
    import lavis.tasks as tasks

    from listwise_ranking.errors import ConfigError

    from ..config import ListwiseConfig
    from .run_config import load_run_config

    cfg = load_run_config(cfg_path, options)
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


def judgments_report(
    annotation_path: str | os.PathLike,
    specs: list[str],
    *,
    batch_size: int,
    floors: list[float],
    relevance=None,
) -> dict:
    """The ``--annotation`` route: every setting against every judgment source.

    Args:
        annotation_path: a LAVIS evaluation annotation (``[{"image": ..., "caption": [...]}, ...]``).
        specs: judgment sources (:func:`~listwise_ranking.relevance.judgments.read_judgments`).
        batch_size: the run's global batch size (the in-batch list length).
        floors: fixed floors to compare (besides the paper's mapping and ``floor: auto``).
        relevance: a ``RelevanceConfig`` for the encoder and cache (``None``: the defaults).
    """
    import torch
    from lavis.processors.blip_processors import BlipCaptionProcessor

    from listwise_ranking.errors import DataError
    from listwise_ranking.relevance import best_cosines, caption_groups_to_index
    from listwise_ranking.relevance.calibration import (
        RULE,
        auto_floor_from_table,
        calibration_table,
        settings_grid,
    )
    from listwise_ranking.relevance.judgments import read_judgments

    from ..config import RelevanceConfig
    from ..datasets.retrieval_listwise import eval_annotation_problems, read_annotation_file

    if batch_size < 2:
        raise DataError(
            f"--batch-size must be at least 2 (a list of one caption has no order), got {batch_size}"
        )
    annotation = read_annotation_file(annotation_path)
    problems = eval_annotation_problems([(os.fspath(annotation_path), annotation)])
    if problems:
        raise DataError(f"--annotation: {problems[0]}")
    process = BlipCaptionProcessor()  # LAVIS's eval datasets process captions with blip_caption
    texts: list[str] = []
    groups = []
    for entry in annotation:
        groups.append(list(range(len(texts), len(texts) + len(entry["caption"]))))
        texts += [process(c) for c in entry["caption"]]
    relevance = relevance or RelevanceConfig.from_cfg({})
    table = relevance.caption_cache().get(texts)
    index = caption_groups_to_index(groups)
    cosines = best_cosines(table[index.clamp(min=0)], table, index >= 0)
    annotated = torch.zeros(cosines.shape, dtype=torch.bool)
    for image, rows in enumerate(groups):
        annotated[image, rows] = True
    auto = auto_floor_from_table(table, index)
    settings = settings_grid(floors, auto)
    report: dict = {
        "annotation": os.fspath(annotation_path),
        "images": len(annotation),
        "captions": len(texts),
        "encoder": relevance.encoder or "all-MiniLM-L6-v2 (bundled)",
        "batch_size": batch_size,
        "auto_floor": auto,
        "rule": RULE,
        "sources": {},
    }
    for spec in specs:
        judgments = read_judgments(spec, annotation, len(texts), "--judgments")
        table_ = calibration_table(
            cosines, annotated, judgments.relevant, judgments.judged, settings, batch_size, judgments.ratings
        )
        report["sources"][spec] = {
            "source": judgments.source,
            "mapped": judgments.mapped,
            "total": judgments.total,
            **table_,
        }
    return report


_JUDGMENT_COLUMNS = (
    ("map_r", "mAP@R", "{:.2f}"),
    ("r_precision", "R-P", "{:.2f}"),
    ("spearman", "Spearman", "{:.3f}"),
    ("gain_relevant", "gain relevant", "{:.3f}"),
    ("gain_irrelevant", "gain irrelevant", "{:.4f}"),
    ("gain_ratio", "ratio", "{:.1f}"),
    ("relevant_at_zero", "relevant at 0", "{:.1%}"),
    ("irrelevant_share", "irrelevant share", "{:.1%}"),
)


def format_judgments_report(report: dict) -> str:
    """The ``--annotation`` report as text: one Markdown table per judgment source."""
    lines = [
        f"{report['images']} images, {report['captions']} captions of {report['annotation']}; "
        f"encoder {report['encoder']}; batch size {report['batch_size']}; "
        f"floor auto = {report['auto_floor']:.3f} (from these captions alone)"
    ]
    for spec, source in report["sources"].items():
        lines += [
            "",
            f"{spec}: {source['source']}: {source['mapped']} of {source['total']} judgments map onto the "
            f"annotation; {source['judged_images']} judged images, {source['relevant_pairs']} "
            f"judged-relevant extra pairs; equal-error cosine {source['equal_error_cosine']:.3f}",
            "| setting | " + " | ".join(name for _, name, _ in _JUDGMENT_COLUMNS) + " |",
            "|" + "---|" * (len(_JUDGMENT_COLUMNS) + 1),
        ]
        for row in source["rows"]:
            cells = ["" if row[k] is None else fmt.format(row[k]) for k, _, fmt in _JUDGMENT_COLUMNS]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        picked = source["recommended"] or "none (no setting keeps enough judged-relevant pairs)"
        lines.append(f"recommended ({report['rule']}): {picked}")
    return "\n".join(lines)


def _write_json(report: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)  # never a half-written file
    print(f"written to {path}")


def run_relevance_report(args: argparse.Namespace) -> int:
    """The ``relevance-report`` command: print the report (and write it as JSON with ``--json``)."""
    from listwise_ranking.errors import ConfigError

    if args.annotation is not None:
        if not args.judgments:
            raise ConfigError(
                "--annotation needs --judgments (eccv, cxc, cxc-graded:SITS.csv, plain:FILE.csv)"
            )
        relevance = None
        if args.cfg_path is not None:
            relevance = _yaml_relevance(args.cfg_path, list(args.options))
        from listwise_ranking.relevance.calibration import DEFAULT_FLOORS

        floors = list(DEFAULT_FLOORS) if args.floors is None else args.floors
        report = judgments_report(
            args.annotation, args.judgments, batch_size=args.batch_size, floors=floors, relevance=relevance
        )
        print(format_judgments_report(report))
    else:
        if args.cfg_path is None:
            raise ConfigError(
                "give --cfg-path (a run YAML with run.gt_relevance) or --annotation and --judgments"
            )
        report = relevance_report(args.cfg_path, list(args.options))
        print(f"agreement of the training relevance ({report['relevance']}) with the ground truth:")
        if "note" in report:
            print(f"  ({report['note']})")
        for split, values in report.items():
            if isinstance(values, dict):
                print(format_agreement(split, values))
    if args.json is not None:
        _write_json(report, Path(args.json))
    return 0


def _yaml_relevance(cfg_path: str, options: list[str]):
    """``model.listwise.relevance`` of a run YAML (encoder and cache for the ``--annotation`` route)."""
    from ..config import ListwiseConfig
    from .run_config import load_run_config

    cfg = load_run_config(cfg_path, options)
    return ListwiseConfig.from_cfg(cfg.model_cfg.get("listwise")).relevance
