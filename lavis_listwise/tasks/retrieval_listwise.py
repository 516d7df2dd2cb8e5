"""``retrieval_listwise``: LAVIS's retrieval task, logging every loss term, with graded metrics."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lavis.common.dist_utils import is_main_process
from lavis.common.logger import MetricLogger, SmoothedValue
from lavis.common.registry import registry
from lavis.common.utils import get_cache_path
from lavis.datasets.data_utils import prepare_sample
from lavis.tasks.retrieval import RetrievalTask
from tqdm.auto import tqdm

from listwise_ranking.errors import ConfigError, NonFiniteLossError

from ..config import EvalSettings, RelevanceConfig, check_environment
from ..datasets.retrieval_listwise import ListwiseRetrievalDataset
from ..distributed import rank_and_world
from ..evaluation import (
    RerankView,
    ScoringOptions,
    annotated_pairs,
    coco_1k_folds,
    coco_1k_metrics,
    coco_ids_from_annotation,
    eccv_caption_metrics,
    ground_truth_metrics,
    gt_relevance_paths,
    is_coco_karpathy_test,
    load_ground_truth,
    positive_threshold,
    ranking_report,
    relevance_agreement,
    retrieval_scores,
    rsc_ndcg_metrics,
    split_rsc_relevance,
    write_rankings,
)
from ..registration import register_once

__all__ = [
    "RetrievalListwiseTask",
    "check_image_headers",
    "check_run_sizes",
    "checked_loss_values",
    "gradient_norm",
    "shared_image_problems",
]


def relevance_config_of(model) -> RelevanceConfig:
    """The model's ``listwise.relevance`` settings; defaults for a stock LAVIS model."""
    cfg = getattr(model, "listwise_cfg", None)
    return cfg.relevance if cfg is not None else RelevanceConfig()


