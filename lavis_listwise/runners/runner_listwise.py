"""``runner_listwise``: LAVIS's ``RunnerBase`` that also runs on CPU and one GPU without torchrun,
warms the caption-embedding cache, and checkpoints everything needed to resume exactly."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: job directories are not locked
    fcntl = None

import torch
import torch.distributed as dist
from lavis.common.dist_utils import get_rank, get_world_size, is_main_process, main_process
from lavis.common.registry import registry
from lavis.datasets.datasets.dataloader_utils import IterLoader, MultiIterLoader, PrefetchLoader
from lavis.runners.runner_base import RunnerBase
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from listwise_ranking.errors import CheckpointError, ConfigError, NonFiniteLossError
from listwise_ranking.rng import isolated_rng, rng_state, set_rng_state

from ..config import warn_config_differences
from ..distributed import rank_and_world
from ..models.checkpoints import checkpoint_mismatch
from ..registration import register_once

__all__ = ["JOB_LOCK_NAME", "RUN_OUTPUTS", "RunnerListwise", "atomic_torch_save", "load_checkpoint_file"]

#: The lock file in a job directory: held (``flock``) by the main process of the run writing there.
JOB_LOCK_NAME = ".lock"
#: What a run leaves in its job directory: a directory holding any of these is not reused without
#: ``run.overwrite_output: true`` (or a resume from a checkpoint inside it).
RUN_OUTPUTS = ("metrics.jsonl", "checkpoint_*.pth", "epoch_*.pth", "*_results.json")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same directory, renamed into place.

    A failed write (full disk, quota, I/O error) removes the temporary file and raises
    :class:`CheckpointError` naming the path and the cause; ``path`` is never half-written.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(obj, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        # torch's zip writer turns the file's OSError into "unexpected pos ..."; report the OS's words
        cause = writer.error if writer is not None and writer.error is not None else err
        if isinstance(cause, (OSError, RuntimeError)):
            text = (
                f"{cause.strerror} [errno {cause.errno}]" if getattr(cause, "strerror", None) else str(cause)
            )
            raise CheckpointError(f"could not write checkpoint {path}: {text}") from err
        raise


class _RecordingWriter:
    """A file's ``write`` that keeps the first ``OSError`` it raised (full disk, quota, file size)."""

    def __init__(self, f) -> None:
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self._f.flush()


#: What a resumable checkpoint of runner_listwise holds.
_CHECKPOINT_KEYS = ("model", "optimizer", "epoch")


def load_checkpoint_file(
    path: str | os.PathLike, key: str = "run.resume_ckpt_path", map_location="cpu"
) -> dict:
    """A resumable checkpoint, or :class:`CheckpointError` naming ``key`` and ``path`` if the file is
    missing, is not a torch checkpoint (truncated, another format) or lacks the runner's entries."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{key}: {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises RuntimeError, pickle/zip errors, EOFError... for bad files
        raise CheckpointError(
            f"{key}: {str(path)!r} is not a loadable torch checkpoint ({type(err).__name__}: {err})"
        ) from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{key}: {str(path)!r} is not a runner_listwise training checkpoint (no {missing}); "
            "resume from a checkpoint_latest.pth or epoch_<n>.pth this runner wrote"
        )
    return checkpoint


def _non_finite_parameters(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def _base_loader(loader):
    """The ``torch.utils.data.DataLoader`` under LAVIS's ``IterLoader`` / ``PrefetchLoader`` wrappers."""
    if isinstance(loader, IterLoader):
        loader = loader._dataloader
    if isinstance(loader, PrefetchLoader):
        loader = loader.loader
    return loader


def _iter_loaders(loader):
    """The ``IterLoader`` s of a training loader (several under ``MultiIterLoader``)."""
    return list(loader.loaders) if isinstance(loader, MultiIterLoader) else [loader]


