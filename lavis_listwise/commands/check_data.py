"""``lavis-listwise check-data``: open every image of every split fully and check every annotation,
so a bad download is found before a GPU job starts, not mid-epoch.

The dataset configs come from LAVIS's own ``Config`` (the builders' default YAMLs merged with the run
YAML and ``--options``, after the plugin is registered and :func:`~.config_check.check_config` has
passed). Each split's annotation files get the same validation as when the datasets are built
(:mod:`.datasets.retrieval_listwise`), and every distinct image file is decoded in a process pool
with ``ImageFile.LOAD_TRUNCATED_IMAGES = False``: LAVIS sets it to ``True`` on import
(``lavis/datasets/datasets/coco_caption_datasets.py``), so training would load a truncated JPEG
silently, its missing part grey. A summary lists every problem with its file; the exit code is 1 if
there is any. Nothing is downloaded and nothing is written.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["DataReport", "check_data", "open_image_fully", "run_check_data"]


@dataclass
class DataReport:
    """What :func:`check_data` found.

    Attributes:
        summary: one line per checked split (annotation files, entries, images).
        problems: one line per problem, each naming its file.
        notes: what was not checked, and why.
        n_images: distinct image files opened.
    """

    summary: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_images: int = 0


def _strict_pil() -> None:
    """Pool initializer: report truncated files instead of padding them (LAVIS's setting is ``True``)."""
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_image_fully(path: str) -> str | None:
    """Decode the whole image at ``path`` as LAVIS's datasets do (``convert("RGB")``); ``None`` if it
    decodes, else why not. Truncation is an error only under ``LOAD_TRUNCATED_IMAGES = False``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.convert("RGB")  # decodes every pixel
    except FileNotFoundError:
        return "does not exist"
    except Exception as err:  # PIL raises OSError, UnidentifiedImageError, DecompressionBombError...
        return f"cannot be decoded ({type(err).__name__}: {err})"
    return None


def _open_with_path(path: str) -> tuple[str, str | None]:
    return path, open_image_fully(path)


def _open_all(paths: list[str], workers: int, progress: bool) -> dict[str, str]:
    """``{path: why}`` for every image in ``paths`` that does not decode fully."""
    from PIL import ImageFile
    from tqdm.auto import tqdm

    failures: dict[str, str] = {}
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    with tqdm(total=len(paths), desc="opening images", unit="img", disable=not progress) as bar:
        if workers <= 1:  # in this process, LAVIS's setting restored afterwards
            _strict_pil()
            try:
                for path in paths:
                    why = open_image_fully(path)
                    failures.update({path: why} if why else {})
                    bar.update()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = saved
            return failures
        # fork: workers start without re-importing torch and LAVIS (spawn takes seconds per worker)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        chunk = max(1, min(64, len(paths) // (workers * 8)))
        with multiprocessing.get_context(method).Pool(workers, initializer=_strict_pil) as pool:
            for path, why in pool.imap_unordered(_open_with_path, paths, chunksize=chunk):
                failures.update({path: why} if why else {})
                bar.update()
    return failures


def _get(cfg, key: str):
    """``cfg[key]``, or ``None`` when absent or ``???`` (a value the YAML leaves to the command line)."""
    from omegaconf import OmegaConf

    return None if cfg is None or key not in cfg or OmegaConf.is_missing(cfg, key) else cfg[key]


def _storages(value) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _abs(path: str) -> str:
    from lavis.common.utils import get_cache_path

    return path if os.path.isabs(path) else get_cache_path(path)


def _check_builder(name: str, ds_cfg, report: DataReport, images: dict[str, str]) -> None:
    """Annotations of every split of one dataset; fills ``images`` with ``{path: first reference}``."""
    from lavis.common.registry import registry
    from lavis.datasets.datasets.retrieval_datasets import RetrievalDataset, RetrievalEvalDataset

    from listwise_ranking.errors import DataError

    from ..datasets.retrieval_listwise import (
        eval_annotation_problems,
        read_annotation_file,
        train_annotation_problems,
    )
    from ..tasks.retrieval_listwise import shared_image_problems

    builder = registry.get_builder_class(name)
    if not (
        issubclass(builder.train_dataset_cls or object, RetrievalDataset)
        and issubclass(builder.eval_dataset_cls or object, RetrievalEvalDataset)
    ):
        report.notes.append(f"datasets.{name}: not an image-text retrieval builder; not checked")
        return
    key = f"datasets.{name}.build_info"
    data_type = _get(ds_cfg, "data_type") or "images"
    storage = _get(_get(ds_cfg.build_info, data_type), "storage")
    if storage is None:
        report.problems.append(f"{key}.{data_type}.storage: not set")
        return
    vis_root = _abs(str(storage))
    if not os.path.isdir(vis_root):
        report.problems.append(f"{key}.{data_type}.storage: image directory {vis_root} does not exist")
    annotations = _get(ds_cfg.build_info, "annotations") or {}
    for split in annotations:
        if split not in ("train", "val", "test"):  # LAVIS builds only these
            continue
        info = annotations[split]
        if _get(info, "storage") is None:
            report.problems.append(f"{key}.annotations.{split}.storage: not set")
            continue
        files = []
        for storage in _storages(info.storage):
            path = _abs(storage)
            if not os.path.isfile(path):
                url = _get(info, "url")
                hint = f" (train would download it from {url})" if url else ""
                report.problems.append(f"{key}.annotations.{split}.storage: {path} does not exist{hint}")
                continue
            try:
                files.append((path, read_annotation_file(path)))
            except DataError as err:
                report.problems.append(str(err))
        if not files:
            continue
        is_train = split == "train"
        report.problems += train_annotation_problems(files) if is_train else eval_annotation_problems(files)
        if is_train:  # one image file under two image_ids: its captions would be each other's negatives
            report.problems += shared_image_problems(
                (f"{path}: entry {i}", entry) for path, entries in files for i, entry in enumerate(entries)
            )
        refs = 0
        for path, entries in files:
            for index, entry in enumerate(entries):
                image = entry.get("image") if isinstance(entry, dict) else None
                if isinstance(image, str) and image.strip():
                    images.setdefault(os.path.join(vis_root, image), f"{path} entry {index}")
                    refs += 1
        n_entries = sum(len(e) for _, e in files)
        report.summary.append(
            f"{name} {split}: {n_entries} entries, {refs} image references in "
            + ", ".join(p for p, _ in files)
        )


def check_data(
    cfg_path: str, options: Sequence[str] = (), workers: int | None = None, progress: bool = True
) -> DataReport:
    """Check every split of every dataset of a run YAML (see the module docstring).

    Raises:
        ConfigError: the YAML or ``--options`` are refused by :func:`~.config_check.check_config`.
    """
    from listwise_ranking.errors import CheckpointError

    from .run_config import load_run_config

    cfg = load_run_config(cfg_path, options)
    report = DataReport()
    images: dict[str, str] = {}
    for name in cfg.datasets_cfg:
        _check_builder(name, cfg.datasets_cfg[name], report, images)
    workers = max(1, workers if workers is not None else min(16, os.cpu_count() or 1))
    start = time.perf_counter()
    failures = _open_all(sorted(images), workers, progress)
    report.n_images = len(images)
    report.summary.append(
        f"images: {len(images)} distinct files opened fully in {time.perf_counter() - start:.1f} s "
        f"({workers} worker{'s' if workers > 1 else ''}), {len(failures)} unusable"
    )
    report.problems += [
        f"{path}: {why} (first listed in {images[path]})" for path, why in sorted(failures.items())
    ]
    resume = cfg.run_cfg.get("resume_ckpt_path")
    if resume:
        from ..runners.runner_listwise import load_checkpoint_file

        try:
            load_checkpoint_file(resume)
        except CheckpointError as err:
            report.problems.append(str(err))
    return report


def print_report(report: DataReport, cfg_path: str, out: TextIO = sys.stdout) -> None:
    print(f"check-data: {cfg_path}", file=out)
    for line in report.summary:
        print(f"  {line}", file=out)
    for line in report.notes:
        print(f"  note: {line}", file=out)
    if report.problems:
        print(f"{len(report.problems)} problem(s):", file=out)
        for line in report.problems:
            print(f"  {line}", file=out)
    else:
        print("no problems found", file=out)
    out.flush()


def run_check_data(args: argparse.Namespace) -> int:
    """The ``check-data`` command: print the report; 1 if it lists any problem, else 0."""
    report = check_data(args.cfg_path, args.options, workers=args.workers, progress=True)
    print_report(report, args.cfg_path)
    return 1 if report.problems else 0