# Replaces lavis.common.logger.MetricLogger.synchronize_between_processes: CUDA only (UPSTREAMING 4).
def _synchronize_meters(metric_logger: MetricLogger) -> None:
    """Sum every meter's count and total over ranks. LAVIS's ``synchronize_between_processes``
    puts the tensor on ``cuda`` unconditionally, which fails on CPU (gloo)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    for meter in metric_logger.meters.values():
        t = torch.tensor([meter.count, meter.total], dtype=torch.float64, device=device)
        dist.barrier()
        dist.all_reduce(t)
        meter.count, meter.total = int(t[0].item()), t[1].item()


@register_once("task", "retrieval_listwise")
class RetrievalListwiseTask(RetrievalTask):
    """Trains like LAVIS's ``retrieval`` task and reports, besides its recalls, NDCG@5/10/20 in
    both directions against RSC relevance over the whole evaluation split, and, for splits that
    ``run.gt_relevance`` gives ground truth for, NDCG@5/10/20, mAP@R and R-Precision against it
    (``gt_*``, :mod:`lavis_listwise.evaluation`).

    ``run.agg_metric`` picks the metric used for model selection (default ``r_mean``).

    LAVIS's runner keeps only the metrics of :meth:`evaluation`; code that needs the score matrices
    themselves (the demo draws rankings from them) registers a callback with
    :meth:`add_score_listener`.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.agg_metric = str(cfg.get("agg_metric", "r_mean"))
        self._batch_size_train = int(cfg.get("batch_size_train", 2) or 2)  # checked in check_run_sizes
        self.train_caption_datasets: list[ListwiseRetrievalDataset] = []
        self._eval_relevance: dict[tuple, torch.Tensor] = {}
        self._relevance_agreement: dict[tuple, dict] = {}
        self.eval_settings = EvalSettings.from_run_cfg(cfg)
        self._rankings: dict | None = None
        self._coco_id_cache: dict[int, tuple[list[int], list[int]]] = {}
        self._score_listeners: list[Callable[[Any, Any, Any], None]] = []

    def add_score_listener(self, listener: Callable[[Any, Any, Any], None]) -> None:
        """Call ``listener(dataset, score_i2t, score_t2i)`` in every :meth:`evaluation` (each split,
        each time, on every rank) with the split's dataset and its ``[n_images, n_captions]`` and
        ``[n_captions, n_images]`` score matrices, before the metrics are computed."""
        self._score_listeners.append(listener)

    def build_datasets(self, cfg):
        check_environment(cfg)  # Triton, annotation files and image directories: before building anything
        datasets = super().build_datasets(cfg)
        # Give each training dataset its own range of caption rows and image ids, so several
        # datasets combined neither collide in ITC positives nor in the caption table.
        caption_offset = image_offset = 0
        train_sets = [d["train"] for d in datasets.values() if hasattr(d.get("train"), "image_caption_index")]
        width = max((d.image_caption_index.shape[1] for d in train_sets), default=0)
        for dataset in train_sets:
            dataset.caption_offset, dataset.image_id_offset = caption_offset, image_offset
            dataset.pad_captions_to(width)
            caption_offset += len(dataset.captions)
            image_offset += dataset.num_images
        self.train_caption_datasets = train_sets
        check_run_sizes(cfg, datasets)
        for name, splits in datasets.items():
            _warn_shared_images(name, splits.get("train"))
            check_image_headers(name, cfg.datasets_cfg[name], splits)
        self._attach_ground_truth(cfg, datasets)
        # Check the COCO 1K and ECCV Caption inputs now, not after hours of training when the test
        # split is reached.
        for splits in datasets.values():
            for split, dataset in splits.items():
                if split == "train" or not hasattr(dataset, "txt2img"):
                    continue
                use_1k, use_eccv = self._protocols(dataset)
                if use_1k:
                    coco_1k_folds(dataset)
                if use_eccv:
                    self._coco_ids(dataset)
        return datasets

    def _attach_ground_truth(self, cfg, datasets: dict) -> None:
        """Read ``run.gt_relevance.<split>`` for every evaluation split named there, check it against
        the split and attach it as ``dataset.ground_truth`` (:mod:`lavis_listwise.evaluation`)."""
        run_cfg = cfg.run_cfg
        eval_splits = set(run_cfg.get("valid_splits", []) or []) | set(run_cfg.get("test_splits", []) or [])
        paths = gt_relevance_paths(run_cfg.get("gt_relevance"), eval_splits)
        threshold = positive_threshold(run_cfg.get("gt_positive_threshold", 1.0))
        for splits in datasets.values():
            for split, dataset in splits.items():
                if split in paths:
                    dataset.ground_truth = load_ground_truth(paths[split], dataset, split, threshold)

    def train_captions(self) -> list[str]:
        """All training captions in caption-table order."""
        return [c for dataset in self.train_caption_datasets for c in dataset.captions]

    def train_step(self, model, samples):
        return self.train_step_with_terms(model, samples)[0]

    def train_step_with_terms(self, model, samples) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and every ``loss_*`` term of one forward pass (terms detached).

        A forward that fails after the weights became non-finite (LAVIS then dies in
        ``torch.multinomial`` while drawing ITM hard negatives) is reported as such.
        """
        try:
            output = model(samples)
        except RuntimeError as err:
            bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
            if bad:
                raise NonFiniteLossError(
                    f"training stopped at epoch {samples.get('epoch')}, step {samples.get('iters')}: "
                    f"{len(bad)} parameter tensor(s) became non-finite after the previous optimizer step "
                    f"(first: {bad[0]}); the forward pass then failed ({err}); lower run.init_lr or check "
                    "the loss settings"
                ) from err
            raise
        terms = {k: v.detach() for k, v in output.items() if k.startswith("loss") and k != "loss"}
        return output["loss"], terms

    # Replaces BaseTask._train_inner_loop: its MetricLogger is local, so loss_* terms, the finite check
    # before backward and the CPU-safe meter sync cannot be hooked in (UPSTREAMING: copies).
    def _train_inner_loop(
        self,
        epoch,
        iters_per_epoch,
        model,
        data_loader,
        optimizer,
        lr_scheduler,
        scaler=None,
        start_iters=None,
        log_freq=50,
        cuda_enabled=False,
        accum_grad_iters=1,
    ):
        """LAVIS's loop, plus every ``loss_*`` term in the logs and a progress bar."""
        use_amp = scaler is not None
        if not hasattr(data_loader, "__next__"):
            data_loader = iter(data_loader)
        metric_logger = MetricLogger(delimiter="  ")
        metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
        metric_logger.add_meter("loss", SmoothedValue(window_size=1, fmt="{value:.4f}"))
        inner_epoch = epoch if start_iters is None else start_iters // iters_per_epoch
        logging.info("Start training epoch %d, %d iters per inner epoch.", epoch, iters_per_epoch)
        with tqdm(
            total=iters_per_epoch, desc=f"train epoch {epoch}", disable=not is_main_process(), leave=False
        ) as bar:
            for i in metric_logger.log_every(
                range(iters_per_epoch), log_freq, f"Train: data epoch: [{epoch}]"
            ):
                samples = prepare_sample(next(data_loader), cuda_enabled=cuda_enabled)
                samples.update({"epoch": inner_epoch, "num_iters_per_epoch": iters_per_epoch, "iters": i})
                lr_scheduler.step(cur_epoch=inner_epoch, cur_step=i)
                with torch.autocast("cuda", enabled=use_amp):
                    loss, terms = self.train_step_with_terms(model=model, samples=samples)
                if use_amp:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                # before the optimizer step: no update from NaN. Without AMP the gradients are checked
                # too (a term can be finite with non-finite gradients); AMP's scaler skips such steps.
                grad_norm = None if use_amp else gradient_norm(model)
                values = checked_loss_values(loss, terms, epoch, i, grad_norm)
                if (i + 1) % accum_grad_iters == 0:
                    if use_amp:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    optimizer.zero_grad()
                metric_logger.update(**values)
                metric_logger.update(lr=optimizer.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
                bar.update()
        _synchronize_meters(metric_logger)
        logging.info("Averaged stats: %s", metric_logger.global_avg())
        return {k: f"{meter.global_avg:.3f}" for k, meter in metric_logger.meters.items()}

    # Replaces RetrievalTask.evaluation: k_test check, fast re-rank, COCO 1K, ECCV, NDCG (UPSTREAMING 7, 10).
    def evaluation(self, model, data_loader, **kwargs):
        dataset = data_loader.dataset
        k_test = int(self.cfg.k_test)
        n_img, n_txt = len(dataset.image), len(dataset.text)
        if k_test > min(n_img, n_txt):
            raise ValueError(
                f"run.k_test = {k_test} is larger than the evaluation split ({n_img} images, {n_txt} "
                f"captions); set run.k_test <= {min(n_img, n_txt)}"
            )
        settings = self.eval_settings
        use_1k, use_eccv = self._protocols(dataset)
        # Map captions to COCO ids before the expensive pass, so a missing file fails at once.
        coco_ids = self._coco_ids(dataset) if use_eccv else None
        folds = coco_1k_folds(dataset) if use_1k else []
        whole = RerankView(torch.arange(n_img), torch.arange(n_txt))
        if settings.itm_eval == "stock":
            score_i2t, score_t2i = model.compute_sim_matrix(data_loader, task_cfg=self.cfg)
            fold_scores = []
        else:  # the model's own scoring (each arch's retrieval_scores), one feature pass for all views
            options = ScoringOptions(
                k_test,
                amp=bool(self.cfg.get("amp", False)),
                max_pairs=settings.itm_eval_pairs,
                feature_device=settings.eval_feature_device,
                progress=is_main_process(),
            )
            scores = retrieval_scores(model, data_loader, [whole, *folds], options)
            (score_i2t, score_t2i), fold_scores = scores[0], scores[1:]
        for listener in self._score_listeners:
            listener(dataset, score_i2t, score_t2i)
        if not is_main_process():
            return None
        result = self._report_metrics(score_i2t, score_t2i, dataset.txt2img, dataset.img2txt)
        result.update(self.graded_metrics(score_i2t, score_t2i, dataset, relevance_config_of(model)))
        if fold_scores:
            result.update(coco_1k_metrics(dataset, folds, fold_scores))
        if coco_ids is not None:
            result.update(eccv_caption_metrics(score_i2t, score_t2i, *coco_ids))
        if self.agg_metric not in result:
            raise ValueError(
                f"run.agg_metric = {self.agg_metric!r} is not a reported metric: {sorted(result)}"
            )
        result["agg_metrics"] = result[self.agg_metric]
        if settings.save_rankings:
            self._rankings = ranking_report(score_i2t, score_t2i, dataset, settings.save_rankings)
        logging.info(result)
        return result

    def after_evaluation(self, val_result, split_name=None, epoch=None, **kwargs):
        rankings, self._rankings = self._rankings, None
        if rankings is not None and is_main_process():
            out = Path(registry.get_path("result_dir")) / f"rankings_{split_name}_{epoch}.json"
            write_rankings(rankings, out)
            logging.info("per-query top-%d rankings written to %s", rankings["k"], out)
        return val_result

    def _protocols(self, dataset) -> tuple[bool, bool]:
        """Whether a split gets the COCO 1K folds and the ECCV Caption / CxC metrics."""
        settings = self.eval_settings
        coco_test = "auto" in (settings.coco_1k, settings.eccv_caption) and is_coco_karpathy_test(dataset)
        use_1k = settings.coco_1k == "true" or (
            settings.coco_1k == "auto" and coco_test and settings.itm_eval == "fast"
        )
        if coco_test and settings.coco_1k == "auto" and not use_1k:
            logging.info("COCO 1K folds skipped: they need run.itm_eval: fast (each fold is re-ranked)")
        return use_1k, settings.eccv_caption == "true" or (settings.eccv_caption == "auto" and coco_test)

    def _coco_ids(self, dataset) -> tuple[list[int], list[int]]:
        """COCO image and caption ids of a split, mapped once."""
        if id(dataset) in self._coco_id_cache:
            return self._coco_id_cache[id(dataset)]
        path = self.eval_settings.coco_captions_json
        if not path:
            raise ValueError(
                "run.coco_captions_json is not set: ECCV Caption / CxC metrics need COCO's "
                "captions_val2014.json (from annotations_trainval2014.zip) to map LAVIS's test captions "
                "to COCO caption ids; set it, or set run.eccv_caption: false"
            )
        # Relative paths live under LAVIS's cache root, like the datasets' build_info storage.
        path = path if os.path.isabs(path) else get_cache_path(path)
        ids = self._coco_id_cache[id(dataset)] = coco_ids_from_annotation(dataset.annotation, path)
        return ids

    def eval_relevance(self, dataset, relevance: RelevanceConfig) -> torch.Tensor:
        """RSC relevance ``[n_images, n_captions]`` of an evaluation split, computed once per split."""
        key = (id(dataset), relevance)
        if key not in self._eval_relevance:
            self._eval_relevance[key] = split_rsc_relevance(dataset, relevance)
        return self._eval_relevance[key]

    def graded_metrics(self, score_i2t, score_t2i, dataset, relevance: RelevanceConfig) -> dict[str, float]:
        """NDCG@5/10/20 (percent) in both directions against RSC (shaped as the model trains), and
        against the split's ground truth when ``run.gt_relevance`` gives one (``gt_*``)."""
        out = rsc_ndcg_metrics(score_i2t, score_t2i, self.eval_relevance(dataset, relevance))
        ground_truth = getattr(dataset, "ground_truth", None)
        if ground_truth is not None:
            s_i2t, s_t2i = torch.as_tensor(score_i2t), torch.as_tensor(score_t2i)
            out.update(ground_truth_metrics(s_i2t, s_t2i, ground_truth))
            self.relevance_agreement(dataset, relevance)  # logged once per split
        return out

    def list_length(self) -> int:
        """The in-batch list's length: the global training batch, ``run.batch_size_train`` x ranks."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return max(2, self._batch_size_train * world)

    def relevance_agreement(self, dataset, relevance: RelevanceConfig) -> dict | None:
        """:func:`~lavis_listwise.evaluation.relevance_agreement` of the split's RSC (with the model's
        shaping) with its ``run.gt_relevance``, computed and logged once; ``None`` without ground truth.
        A ``relevance_file`` covers the training split only, so its agreement is not measured here."""
        ground_truth = getattr(dataset, "ground_truth", None)
        if ground_truth is None:
            return None
        key = (id(dataset), relevance)
        if key not in self._relevance_agreement:
            agreement = relevance_agreement(
                self.eval_relevance(dataset, relevance),
                ground_truth.relevance,
                annotated_pairs(dataset),
                positive_threshold=ground_truth.positive_threshold,
                batch_size=self.list_length(),
            )
            self._relevance_agreement[key] = agreement
            logging.info(
                "relevance agreement of %s with %s: %s", relevance.describe(), ground_truth.path, agreement
            )
        return self._relevance_agreement[key]


def gradient_norm(model) -> torch.Tensor | None:
    """The total 2-norm of the model's gradients as a tensor (no host sync); ``None`` without any."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


