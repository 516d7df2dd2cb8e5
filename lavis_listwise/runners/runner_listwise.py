"""``runner_listwise``: LAVIS's ``RunnerBase`` that also runs on CPU and one GPU without torchrun,
warms the caption-embedding cache, and checkpoints everything needed to resume exactly."""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lavis.common.dist_utils import get_rank, get_world_size, is_main_process, main_process
from lavis.common.registry import registry
from lavis.datasets.datasets.dataloader_utils import IterLoader, MultiIterLoader
from lavis.runners.runner_base import RunnerBase
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from ..registration import register_once

__all__ = ["RunnerListwise"]


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@register_once("runner", "runner_listwise")
class RunnerListwise(RunnerBase):
    """Works around three ``RunnerBase`` defects, each local to an override below:

    - ``model`` returns ``None`` when the model already sits on the device (always on CPU), and
      wraps DDP with ``device_ids=[gpu]`` even on CPU;
    - ``create_loaders`` wraps every loader in ``PrefetchLoader``, which creates a CUDA stream;
    - ``train`` calls ``dist.barrier()`` without a process group, and ``_save_checkpoint`` drops
      parameters with ``requires_grad=False`` (the momentum encoders), so a resume is not exact.

    It also resolves a relative ``run.output_dir`` against the working directory (LAVIS puts it
    inside site-packages), writes ``metrics.jsonl``, saves ``checkpoint_latest.pth`` (model,
    optimizer, scaler, RNG states, best metric) every epoch (also as ``epoch_<n>.pth`` with
    ``run.keep_epoch_checkpoints: true``), and builds the caption-embedding
    table before training: rank 0 computes or loads the cache, the other ranks wait, then load it.
    """

    def setup_output_dir(self):
        output_dir = Path(self.config.run_cfg.output_dir).expanduser()
        if not output_dir.is_absolute():
            output_dir = Path.cwd() / output_dir
        output_dir = output_dir / self.job_id
        result_dir = output_dir / "result"
        if is_main_process():
            result_dir.mkdir(parents=True, exist_ok=True)
        _barrier()
        # registry.register_path raises on a second run in the same process (the demo trains twice)
        registry.mapping["paths"].update(result_dir=str(result_dir), output_dir=str(output_dir))
        self.result_dir, self.output_dir = result_dir, output_dir

    @property
    def model(self):
        if self._wrapped_model is None or self._model.device != self.device:
            self._model = self._model.to(self.device)
            if self.use_distributed:
                ids = [self.config.run_cfg.gpu] if self.device.type == "cuda" else None
                self._wrapped_model = DDP(self._model, device_ids=ids)
            else:
                self._wrapped_model = self._model
        return self._wrapped_model

    def create_loaders(self, datasets, num_workers, batch_sizes, is_trains, collate_fns, dataset_ratios=None):
        if self.cuda_enabled:  # LAVIS's own loaders, PrefetchLoader included
            return super().create_loaders(
                datasets, num_workers, batch_sizes, is_trains, collate_fns, dataset_ratios
            )

        def make(dataset, bsz, is_train, collate_fn):
            sampler = None
            if self.use_distributed and (is_train or self.use_dist_eval_sampler):
                sampler = DistributedSampler(
                    dataset, shuffle=is_train, num_replicas=get_world_size(), rank=get_rank()
                )
            loader = DataLoader(
                dataset,
                batch_size=bsz,
                num_workers=num_workers,
                sampler=sampler,
                shuffle=sampler is None and is_train,
                collate_fn=collate_fn,
                drop_last=is_train,
            )
            return IterLoader(loader, use_distributed=self.use_distributed) if is_train else loader

        loaders = []
        for dataset, bsz, is_train, collate_fn in zip(datasets, batch_sizes, is_trains, collate_fns):
            if isinstance(dataset, (list, tuple)):
                loaders.append(
                    MultiIterLoader(
                        [make(d, bsz, is_train, collate_fn[i]) for i, d in enumerate(dataset)],
                        ratios=dataset_ratios,
                    )
                )
            else:
                loaders.append(make(dataset, bsz, is_train, collate_fn))
        return loaders

    # ------------------------------------------------------------------ caption embeddings
    def prepare_caption_embeddings(self) -> None:
        """Build (rank 0) or load (other ranks) the caption-embedding cache; hand it to the model."""
        model = self._model
        if not hasattr(model, "set_caption_embeddings") or model.listwise_cfg.weight == 0:
            return
        captions = self.task.train_captions() if hasattr(self.task, "train_captions") else []
        if not captions:
            raise ValueError(
                "model.listwise.weight > 0 needs training data with caption indices: use the "
                "coco_retrieval_listwise, flickr30k_listwise or retrieval_listwise_json builders"
            )
        cache = model.listwise_cfg.relevance.caption_cache()
        if is_main_process():
            table = cache.get(captions)
            _barrier()
        else:
            _barrier()
            table = cache.load(captions)
            if table is None:
                raise RuntimeError(f"rank {get_rank()}: caption cache {cache.path_for(captions)} unreadable")
        logging.info("caption-embedding table: %d x %d (%s)", *table.shape, cache.path_for(captions))
        model.set_caption_embeddings(table)

    # ------------------------------------------------------------------ checkpoints
    @main_process
    def _save_checkpoint(self, cur_epoch, is_best=False, name=None, extra=None):
        model = self.unwrap_dist_model(self.model)
        save_obj = {
            "model": model.state_dict(),  # everything, momentum encoders included
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": cur_epoch,
            "rng": _rng_state(),
            **(extra or {}),
        }
        name = name or f"checkpoint_{'best' if is_best else cur_epoch}.pth"
        path = os.path.join(self.output_dir, name)
        tmp = path + ".tmp"
        logging.info("Saving checkpoint at epoch %s to %s.", cur_epoch, path)
        torch.save(save_obj, tmp)
        os.replace(tmp, path)

    def _load_checkpoint(self, url_or_filename):
        if not os.path.isfile(url_or_filename):
            raise FileNotFoundError(f"run.resume_ckpt_path: {url_or_filename!r} does not exist")
        checkpoint = torch.load(url_or_filename, map_location=self.device, weights_only=False)
        self.unwrap_dist_model(self.model).load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = checkpoint["epoch"] + 1
        self._best = (checkpoint.get("best_agg_metric", float("-inf")), checkpoint.get("best_epoch", 0))
        # The best model so far lives in the resumed run's directory: carry it over, so the final
        # test reloads it even if no later epoch beats it.
        best = Path(url_or_filename).resolve().parent / "checkpoint_best.pth"
        here = Path(self.output_dir) / "checkpoint_best.pth"
        if best.is_file() and best != here.resolve() and is_main_process():
            shutil.copyfile(best, here)
        if "rng" in checkpoint:
            _set_rng_state(checkpoint["rng"])
        logging.info("Resumed from %s at epoch %d", url_or_filename, self.start_epoch)

    def _reload_best_model(self, model):
        path = os.path.join(self.output_dir, "checkpoint_best.pth")
        logging.info("Loading checkpoint from %s.", path)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])
        return model

    # ------------------------------------------------------------------ logging
    @main_process
    def log_stats(self, stats, split_name):
        super().log_stats(stats, split_name)
        if isinstance(stats, dict):
            with open(os.path.join(self.output_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"split": split_name, **stats}) + "\n")

    # ------------------------------------------------------------------ main loop
    def train(self):
        start_time = time.time()
        # (best agg_metrics, its epoch); -inf so the first validation always saves a best checkpoint
        self._best = getattr(self, "_best", (float("-inf"), 0))
        self.log_config()
        if not self.evaluate_only and self.resume_ckpt_path is not None:
            self._load_checkpoint(self.resume_ckpt_path)
        if not self.evaluate_only:
            self.prepare_caption_embeddings()
        cur_epoch = self.start_epoch
        for cur_epoch in range(self.start_epoch, self.max_epoch):
            if not self.evaluate_only:
                logging.info("Start training")
                train_stats = self.train_epoch(cur_epoch)
                self.log_stats(split_name="train", stats={"epoch": cur_epoch, **train_stats})
            for split_name in self.valid_splits:
                logging.info("Evaluating on %s.", split_name)
                val_log = self.eval_epoch(split_name=split_name, cur_epoch=cur_epoch)
                if val_log is not None and is_main_process():
                    best_metric, best_epoch = self._best
                    if val_log["agg_metrics"] > best_metric and split_name == "val":
                        self._best = best_metric, best_epoch = val_log["agg_metrics"], cur_epoch
                        self._save_checkpoint(cur_epoch, is_best=True)
                    val_log.update({"best_epoch": best_epoch, "epoch": cur_epoch})
                    self.log_stats(val_log, split_name)
            if self.evaluate_only:
                break
            if not self.valid_splits:
                self._save_checkpoint(cur_epoch, is_best=False)
            # after validation, so the saved RNG state is the one the next epoch starts from
            self._save_checkpoint(
                cur_epoch,
                name="checkpoint_latest.pth",
                extra={"best_agg_metric": self._best[0], "best_epoch": self._best[1]},
            )
            if self.config.run_cfg.get("keep_epoch_checkpoints", False) and is_main_process():
                shutil.copyfile(
                    self.output_dir / "checkpoint_latest.pth", self.output_dir / f"epoch_{cur_epoch}.pth"
                )
            _barrier()
        test_epoch = "best" if self.valid_splits and not self.evaluate_only else cur_epoch
        test_logs = self.evaluate(cur_epoch=test_epoch, skip_reload=self.evaluate_only)
        for split_name, log in (test_logs or {}).items():
            if log is not None:
                self.log_stats(log, split_name)
        logging.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start_time)))
        return test_logs
