"""``lavis-listwise demo``: pairwise vs listwise fine-tuning of a tiny BLIP on synthetic data.

Everything goes through the real LAVIS flow (``retrieval_listwise`` task, ``runner_listwise``,
``blip_retrieval_listwise`` from ``projects/demo/*.yaml``): the same model is trained twice from
the same seed, once with ``model.listwise.weight: 0`` (LAVIS's ITC + ITM) and once with the S-NDCG
term, then both are evaluated on the test split. Output: a table on stdout, ``results.json`` and
``rankings.png`` (top-5 images of three fixed text queries for each model, with their ground-truth
and training relevance).

The generator knows every scene, so it writes each split's ground-truth relevance (the share of a
caption's statements that hold in an image, :mod:`lavis_listwise.demo.synthetic`); the demo
passes the val and test files as ``run.gt_relevance``, so the table has the ``gt_*`` metrics
(NDCG@K, mAP@R, R-Precision against the ground truth) next to the recalls and the RSC NDCG, and
``results.json`` has ``relevance_agreement``: how well the training relevance matches the ground
truth on those splits (:func:`lavis_listwise.evaluation.relevance_agreement`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image, ImageDraw, ImageFont

from listwise_ranking.errors import ConfigError

from ..evaluation.report import format_agreement
from ..resources import config_path

__all__ = ["run_demo", "METRICS", "demo_data_root", "train_arms", "usable_cores", "validation_data_options"]

METRICS = ["txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"] + [
    f"{d}_ndcg{k}" for k in (5, 10, 20) for d in ("txt", "img")
]
#: Metrics against the generator's ground-truth relevance (``run.gt_relevance``).
GT_METRICS = [f"gt_{d}_ndcg{k}" for k in (5, 10, 20) for d in ("txt", "img")] + [
    f"gt_{d}_{m}" for m in ("map_r", "r_precision") for d in ("txt", "img")
]
METRICS += GT_METRICS
DATASET = "datasets.retrieval_listwise_json.build_info"
#: Evaluation splits the demo gives ground truth for (the YAML's valid_splits and test_splits).
GT_SPLITS = ("val", "test")


def demo_data_root(data: dict) -> Path:
    """Where the demo generates the dataset of ``demo.data`` when ``--data-dir`` is not given: the
    cache directory, named by a digest of those parameters (so a change of them never reuses data)."""
    from ..config import default_cache_dir

    tag = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    return default_cache_dir() / "demo" / f"synthetic-{tag}"


def validation_data_options(root: Path) -> list[str]:
    """Dataset paths of the demo's data at ``root`` with the val annotations in the place of test
    (LAVIS's builder reads every annotation entry), so the test split is never read: for choosing
    settings (``benchmarks/``) without touching test."""
    opts = [f"{DATASET}.images.storage={root}"]
    opts += [f"{DATASET}.annotations.{s}.storage={root}/annotations/{s}.json" for s in ("train", "val")]
    return opts + [f"{DATASET}.annotations.test.storage={root}/annotations/val.json"]


def _data_options(root: Path) -> list[str]:
    from .synthetic import relevance_file

    opts = [f"{DATASET}.images.storage={root}"]
    opts += [
        f"{DATASET}.annotations.{s}.storage={root}/annotations/{s}.json" for s in ("train", "val", "test")
    ]
    opts += [f"run.gt_relevance.{s}={relevance_file(root, s)}" for s in GT_SPLITS]
    return opts


def _train_one(cfg_path: str, options: list[str], job_id: str) -> dict:
    """One LAVIS run; returns test metrics, the test score matrices and what the picture needs."""
    from ..commands.train import build_run

    runner = build_run(argparse.Namespace(cfg_path=cfg_path, options=options, job_id=job_id), quiet=True)
    task = runner.task
    test_scores = []  # text->image scores of the test split, from the task's evaluation

    def keep_test_scores(dataset, score_i2t, score_t2i) -> None:
        if dataset is runner.datasets["test"]:
            test_scores.append(score_t2i)

    task.add_score_listener(keep_test_scores)
    logs = runner.train()
    score_t2i = test_scores[-1]  # the runner's last evaluation: the test split, after training
    relevance_cfg = runner.unwrap_dist_model(runner.model).listwise_cfg.relevance
    return {
        "metrics": {k: float(logs["test"][k]) for k in METRICS},
        "score_t2i": torch.as_tensor(score_t2i),
        "dataset": runner.datasets["test"],
        "relevance_cfg": relevance_cfg,
        "task": task,
        "agreement": {s: task.relevance_agreement(runner.datasets[s], relevance_cfg) for s in GT_SPLITS},
        "output_dir": str(runner.output_dir),
    }


def _single_threaded_worker() -> None:
    """Initializer of a demo worker process: one torch thread, so that a core taken by another
    process slows this arm down in proportion instead of stalling every parallel region (a 2-thread
    arm went from 0.15 s to 7 s a step beside one busy process), and so that an arm's numbers do not
    depend on the machine's core count."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _train_arm(cfg_path: str, options: list[str], job_id: str, log_path: str, picture: bool) -> dict:
    """One (seed, arm) of the demo in its own worker process, its output in ``log_path``.

    Returns what the parent needs, picklable: test metrics, text->image test scores, the relevance
    agreement, and with ``picture`` what :func:`draw_rankings` needs of the test split.
    """
    from ..distributed import process_group_released

    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)  # LAVIS's progress and the runner's lines go to the arm's log, not the terminal
    os.dup2(log, 2)
    start = time.time()
    with process_group_released():  # this process's one-process group
        run = _train_one(cfg_path, options, job_id)
    relevance_cfg = run["relevance_cfg"]
    out = {
        "metrics": run["metrics"],
        "score_t2i": run["score_t2i"].numpy(),  # numpy: pickled by value (a torch tensor would
        "agreement": run["agreement"],  # travel as a shared-memory handle this process takes with it)
        "relevance": relevance_cfg.describe(),
        "relevance_file": relevance_cfg.relevance_file is not None,
        "seconds": time.time() - start,
    }
    if picture:
        dataset = run["dataset"]
        out["picture"] = {
            "text": list(dataset.text),
            "image": list(dataset.image),
            "vis_root": str(dataset.vis_root),
            "txt2img": dict(dataset.txt2img),
            "relevance": run["task"].eval_relevance(dataset, relevance_cfg).numpy(),
            "ground_truth": dataset.ground_truth.relevance.numpy(),
        }
    return out