# Replaces lavis.datasets.datasets.dataloader_utils.IterLoader.__next__: it sleeps 2 s per epoch.
class _IterLoaderNoSleep(IterLoader):
    """LAVIS's ``IterLoader`` without its 2 s sleep at each epoch boundary, for loaders without worker
    processes: the sleep guards worker shutdown, and with no workers there is nothing to wait for."""

    def __next__(self):
        try:
            return next(self.iter_loader)
        except StopIteration:
            self._epoch += 1
            if hasattr(self._dataloader.sampler, "set_epoch") and self._use_distributed:
                self._dataloader.sampler.set_epoch(self._epoch)
            self.iter_loader = iter(self._dataloader)
            return next(self.iter_loader)


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

    # Replaces RunnerBase.setup_output_dir: a relative output_dir lands in site-packages (UPSTREAMING 6),
    # and two runs with one job id write into one directory.
    def setup_output_dir(self):
        """``run.output_dir/<job id>`` (relative: to the working directory), claimed for this run.

        The main process locks the directory for as long as the run lasts, and refuses one that
        another run holds, or one a previous run left outputs in (:data:`RUN_OUTPUTS`), unless
        ``run.resume_ckpt_path`` is a checkpoint inside it (continuing that run) or
        ``run.overwrite_output: true`` (the previous outputs are deleted first).

        Raises:
            ConfigError naming the directory, on every rank.
        """
        output_dir = Path(self.config.run_cfg.output_dir).expanduser()
        if not output_dir.is_absolute():
            output_dir = Path.cwd() / output_dir
        output_dir = output_dir / self.job_id
        result_dir = output_dir / "result"
        problem = None
        if is_main_process():
            result_dir.mkdir(parents=True, exist_ok=True)
            problem = self._claim_output_dir(output_dir)
        if dist.is_available() and dist.is_initialized() and get_world_size() > 1:
            shared = [problem]  # every rank fails alike, instead of waiting for rank 0 at a barrier
            dist.broadcast_object_list(shared, src=0)
            problem = shared[0]
        if problem:
            raise ConfigError(problem)
        # registry.register_path raises on a second run in the same process (the demo trains twice)
        registry.mapping["paths"].update(result_dir=str(result_dir), output_dir=str(output_dir))
        self.result_dir, self.output_dir = result_dir, output_dir

    def _claim_output_dir(self, output_dir: Path) -> str | None:
        """Lock ``output_dir`` for this run; why not, or ``None`` once it is this run's."""
        self._output_lock = None
        if fcntl is None:
            return None
        lock = open(output_dir / JOB_LOCK_NAME, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            return (
                f"job directory {output_dir} is in use by another run ({holder}): wait for it to end, "
                "or give this run another --job-id"
            )
        except OSError as err:  # a file system without flock (some network mounts): run unlocked
            logging.warning(
                "job directory %s cannot be locked (%s): a second run in it is not detected", output_dir, err
            )
        previous = sorted({p.name for pattern in RUN_OUTPUTS for p in output_dir.glob(pattern)})
        if previous and not self._resumes_in(output_dir):
            if not self.config.run_cfg.get("overwrite_output", False):
                lock.close()
                shown = ", ".join(previous[:4]) + (" ..." if len(previous) > 4 else "")
                return (
                    f"job directory {output_dir} holds the outputs of an earlier run ({shown}): give this "
                    "run another --job-id, set run.resume_ckpt_path to a checkpoint in it to continue "
                    "that run, or set run.overwrite_output=True to replace them"
                )
            logging.warning("run.overwrite_output: deleting the earlier run's outputs in %s", output_dir)
            for name in (*previous, "log.txt"):
                (output_dir / name).unlink(missing_ok=True)
        lock.seek(0)
        lock.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        lock.flush()
        self._output_lock = lock
        return None

    def _resumes_in(self, output_dir: Path) -> bool:
        """Whether ``run.resume_ckpt_path`` is a checkpoint inside ``output_dir`` (continuing that run)."""
        path = self.config.run_cfg.get("resume_ckpt_path")
        return bool(path) and Path(path).expanduser().resolve().parent == output_dir.resolve()

    def release_output_dir(self) -> None:
        """Unlock the job directory (also done when the process ends, however it ends)."""
        lock = getattr(self, "_output_lock", None)
        if lock is not None:
            lock.close()
            self._output_lock = None

    # Replaces RunnerBase.model: None on CPU, DDP device_ids on CPU (UPSTREAMING 1).
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

    # Replaces RunnerBase.create_loaders on CPU only: PrefetchLoader needs CUDA (UPSTREAMING 2).
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
            if not is_train:
                return loader
            iter_cls = _IterLoaderNoSleep if num_workers == 0 else IterLoader
            return iter_cls(loader, use_distributed=self.use_distributed)

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
        """Load or compute the caption-embedding table on every rank and hand it to the model.

        Rank 0 reads the cache; on a hit the table is broadcast, so ranks on other nodes need no
        shared file system. On a miss every rank encodes its share of the encoder's batches on the
        run's device (no rank waits for one process to embed a whole COCO caption set) and the
        shares are summed; rank 0 writes the cache. Runs under :func:`isolated_rng`.
        """
        model = self._model
        if not hasattr(model, "set_caption_embeddings") or model.listwise_cfg.weight == 0:
            return
        captions = self.task.train_captions() if hasattr(self.task, "train_captions") else []
        if not captions:
            raise ValueError(
                "model.listwise.weight > 0 needs training data with caption indices: use the "
                "coco_retrieval_listwise, flickr30k_listwise or retrieval_listwise_json builders"
            )
        n_images = sum(d.num_images for d in self.task.train_caption_datasets)
        if model.load_precomputed_relevance(len(captions), n_images):  # relevance.embeddings / relevance_file
            self._resolve_auto_floor(model)
            return
        cache = model.listwise_cfg.relevance.caption_cache()
        cache.encoder.device = self.device
        rank, world = rank_and_world()
        # NCCL moves only CUDA tensors; gloo only CPU ones.
        comm = self.device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")
        with isolated_rng():
            table = cache.load(captions) if rank == 0 else None
            hit = torch.tensor([table is not None], dtype=torch.int32, device=comm)
            if world > 1:
                dist.broadcast(hit, src=0)
            if bool(hit.item()):
                if world > 1:
                    shared = (table if rank == 0 else torch.empty(len(captions), cache.encoder.dim)).to(comm)
                    dist.broadcast(shared, src=0)
                    table = shared.cpu()
            else:
                plan = cache.encoder.batch_plan(captions)
                emb = cache.encoder.encode(captions, progress=rank == 0, batches=plan[rank::world])
                if world > 1:  # each row was encoded by exactly one rank, the others hold 0: the sum is exact
                    emb = emb.to(comm)
                    dist.all_reduce(emb)
                table = cache.store(captions, emb, write=rank == 0)
        logging.info("caption-embedding table: %d x %d (%s)", *table.shape, cache.path_for(captions))
        model.set_caption_embeddings(table)
        self._resolve_auto_floor(model)

    def _resolve_auto_floor(self, model) -> None:
        """``model.listwise.relevance.floor: auto``: computed from the training captions' table, the
        same on every rank (a fixed-seed sample of the same table), before the first step."""
        relevance = model.listwise_cfg.relevance
        if relevance.floor != "auto" or model.caption_embeddings is None:
            return
        index = torch.cat(
            [torch.where(d.image_caption_index >= 0, d.image_caption_index + d.caption_offset, -1)
             for d in self.task.train_caption_datasets]
        )  # fmt: skip
        resolved = relevance.with_auto_floor(model.caption_embeddings, index)
        model.listwise_cfg = dataclasses.replace(model.listwise_cfg, relevance=resolved)
        logging.info("model.listwise.relevance.floor auto = %.4f, from the training captions", resolved.floor)

    # ------------------------------------------------------------------ checkpoints
    # Replaces RunnerBase._save_checkpoint: it drops frozen params, RNG, best metric (UPSTREAMING 5).
    def _save_checkpoint(self, cur_epoch, is_best=False, name=None, extra=None, rng_per_rank=None):
        """Write a complete checkpoint from the main process (other ranks return at once).

        Refuses to save weights that are not finite; writes atomically (:func:`atomic_torch_save`).
        """
        if not is_main_process():
            return
        model = self.unwrap_dist_model(self.model)
        bad = _non_finite_parameters(model)
        if bad:
            raise NonFiniteLossError(
                f"epoch {cur_epoch}: {len(bad)} parameter tensor(s) are not finite (first: {bad[0]}); "
                "nothing was saved"
            )
        save_obj = {
            "model": model.state_dict(),  # everything, momentum encoders included
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": cur_epoch,
            "rng": rng_state(),
            "rng_per_rank": rng_per_rank,
            "world_size": get_world_size(),
            **(extra or {}),
        }
        name = name or f"checkpoint_{'best' if is_best else cur_epoch}.pth"
        path = os.path.join(self.output_dir, name)
        logging.info("Saving checkpoint at epoch %s to %s.", cur_epoch, path)
        atomic_torch_save(save_obj, path)
        if not is_best:
            self._last_checkpoint = (path, cur_epoch)

    def _save_latest_checkpoint(self, cur_epoch: int) -> None:
        """``checkpoint_latest.pth`` with every rank's RNG state (a collective: all ranks call it)."""
        states = [rng_state()]
        if get_world_size() > 1:
            states = [None] * get_world_size()
            dist.all_gather_object(states, rng_state())
        self._save_checkpoint(
            cur_epoch,
            name="checkpoint_latest.pth",
            extra={"best_agg_metric": self._best[0], "best_epoch": self._best[1]},
            rng_per_rank=states,
        )

    # Replaces RunnerBase._load_checkpoint: restores what _save_checkpoint adds (UPSTREAMING 5).
    def _load_checkpoint(self, url_or_filename):
        checkpoint = load_checkpoint_file(url_or_filename, map_location=self.device)
        model = self.unwrap_dist_model(self.model)
        problem = checkpoint_mismatch(model, checkpoint["model"])  # a resume restores everything
        if problem:
            raise CheckpointError(
                f"run.resume_ckpt_path: {url_or_filename} does not fit this model: {problem}"
            )
        try:
            model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"run.resume_ckpt_path: {url_or_filename!r} does not fit this model or optimizer: {err}"
            ) from None
        if self.scaler and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = checkpoint["epoch"] + 1
        self._best = (checkpoint.get("best_agg_metric", float("-inf")), checkpoint.get("best_epoch", 0))
        self._last_checkpoint = (str(url_or_filename), checkpoint["epoch"])
        # The best model so far lives in the resumed run's directory: carry it over, so the final
        # test reloads it even if no later epoch beats it.
        best = Path(url_or_filename).resolve().parent / "checkpoint_best.pth"
        here = Path(self.output_dir) / "checkpoint_best.pth"
        if best.is_file() and best != here.resolve() and is_main_process():
            shutil.copyfile(best, here)
        self._resume_rng = self._rank_rng_state(checkpoint)
        warn_config_differences(checkpoint.get("config"), self.config.to_dict(), url_or_filename)
        logging.info("Resumed from %s at epoch %d", url_or_filename, self.start_epoch)

    @staticmethod
    def _rank_rng_state(checkpoint: dict) -> dict | None:
        """This rank's RNG state in ``checkpoint`` (checkpoints hold one per rank)."""
        rank, world = rank_and_world()
        per_rank = checkpoint.get("rng_per_rank")
        if per_rank and len(per_rank) == world:
            return per_rank[rank]
        if per_rank or world > 1:
            logging.warning(
                "the checkpoint was written by %s process(es), this run has %d: the resumed run "
                "cannot repeat the uninterrupted one exactly",
                len(per_rank) if per_rank else "an unknown number of",
                world,
            )
        return checkpoint.get("rng")

    def _start_resumed_epoch(self) -> None:
        """Put the training loader and the RNG where the uninterrupted run has them at ``start_epoch``.

        A fresh ``IterLoader`` starts at sampler epoch 0, so a resumed run would replay epoch 0's
        ``DistributedSampler`` order; the uninterrupted run sets the sampler's epoch and then creates
        the epoch's iterator (drawing from the RNG). Do the same here, after restoring the RNG.
        """
        loader = self.train_loader  # built now, so building it cannot draw from the restored RNG
        for iter_loader in _iter_loaders(loader):
            iter_loader._epoch = self.start_epoch
            base = _base_loader(iter_loader)
            if self.use_distributed and hasattr(base.sampler, "set_epoch"):
                base.sampler.set_epoch(self.start_epoch)
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
        for iter_loader in _iter_loaders(loader):
            iter_loader.iter_loader = iter(iter_loader._dataloader)

    # Replaces RunnerBase._reload_best_model: strict load with an error naming the file.
    def _reload_best_model(self, model):
        path = os.path.join(self.output_dir, "checkpoint_best.pth")
        logging.info("Loading checkpoint from %s.", path)
        state_dict = load_checkpoint_file(path, key="checkpoint_best.pth")["model"]
        problem = checkpoint_mismatch(model, state_dict)
        if problem:
            raise CheckpointError(f"checkpoint_best.pth: {path} does not fit this model: {problem}")
        model.load_state_dict(state_dict)
        return model

    # ------------------------------------------------------------------ logging
    @main_process
    def log_stats(self, stats, split_name):
        super().log_stats(stats, split_name)
        if isinstance(stats, dict):
            with open(os.path.join(self.output_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"split": split_name, **stats}) + "\n")

    # ------------------------------------------------------------------ main loop
    def eval_epoch(self, split_name, cur_epoch, skip_reload=False):
        """LAVIS's evaluation, under :func:`isolated_rng`: evaluating never changes what training draws."""
        with isolated_rng():
            return super().eval_epoch(split_name, cur_epoch, skip_reload)

    def train_epoch(self, epoch):
        try:
            return super().train_epoch(epoch)
        except NonFiniteLossError as err:
            path, saved_epoch = getattr(self, "_last_checkpoint", (None, None))
            last = f"{path} (epoch {saved_epoch})" if path else "none (no epoch had finished)"
            raise NonFiniteLossError(
                f"{err}; nothing was saved after it; last good checkpoint: {last}"
            ) from err

    # Replaces RunnerBase.train: unguarded dist.barrier, resume, latest checkpoint (UPSTREAMING 3, 5).
    def train(self):
        start_time = time.time()
        # (best agg_metrics, its epoch); -inf so the first validation always saves a best checkpoint
        self._best = getattr(self, "_best", (float("-inf"), 0))
        self._resume_rng = None
        self.log_config()
        if not self.evaluate_only and self.resume_ckpt_path is not None:
            self._load_checkpoint(self.resume_ckpt_path)
        if not self.evaluate_only:
            self.prepare_caption_embeddings()
            if self.resume_ckpt_path is not None and self.start_epoch < self.max_epoch:
                self._start_resumed_epoch()
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
                    agg = val_log["agg_metrics"]
                    if split_name == "val" and math.isfinite(agg) and agg > best_metric:
                        self._best = best_metric, best_epoch = agg, cur_epoch
                        self._save_checkpoint(cur_epoch, is_best=True)
                    val_log.update({"best_epoch": best_epoch, "epoch": cur_epoch})
                    self.log_stats(val_log, split_name)
            if self.evaluate_only:
                break
            if not self.valid_splits:
                self._save_checkpoint(cur_epoch, is_best=False)
            # after validation, so the saved RNG state is the one the next epoch starts from
            self._save_latest_checkpoint(cur_epoch)
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
