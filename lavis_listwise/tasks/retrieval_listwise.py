"""``retrieval_listwise``: LAVIS's retrieval task, logging every loss term, with graded metrics."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lavis.common.dist_utils import is_main_process
from lavis.common.logger import MetricLogger, SmoothedValue
from lavis.common.registry import registry
from lavis.common.utils import get_cache_path
from lavis.datasets.data_utils import prepare_sample
from lavis.tasks.retrieval import RetrievalTask
from tqdm.auto import tqdm

from ..config import RelevanceConfig
from ..datasets.retrieval_listwise import ListwiseRetrievalDataset, caption_groups_to_index
from ..distributed import rank_and_world
from ..errors import ConfigError, NonFiniteLossError
from ..evaluation import (
    ground_truth_metrics,
    gt_relevance_paths,
    load_ground_truth,
    positive_threshold,
    relevance_agreement,
)
from ..metrics import lavis_recalls, ndcg_at_k
from ..registration import register_once
from ..relevance import rsc_relevance_from_table
from .itm_rerank import RerankView, compute_sim_matrix_fast

__all__ = ["EvalSettings", "RetrievalListwiseTask", "coco_1k_folds"]

NDCG_KS = (5, 10, 20)
#: COCO 1K: the 5K Karpathy test split in five folds of 1,000 consecutive images.
COCO_1K_FOLDS, COCO_1K_IMAGES = 5, 1000


def _tristate(value, key: str) -> str:
    """``auto`` / ``true`` / ``false`` from YAML (booleans or strings)."""
    text = str(value).lower()
    if text not in ("auto", "true", "false"):
        raise ValueError(f"{key} must be auto, true or false, got {value!r}")
    return text


@dataclass(frozen=True)
class EvalSettings:
    """The ``run.*`` keys of the retrieval evaluation.

    * ``itm_eval``: ``fast`` (:mod:`.itm_rerank`, default) or ``stock`` (LAVIS's
      ``model.compute_sim_matrix``);
    * ``itm_eval_pairs``: (image, caption) pairs per ITM forward of the fast path (default ``null``:
      256 on CPU, 4096 on CUDA);
    * ``eval_feature_device``: where the fast path keeps image features: ``auto`` (on the GPU when
      they use under half its free memory), ``device`` or ``cpu``;
    * ``coco_1k``: COCO 1K five-fold averages, each fold re-ranked on its own (``auto``: on the
      COCO Karpathy 5K test split);
    * ``eccv_caption`` and ``coco_captions_json``: ECCV Caption mAP@R / R-Precision / R@1 and CxC
      recalls (``auto``: on the COCO Karpathy test split), which need COCO's
      ``captions_val2014.json`` to map LAVIS's captions to COCO caption ids (a relative path is
      under LAVIS's cache root, like dataset storage; checked when the datasets are built);
    * ``save_rankings``: K > 0 writes every query's top-K to ``rankings_<split>_<epoch>.json``.
    """

    itm_eval: str = "fast"
    itm_eval_pairs: int | None = None
    eval_feature_device: str = "auto"
    coco_1k: str = "auto"
    eccv_caption: str = "auto"
    coco_captions_json: str | None = None
    save_rankings: int = 0

    @classmethod
    def from_run_cfg(cls, cfg) -> EvalSettings:
        itm = str(cfg.get("itm_eval", "fast"))
        if itm not in ("fast", "stock"):
            raise ValueError(f"run.itm_eval must be 'fast' or 'stock', got {itm!r}")
        pairs = cfg.get("itm_eval_pairs")
        if pairs is not None and (isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1):
            raise ValueError(f"run.itm_eval_pairs must be a positive integer or null, got {pairs!r}")
        where = str(cfg.get("eval_feature_device", "auto"))
        if where not in ("auto", "device", "cpu"):
            raise ValueError(f"run.eval_feature_device must be auto, device or cpu, got {where!r}")
        keep = cfg.get("save_rankings", 0) or 0
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(
                f"run.save_rankings must be a non-negative integer (top-K per query), got {keep!r}"
            )
        captions = cfg.get("coco_captions_json")
        settings = cls(
            itm_eval=itm,
            itm_eval_pairs=pairs,
            eval_feature_device=where,
            coco_1k=_tristate(cfg.get("coco_1k", "auto"), "run.coco_1k"),
            eccv_caption=_tristate(cfg.get("eccv_caption", "auto"), "run.eccv_caption"),
            coco_captions_json=str(captions) if captions else None,
            save_rankings=keep,
        )
        if settings.itm_eval == "stock" and settings.coco_1k == "true":
            raise ValueError("run.coco_1k: true needs run.itm_eval: fast (each fold is re-ranked on its own)")
        return settings


def coco_1k_folds(dataset) -> list[RerankView]:
    """The five COCO 1K folds of a 5,000-image split: 1,000 consecutive images and their captions."""
    n_img = len(dataset.image)
    if n_img != COCO_1K_FOLDS * COCO_1K_IMAGES:
        raise ValueError(
            f"run.coco_1k: the COCO 1K protocol needs the 5,000-image COCO test split, this one has {n_img}"
        )
    txt2img = torch.tensor([dataset.txt2img[t] for t in range(len(dataset.text))])
    folds = []
    for f in range(COCO_1K_FOLDS):
        lo, hi = f * COCO_1K_IMAGES, (f + 1) * COCO_1K_IMAGES
        texts = ((txt2img >= lo) & (txt2img < hi)).nonzero().squeeze(1)
        folds.append(RerankView(torch.arange(lo, hi), texts))
    return folds


def _view_ground_truth(dataset, view: RerankView) -> tuple[dict, dict]:
    """LAVIS's ``txt2img`` / ``img2txt`` renumbered to a view's local rows and columns."""
    img_pos = {int(i): r for r, i in enumerate(view.image_index.tolist())}
    txt_pos = {int(t): r for r, t in enumerate(view.text_index.tolist())}
    txt2img = {txt_pos[t]: img_pos[dataset.txt2img[t]] for t in txt_pos}
    img2txt = {img_pos[i]: [txt_pos[t] for t in dataset.img2txt[i] if t in txt_pos] for i in img_pos}
    return txt2img, img2txt


def relevance_config_of(model) -> RelevanceConfig:
    """The model's ``listwise.relevance`` settings; defaults for a stock LAVIS model."""
    cfg = getattr(model, "listwise_cfg", None)
    return cfg.relevance if cfg is not None else RelevanceConfig()


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
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.agg_metric = str(cfg.get("agg_metric", "r_mean"))
        self.train_caption_datasets: list[ListwiseRetrievalDataset] = []
        self._eval_relevance: dict[tuple, torch.Tensor] = {}
        self._relevance_agreement: dict[tuple, dict] = {}
        self.eval_settings = EvalSettings.from_run_cfg(cfg)
        self._rankings: dict | None = None
        self._coco_id_cache: dict[int, tuple[list[int], list[int]]] = {}

    def build_datasets(self, cfg):
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
                values = checked_loss_values(loss, terms, epoch, i)  # before backward: no update from NaN
                if use_amp:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
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
        if settings.itm_eval == "stock":
            score_i2t, score_t2i = model.compute_sim_matrix(data_loader, task_cfg=self.cfg)
            fold_scores = []
        else:
            whole = RerankView(torch.arange(n_img), torch.arange(n_txt))
            scores = compute_sim_matrix_fast(
                model,
                data_loader,
                k_test,
                views=[whole, *folds],
                max_pairs=settings.itm_eval_pairs,
                amp=bool(self.cfg.get("amp", False)),
                feature_device=settings.eval_feature_device,
                progress=is_main_process(),
            )
            (score_i2t, score_t2i), fold_scores = scores[0], scores[1:]
        self.last_scores = (score_i2t, score_t2i)  # kept for inspection (the demo draws rankings)
        if not is_main_process():
            return None
        result = self._report_metrics(score_i2t, score_t2i, dataset.txt2img, dataset.img2txt)
        result.update(self.graded_metrics(score_i2t, score_t2i, dataset, relevance_config_of(model)))
        if fold_scores:
            result.update(self._coco_1k_metrics(dataset, folds, fold_scores))
        if coco_ids is not None:
            from ..eccv_caption import eccv_caption_metrics

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
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(rankings))
            os.replace(tmp, out)  # never a half-written file
            logging.info("per-query top-%d rankings written to %s", rankings["k"], out)
        return val_result

    def _protocols(self, dataset) -> tuple[bool, bool]:
        """Whether a split gets the COCO 1K folds and the ECCV Caption / CxC metrics."""
        settings = self.eval_settings
        coco_test = "auto" in (settings.coco_1k, settings.eccv_caption) and _is_coco_karpathy_test(dataset)
        use_1k = settings.coco_1k == "true" or (
            settings.coco_1k == "auto" and coco_test and settings.itm_eval == "fast"
        )
        if coco_test and settings.coco_1k == "auto" and not use_1k:
            logging.info("COCO 1K folds skipped: they need run.itm_eval: fast (each fold is re-ranked)")
        return use_1k, settings.eccv_caption == "true" or (settings.eccv_caption == "auto" and coco_test)

    def _coco_ids(self, dataset) -> tuple[list[int], list[int]]:
        """COCO image and caption ids of a split, mapped once."""
        from ..eccv_caption import coco_ids_from_annotation

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

    def _coco_1k_metrics(self, dataset, folds: list[RerankView], fold_scores) -> dict[str, float]:
        """LAVIS's recalls on each COCO 1K fold (re-ranked within the fold), averaged over folds."""
        per_fold = []
        for view, (s_i2t, s_t2i) in zip(folds, fold_scores):
            txt2img, img2txt = _view_ground_truth(dataset, view)
            per_fold.append(lavis_recalls(s_i2t, s_t2i, txt2img, img2txt))
        keys = list(per_fold[0])
        return {f"coco1k_{k}": float(np.mean([m[k] for m in per_fold])) for k in keys}

    def eval_relevance(self, dataset, relevance: RelevanceConfig) -> torch.Tensor:
        """RSC relevance ``[n_images, n_captions]`` of an evaluation split, computed once per split."""
        key = (id(dataset), relevance)
        if key not in self._eval_relevance:
            self._eval_relevance[key] = self._compute_eval_relevance(dataset, relevance)
        return self._eval_relevance[key]

    @staticmethod
    def _compute_eval_relevance(dataset, relevance: RelevanceConfig) -> torch.Tensor:
        emb = relevance.caption_cache().get(dataset.text)
        index = getattr(dataset, "image_caption_index", None)
        if index is None:  # a stock LAVIS eval dataset
            index = caption_groups_to_index([dataset.img2txt[i] for i in range(len(dataset.image))])
        positive = annotated_pairs(dataset)
        return rsc_relevance_from_table(
            emb, index, torch.arange(len(dataset.text)), positive, **relevance.shaping
        )

    def graded_metrics(self, score_i2t, score_t2i, dataset, relevance: RelevanceConfig) -> dict[str, float]:
        """NDCG@5/10/20 (percent) in both directions against RSC (shaped as the model trains), and
        against the split's ground truth when ``run.gt_relevance`` gives one (``gt_*``)."""
        rel = self.eval_relevance(dataset, relevance)
        s_i2t, s_t2i = torch.as_tensor(score_i2t), torch.as_tensor(score_t2i)
        out = {}
        for k in NDCG_KS:
            out[f"txt_ndcg{k}"] = 100.0 * ndcg_at_k(s_i2t, rel, k)
            out[f"img_ndcg{k}"] = 100.0 * ndcg_at_k(s_t2i, rel.t(), k)
        ground_truth = getattr(dataset, "ground_truth", None)
        if ground_truth is not None:
            out.update(ground_truth_metrics(s_i2t, s_t2i, ground_truth))
            self.relevance_agreement(dataset, relevance)  # logged once per split
        return out

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
            )
            self._relevance_agreement[key] = agreement
            logging.info(
                "relevance agreement of RSC %s with %s: %s", relevance.shaping, ground_truth.path, agreement
            )
        return self._relevance_agreement[key]