def checked_loss_values(
    loss: torch.Tensor,
    terms: dict[str, torch.Tensor],
    epoch,
    step: int,
    grad_norm: torch.Tensor | None = None,
) -> dict[str, float]:
    """The loss and its logged terms as floats (one host sync for all, the gradient norm included;
    the logger needs them anyway).

    Raises:
        NonFiniteLossError naming the epoch, the step and every non-finite term; or, with
        ``grad_norm``, non-finite gradients while every term is finite.
    """
    tensors = [loss.detach(), *terms.values()]
    if grad_norm is not None:
        tensors.append(grad_norm.detach().to(loss.device))
    floats = torch.stack([t.float() for t in tensors]).tolist()
    values = dict(zip(["loss", *terms], floats))
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(
            f"training stopped at epoch {epoch}, step {step}: non-finite "
            + ", ".join(f"{k} = {v}" for k, v in bad.items())
            + f" (all terms: {values}); check model.listwise.tau, model.listwise.weight and run.init_lr"
        )
    if grad_norm is not None and not math.isfinite(floats[-1]):
        cause = "check the loss settings and run.init_lr"
        if "loss_listwise" in terms:
            cause = (
                "with model.listwise.weight > 0 the listwise term (loss_listwise) is the usual cause: "
                "check its relevance inputs (model.listwise.relevance.embeddings / relevance_file) and "
                f"model.listwise.tau; else {cause}"
            )
        raise NonFiniteLossError(
            f"training stopped at epoch {epoch}, step {step} before the optimizer step: the gradients are "
            f"non-finite (norm {floats[-1]}) although every loss term is finite ({values}); {cause}"
        )
    return values