def usable_cores() -> int:
    """The cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def train_arms(
    cfg_path: str,
    jobs: list[tuple[int, str, list[str]]],
    output_dir: Path,
    workers: int,
    picture: bool = True,
) -> dict:
    """Every ``(seed, arm name, options)`` in its own single-threaded process, ``workers`` at a time;
    each arm's log in ``output_dir/seed<seed>-<name>.log``. The demo's and
    ``benchmarks/demo_listwise_sweep.py``'s way of training several arms.

    Each arm runs in a fresh process whatever ``workers`` is, so the numbers are the same for any
    worker count and any machine's core count. With ``picture`` the first job also returns what
    :func:`draw_rankings` needs. Returns ``{seed: {name: result of _train_arm}}``.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    runs: dict[int, dict[str, dict]] = {}
    first = jobs[0][:2]
    print(
        f"[demo] {len(jobs)} training runs, {workers} at a time, each a single-threaded process; "
        f"their output: {output_dir}/<seed>-<arm>.log",
        flush=True,
    )
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per arm: nothing inherited
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_threaded_worker,
                             max_tasks_per_child=1) as pool:  # fmt: skip
        pending = {}
        for seed, name, options in jobs:
            job_id = f"seed{seed}-{name}"
            log = output_dir / f"{job_id}.log"
            draw = picture and (seed, name) == first
            future = pool.submit(_train_arm, cfg_path, options, job_id, str(log), draw)
            pending[future] = (seed, name, log)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                seed, name, log = pending.pop(future)
                try:
                    result = future.result()
                except Exception:
                    print(f"[demo] seed {seed}: {name} failed; the end of {log}:", flush=True)
                    print(_tail(log), flush=True)
                    for other in pending:
                        other.cancel()
                    raise
                result["score_t2i"] = torch.from_numpy(result["score_t2i"])
                runs.setdefault(seed, {})[name] = result
                print(
                    f"[demo] seed {seed}: {name} done in {result['seconds']:.0f} s "
                    f"(test r_mean {result['metrics']['r_mean']:.2f}); {len(pending)} to go",
                    flush=True,
                )
    return runs


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _tile(path: Path, size: int) -> Image.Image:
    return Image.open(path).convert("RGB").resize((size, size), Image.NEAREST)


