"""``retrieval_listwise``: LAVIS's retrieval task, logging every loss term, with graded metrics."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from lavis.common.dist_utils import is_main_process
from lavis.common.logger import MetricLogger, SmoothedValue
from lavis.datasets.data_utils import prepare_sample
from lavis.tasks.retrieval import RetrievalTask
from tqdm.auto import tqdm

from ..config import RelevanceConfig
from ..datasets.retrieval_listwise import ListwiseRetrievalDataset, caption_groups_to_index
from ..metrics import ndcg_at_k
from ..registration import register_once
from ..relevance import rsc_relevance_from_table

__all__ = ["RetrievalListwiseTask"]

NDCG_KS = (5, 10, 20)


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
    both directions against RSC relevance over the whole evaluation split.

    ``run.agg_metric`` picks the metric used for model selection (default ``r_mean``).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.agg_metric = str(cfg.get("agg_metric", "r_mean"))
        self.train_caption_datasets: list[ListwiseRetrievalDataset] = []
        self._loss_terms: dict[str, float] = {}
        self._eval_relevance: dict[tuple, torch.Tensor] = {}

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
        return datasets

    def train_captions(self) -> list[str]:
        """All training captions in caption-table order."""
        return [c for dataset in self.train_caption_datasets for c in dataset.captions]

    def train_step(self, model, samples):
        output = model(samples)
        self._loss_terms = {
            k: float(v.detach()) for k, v in output.items() if k.startswith("loss") and k != "loss"
        }
        return output["loss"]

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
        bar = tqdm(
            total=iters_per_epoch, desc=f"train epoch {epoch}", disable=not is_main_process(), leave=False
        )
        for i in metric_logger.log_every(range(iters_per_epoch), log_freq, f"Train: data epoch: [{epoch}]"):
            samples = prepare_sample(next(data_loader), cuda_enabled=cuda_enabled)
            samples.update({"epoch": inner_epoch, "num_iters_per_epoch": iters_per_epoch, "iters": i})
            lr_scheduler.step(cur_epoch=inner_epoch, cur_step=i)
            with torch.autocast("cuda", enabled=use_amp):
                loss = self.train_step(model=model, samples=samples)
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
            metric_logger.update(loss=loss.item(), **self._loss_terms)
            metric_logger.update(lr=optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            bar.update()
        bar.close()
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
        score_i2t, score_t2i = model.compute_sim_matrix(data_loader, task_cfg=self.cfg)
        self.last_scores = (score_i2t, score_t2i)  # kept for inspection (the demo draws rankings)
        if not is_main_process():
            return None
        result = self._report_metrics(score_i2t, score_t2i, dataset.txt2img, dataset.img2txt)
        result.update(self.graded_metrics(score_i2t, score_t2i, dataset, relevance_config_of(model)))
        if self.agg_metric not in result:
            raise ValueError(
                f"run.agg_metric = {self.agg_metric!r} is not a reported metric: {sorted(result)}"
            )
        result["agg_metrics"] = result[self.agg_metric]
        logging.info(result)
        return result

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
        positive = torch.zeros(index.shape[0], len(dataset.text), dtype=torch.bool)
        for img, caps in dataset.img2txt.items():
            positive[img, caps] = True
        return rsc_relevance_from_table(emb, index, torch.arange(len(dataset.text)), positive)

    def graded_metrics(self, score_i2t, score_t2i, dataset, relevance: RelevanceConfig) -> dict[str, float]:
        """NDCG@5/10/20 (percent) in both directions."""
        rel = self.eval_relevance(dataset, relevance)
        s_i2t, s_t2i = torch.as_tensor(score_i2t), torch.as_tensor(score_t2i)
        out = {}
        for k in NDCG_KS:
            out[f"txt_ndcg{k}"] = 100.0 * ndcg_at_k(s_i2t, rel, k)
            out[f"img_ndcg{k}"] = 100.0 * ndcg_at_k(s_t2i, rel.t(), k)
        return out