def _positive_int(run_cfg, key: str) -> int:
    value = run_cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"run.{key} must be a positive integer, got {value!r}")
    return value


def check_run_sizes(cfg, datasets: dict) -> None:
    """Check ``run.k_test``, ``run.batch_size_train`` / ``batch_size_eval`` and ``model.queue_size``
    against the built splits, so a bad value fails now and not after an epoch of training.

    Raises:
        ConfigError naming the key and the split sizes.
    """
    run_cfg = cfg.run_cfg
    _, world = rank_and_world()
    batch_train = _positive_int(run_cfg, "batch_size_train")
    _positive_int(run_cfg, "batch_size_eval")
    k_test = _positive_int(run_cfg, "k_test")
    eval_splits = set(run_cfg.get("valid_splits", []) or []) | set(run_cfg.get("test_splits", []) or [])
    train_splits = set(run_cfg.get("train_splits", []) or [])
    for name, splits in datasets.items():
        for split, dataset in splits.items():
            if split in eval_splits and hasattr(dataset, "image") and hasattr(dataset, "text"):
                n_img, n_txt = len(dataset.image), len(dataset.text)
                if k_test > min(n_img, n_txt):
                    raise ConfigError(
                        f"run.k_test = {k_test} is larger than the {name} {split} split ({n_img} images, "
                        f"{n_txt} captions); set run.k_test <= {min(n_img, n_txt)}"
                    )
            if split in train_splits and not run_cfg.get("evaluate", False) and hasattr(dataset, "__len__"):
                per_rank = len(dataset) // world
                if batch_train > per_rank:
                    raise ConfigError(
                        f"run.batch_size_train = {batch_train} is larger than the {name} {split} split's "
                        f"{len(dataset)} samples over {world} process(es) ({per_rank} each): no full "
                        "batch would be drawn (training drops incomplete batches)"
                    )
    queue = cfg.model_cfg.get("queue_size")
    if queue and not run_cfg.get("evaluate", False) and int(queue) % (batch_train * world):
        raise ConfigError(
            f"model.queue_size = {queue} must be a multiple of the global batch, run.batch_size_train x "
            f"processes = {batch_train} x {world} = {batch_train * world}: BLIP and ALBEF enqueue "
            "whole batches"
        )