def draw_rankings(
    out: Path,
    dataset,
    relevance: torch.Tensor,
    scores: dict,
    queries: list[int],
    k: int = 5,
    ground_truth: torch.Tensor | None = None,
) -> None:
    """For each query caption, the top-``k`` images of each model with their relevance.

    Under each image: its rank, its ground-truth relevance ``gt`` (when ``ground_truth`` is given;
    ``gt 1.00`` is a plausible positive: every statement of the query holds) and the training
    relevance ``train`` (``relevance``, RSC as the model trains on it). The query's annotated image
    is framed in green and marked ``own``. A legend at the bottom says this.

    Args:
        relevance: ``[n_images, n_captions]`` training relevance of the split.
        scores: model name -> ``[n_captions, n_images]`` text->image scores.
        ground_truth: ``[n_images, n_captions]`` ground-truth relevance, or ``None``.
    """
    tile, pad, text_h = 96, 8, 34
    label_h = 34 if ground_truth is not None else 18
    font = ImageFont.load_default(size=13)
    names = list(scores)
    width = pad + len(names) * (k * (tile + pad) + 2 * pad)
    legend_h = 36 if ground_truth is not None else 0
    height = pad + len(queries) * (text_h + tile + label_h + 2 * pad) + 24 + legend_h
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for m, name in enumerate(names):
        draw.text((pad + m * (k * (tile + pad) + 2 * pad), 4), name, fill="black", font=font)
    y = 24
    for q in queries:
        draw.text((pad, y), f'query: "{dataset.text[q]}"', fill="black", font=font)
        y += text_h - 14
        for m, name in enumerate(names):
            x0 = pad + m * (k * (tile + pad) + 2 * pad)
            top = scores[name][q].topk(k).indices.tolist()
            for r, img in enumerate(top):
                x = x0 + r * (tile + pad)
                canvas.paste(_tile(Path(dataset.vis_root) / dataset.image[img], tile), (x, y))
                gt = dataset.txt2img[q] == img
                rel = float(relevance[img, q])
                if gt:
                    draw.rectangle([x - 2, y - 2, x + tile + 1, y + tile + 1], outline="green", width=3)
                if ground_truth is None:
                    label = f"#{r + 1} rel {rel:.2f}{' GT' if gt else ''}"
                else:
                    own = " own" if gt else ""
                    label = f"#{r + 1} gt {float(ground_truth[img, q]):.2f}{own}\ntrain {rel:.2f}"
                draw.text((x, y + tile + 2), label, fill="black", font=font, spacing=2)
        y += tile + label_h + 2 * pad
    if ground_truth is not None:
        legend = (
            "gt: ground-truth relevance from the scenes (1.00: every statement of the query holds)\n"
            "train: the relevance the model trains on;  own / green frame: the query's annotated image"
        )
        draw.text((pad, y), legend, fill="black", font=font)
    canvas.save(out)


def seed_comparison(per_seed: dict) -> dict:
    """Listwise minus pairwise for every metric over seeds, with a paired t-test.

    Args:
        per_seed: ``{seed: {"pairwise": {metric: value}, "listwise": {metric: value}}}``.
    Returns:
        ``{metric: PairedDifference}`` (:func:`listwise_ranking.stats.paired_difference`).
    """
    from listwise_ranking.stats import paired_difference

    seeds = list(per_seed)
    return {
        k: paired_difference(
            [per_seed[s]["listwise"][k] for s in seeds], [per_seed[s]["pairwise"][k] for s in seeds]
        )
        for k in METRICS
    }