def annotated_pairs(dataset) -> torch.Tensor:
    """``[n_images, n_captions]`` bool: the annotated (image, caption) pairs of an evaluation split."""
    positive = torch.zeros(len(dataset.image), len(dataset.text), dtype=torch.bool)
    for img, caps in dataset.img2txt.items():
        positive[img, caps] = True
    return positive


def checked_loss_values(
    loss: torch.Tensor, terms: dict[str, torch.Tensor], epoch, step: int
) -> dict[str, float]:
    """The loss and its logged terms as floats (one host sync for all; the logger needs them anyway).

    Raises:
        NonFiniteLossError naming the epoch, the step and every non-finite term.
    """
    tensors = [loss.detach(), *terms.values()]
    values = dict(zip(["loss", *terms], torch.stack([t.float() for t in tensors]).tolist()))
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(
            f"training stopped at epoch {epoch}, step {step}: non-finite "
            + ", ".join(f"{k} = {v}" for k, v in bad.items())
            + f" (all terms: {values}); check model.listwise.tau, model.listwise.weight and run.init_lr"
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


def _is_coco_karpathy_test(dataset) -> bool:
    """Whether an evaluation split is COCO's 5K Karpathy test split (by its COCO image ids)."""
    if len(dataset.image) != COCO_1K_FOLDS * COCO_1K_IMAGES or not hasattr(dataset, "annotation"):
        return False
    from ..eccv_caption import coco_image_ids, coco_karpathy_test_image_ids

    try:
        ids = coco_image_ids(dataset.annotation)
    except ValueError:  # file names without a COCO id
        return False
    return set(ids) == coco_karpathy_test_image_ids()


def ranking_report(score_i2t, score_t2i, dataset, k: int) -> dict:
    """Every query's top-``k`` candidates with scores and ground truth, for inspection.

    Returns ``{"k", "i2t": [{"image", "top": [{"text", "caption", "score", "positive"}]}], "t2i": [...]}``
    with indices into the split's ``image`` / ``text`` lists.
    """
    s_i2t, s_t2i = torch.as_tensor(score_i2t), torch.as_tensor(score_t2i)
    k_i, k_t = min(k, s_i2t.shape[1]), min(k, s_t2i.shape[1])
    i2t_val, i2t_idx = s_i2t.topk(k_i, dim=1)
    t2i_val, t2i_idx = s_t2i.topk(k_t, dim=1)
    images = [str(path) for path in dataset.image]  # file names relative to the image root
    i2t = [
        {
            "image": i,
            "file": images[i],
            "top": [
                {
                    "text": t,
                    "caption": dataset.text[t],
                    "score": round(v, 5),
                    "positive": dataset.txt2img[t] == i,
                }
                for t, v in zip(idx, val)
            ],
        }
        for i, (idx, val) in enumerate(zip(i2t_idx.tolist(), i2t_val.tolist()))
    ]
    t2i = [
        {
            "text": t,
            "caption": dataset.text[t],
            "top": [
                {"image": i, "file": images[i], "score": round(v, 5), "positive": dataset.txt2img[t] == i}
                for i, v in zip(idx, val)
            ],
        }
        for t, (idx, val) in enumerate(zip(t2i_idx.tolist(), t2i_val.tolist()))
    ]
    return {"k": k, "i2t": i2t, "t2i": t2i}