def shared_image_problems(entries: Iterable[tuple[str, Any]]) -> list[str]:
    """One problem per image file that training annotations list under more than one ``image_id``:
    its captions would be each other's ITC negatives (and listwise negatives).

    Args:
        entries: ``(where, entry)`` of each training annotation entry, ``where`` naming it
            (``"<file>: entry <i>"``).
    """
    first: dict[str, tuple[Any, str]] = {}
    image_of_id: dict[Any, str] = {}
    reported: set[str] = set()
    problems = []
    for where, entry in entries:
        if not isinstance(entry, dict):
            continue
        image, image_id = entry.get("image"), entry.get("image_id")
        if not isinstance(image, str) or not image.strip() or image_id is None:
            continue
        image = os.path.normpath(image)
        if image_of_id.setdefault(image_id, image) != image:
            continue  # one image_id naming two images: reported as such by the annotation check
        seen = first.setdefault(image, (image_id, where))
        if seen[0] != image_id and image not in reported:
            reported.add(image)
            problems.append(
                f"{where}: image {image!r} is listed under image_id {image_id!r} here and {seen[0]!r} in "
                f"{seen[1]}: one image under two image_ids makes its captions each other's negatives"
            )
    return problems


def _warn_shared_images(name: str, dataset) -> None:
    """A warning when a training split lists one image file under several ``image_id``s
    (``lavis-listwise check-data`` reports it as an error)."""
    annotation = getattr(dataset, "annotation", None)
    if not annotation:
        return
    where = f"datasets.{name} train annotation"
    problems = shared_image_problems((f"{where} {i}", e) for i, e in enumerate(annotation))
    if problems:
        logging.warning(
            "%d image file(s) of the %s training split are listed under more than one image_id; first: %s",
            len(problems),
            name,
            "; ".join(problems[:3]),
        )