def top5_concentration(score_t2i: dict) -> dict:
    """How query-specific each model's text->image top-5 lists are (:func:`~listwise_ranking.stats.
    retrieval_concentration`): a model that returns the same few images for every query holds most
    top-5 slots with a few images and never retrieves most of the others.

    Args:
        score_t2i: ``{seed: {model name: [n_captions, n_images] scores}}``.
    Returns:
        ``{"per_seed": {seed: {name: {top10_share, never_retrieved, popularity_share}}},
        "mean": {name: {...}}}`` (the mean over seeds).
    """
    from listwise_ranking.stats import retrieval_concentration

    per_seed = {
        str(s): {n: retrieval_concentration(scores, k=5) for n, scores in models.items()}
        for s, models in score_t2i.items()
    }
    first = next(iter(per_seed.values()))
    names, keys = list(first), list(next(iter(first.values())))
    mean = {n: {k: statistics.fmean(per_seed[s][n][k] for s in per_seed) for k in keys} for n in names}
    return {"per_seed": per_seed, "mean": mean}


def format_concentration(concentration: dict, n_images: int) -> str:
    """The demo's printed concentration lines (the mean over seeds)."""
    lines = [
        f"\n[demo] text->image top-5 concentration on test ({100 * 10 / n_images:.0f}% and 0% if every one "
        f"of the {n_images} images were retrieved equally often; a model returning the same few images "
        "for every query gives the 10 most retrieved most of the slots)"
    ]
    for name, c in concentration["mean"].items():
        lines.append(
            f"{name:<10} top-10 images hold {100 * c['top10_share']:5.1f}% of top-5 slots, "
            f"{100 * c['never_retrieved']:5.1f}% of images never retrieved"
        )
    return "\n".join(lines)


def _table(rows: dict[str, dict[str, float]]) -> str:
    names = list(rows)
    width = max(len(k) for k in ["metric", *METRICS]) + 2
    head = f"{'metric':<{width}}" + "".join(f"{n:>14}" for n in names)
    lines = [head, "-" * len(head)]
    for key in METRICS:
        lines.append(f"{key:<{width}}" + "".join(f"{rows[n][key]:>14.2f}" for n in names))
    return "\n".join(lines)


def _checked_weight(value, key: str, combine: str) -> float:
    """The listwise arm's weight, checked before the pairwise arm trains (finite, >= 0, <= 1 with
    ``combine: convex``)."""
    from listwise_ranking.losses import check_combine

    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(weight):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    try:
        check_combine(weight, combine)
    except ValueError as err:
        raise ConfigError(f"{key}: {err} (model.listwise.combine: {combine})") from None
    return weight


def _directory_argument(path: Path, option: str, create: bool = True) -> Path:
    """``path`` unless it exists and is not a directory (a file where a directory is wanted)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option}: {str(path)!r} is a file, not a directory")
    return path


def run_demo(
    quick: bool = False,
    seeds: list[int] | None = None,
    output_dir: str | Path = "output/demo",
    data_dir: str | Path | None = None,
    cfg_path: str | None = None,
    listwise_weight: float | None = None,
    extra_options: list[str] | None = None,
    workers: int | None = None,
) -> dict:
    """Train pairwise and listwise from the same seed(s); print the table, write JSON and PNG.

    Each (seed, arm) trains in its own single-threaded process, ``workers`` at a time (default: the
    usable cores, at most the number of runs); the numbers do not depend on ``workers``."""
    from omegaconf import OmegaConf

    from ..config import check_run_device
    from ..config_io import read_yaml_file
    from .synthetic import ensure_synthetic_dataset

    start = time.time()
    cfg_path = cfg_path or config_path(f"projects/demo/{'demo_quick' if quick else 'demo'}.yaml")
    spec = read_yaml_file(cfg_path).demo  # a missing or malformed --cfg-path is one message
    data = dict(spec.data)
    # checked now, not after the pairwise arm has trained
    combine = OmegaConf.select(read_yaml_file(cfg_path), "model.listwise.combine", default="add")
    weight = _checked_weight(
        spec.listwise_weight if listwise_weight is None else listwise_weight,
        "demo.listwise_weight" if listwise_weight is None else "--weight",
        str(combine),
    )
    check_run_device(cfg_path, list(extra_options or []))
    seeds = list(seeds or [0])
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers must be a whole number >= 1, got {workers!r}")
    output_dir = _directory_argument(Path(output_dir).expanduser().resolve(), "--output-dir")
    if data_dir is not None:
        _directory_argument(Path(data_dir).expanduser(), "--data-dir", create=False)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--output-dir: cannot create {str(output_dir)!r}: {err.strerror or err}") from None
    root = Path(data_dir or demo_data_root(data))
    print(f"[demo] data: {data} -> {root}", flush=True)
    root = ensure_synthetic_dataset(root, **data)

    # the demo owns its output directory: a rerun replaces the earlier run's arms (results.json too)
    base = _data_options(root) + [f"run.output_dir={output_dir}", "run.overwrite_output=True"]
    base += list(extra_options or [])
    jobs = [
        (seed, name, base + [f"model.listwise.weight={w}", f"run.seed={seed}"])
        for seed in seeds
        for name, w in (("pairwise", 0.0), ("listwise", weight))
    ]
    workers = min(len(jobs), workers or usable_cores())
    runs = train_arms(str(cfg_path), jobs, output_dir, workers)

    names = ["pairwise", "listwise"]
    mean = {n: {k: statistics.fmean(runs[s][n]["metrics"][k] for s in seeds) for k in METRICS} for n in names}
    paired = seed_comparison({s: {n: runs[s][n]["metrics"] for n in names} for s in seeds})
    mean["difference"] = {k: p.mean for k, p in paired.items()}
    std = {k: p.std for k, p in paired.items()}

    first = runs[seeds[0]]
    context = first["pairwise"]["picture"]
    dataset = SimpleNamespace(**{k: context[k] for k in ("text", "image", "vis_root", "txt2img")})
    queries = [q % len(dataset.text) for q in spec.queries]
    png = output_dir / "rankings.png"
    scores = {n: first[n]["score_t2i"] for n in names}
    relevance, ground_truth = (torch.from_numpy(context[k]) for k in ("relevance", "ground_truth"))
    draw_rankings(png, dataset, relevance, scores, queries, ground_truth=ground_truth)
    # the training relevance is the same for both models (only the loss weight differs)
    agreement = {"relevance": first["pairwise"]["relevance"], **first["pairwise"]["agreement"]}
    if first["pairwise"]["relevance_file"]:
        agreement["note"] = (
            "the training relevance is a file for the train split; the numbers are those of RSC "
            "(the evaluation's relevance) on the evaluation splits"
        )

    concentration = top5_concentration({s: {n: runs[s][n]["score_t2i"] for n in names} for s in seeds})

    elapsed = time.time() - start
    result = {
        "config": str(cfg_path),
        "data": {**data, "root": str(root)},
        "listwise_weight": weight,
        "seeds": seeds,
        "per_seed": {str(s): {n: runs[s][n]["metrics"] for n in names} for s in seeds},
        "mean": mean,
        "difference_std": std,
        "paired_tests": {k: p.as_dict() for k, p in paired.items()},
        "relevance_agreement": agreement,
        "concentration": concentration,
        "picture": str(png),
        "elapsed_s": round(elapsed, 1),
        "workers": workers,
    }
    (output_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    title = f"test split, mean over seeds {seeds}" if len(seeds) > 1 else f"test split, seed {seeds[0]}"
    print(f"\n[demo] agreement of the training relevance ({agreement['relevance']}) with the ground truth:")
    print("\n".join(format_agreement(s, agreement[s]) for s in GT_SPLITS))
    print(
        f"\n[demo] {title} (in %; ndcg: NDCG against the training relevance (RSC); gt_*: against the "
        "generator's ground-truth relevance)"
    )
    print(_table(mean))
    if len(seeds) > 1:
        print(f"\n[demo] listwise - pairwise over {len(seeds)} seeds: mean +- std, paired t-test p")
        print(
            "\n".join(
                f"{k:<20} {p.mean:+8.2f} +- {p.std:5.2f}   p = {p.p_value:.3f}" for k, p in paired.items()
            )
        )
    print(format_concentration(concentration, len(dataset.image)))
    print(f"\n[demo] results: {output_dir / 'results.json'}\n[demo] picture: {png}")
    print(f"[demo] elapsed: {elapsed:.0f} s")
    logging.getLogger(__name__).info("demo finished in %.0f s", elapsed)
    return result