def _open_header(path: str) -> str | None:
    """Why LAVIS's ``Image.open(path)`` would fail for ``path`` (only the header is read), or ``None``."""
    from PIL import Image

    try:
        with Image.open(path):
            return None
    except Image.DecompressionBombError as err:
        return f"DecompressionBombError: {err}"
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        return f"{type(err).__name__}: {err}"


def check_image_headers(name: str, ds_cfg, splits: dict) -> None:
    """Open the header of every image of every split as LAVIS's datasets do: a file PIL refuses to
    open (a decompression bomb: more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels, or not an
    image) fails now, naming the key and the file, not mid-epoch. No pixel is decoded (that is
    ``lavis-listwise check-data``'s job).

    Raises:
        DataError naming ``datasets.<name>.build_info.<data_type>.storage`` and the first files.
    """
    from concurrent.futures import ThreadPoolExecutor

    from listwise_ranking.errors import DataError

    paths: dict[str, str] = {}
    for split, dataset in splits.items():
        vis_root = getattr(dataset, "vis_root", None)
        if vis_root is None:
            continue
        images = dataset.image if hasattr(dataset, "image") else [a.get("image") for a in dataset.annotation]
        for image in images:
            if isinstance(image, str):
                paths.setdefault(os.path.join(vis_root, image), split)
    if not paths:
        return
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = dict(zip(paths, pool.map(_open_header, paths)))
    bad = {p: why for p, why in reasons.items() if why}
    if bad:
        data_type = ds_cfg.get("data_type", "images") if ds_cfg is not None else "images"
        shown = "; ".join(f"{p} ({paths[p]} split): {why}" for p, why in list(bad.items())[:3])
        raise DataError(
            f"datasets.{name}.build_info.{data_type}.storage: {len(bad)} of the {len(paths)} image files "
            f"cannot be opened as LAVIS opens them: {shown} (`lavis-listwise check-data --cfg-path <yaml>` "
            "lists every unusable image)"
        )
