"""The plugin's YAML settings, parsed and checked once with errors that name the key: the
``model.listwise`` block (:class:`ListwiseConfig`) and the evaluation's ``run.*`` keys
(:class:`EvalSettings`)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from listwise_ranking.errors import ConfigError
from listwise_ranking.losses import build_loss, check_combine, combine_losses, get_loss_class
from listwise_ranking.relevance import CaptionEmbeddingCache, SentenceEncoder

__all__ = [
    "EvalSettings",
    "ListwiseConfig",
    "MissingPathError",
    "RelevanceConfig",
    "check_environment",
    "check_run_device",
    "check_settings",
    "config_differences",
    "default_cache_dir",
    "warn_config_differences",
]

_KEY = "model.listwise"
#: ``model.listwise.relevance.floor: auto``.
AUTO = "auto"


class MissingPathError(ConfigError, FileNotFoundError):
    """A YAML key names a file or directory that is missing or not what it must be: a
    :class:`ConfigError` (one message, no traceback), still caught by ``except FileNotFoundError``."""


def default_cache_dir() -> Path:
    """``$LAVIS_LISTWISE_CACHE`` or ``~/.cache/lavis-listwise``."""
    env = os.environ.get("LAVIS_LISTWISE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lavis-listwise"


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unknown(given: Mapping, allowed: set[str], where: str) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")


@dataclass(frozen=True)
class RelevanceConfig:
    """``model.listwise.relevance``: where the training relevance comes from and how it is shaped.

    * ``encoder``, ``cache_dir``, ``batch_size``: the RSC sentence encoder (a local Hugging Face
      directory; ``null`` = the bundled all-MiniLM-L6-v2) and its caption-embedding cache.
    * ``floor`` (``null`` = the paper's ``(1 + cos) / 2``) and ``sharpen`` (default 1): shaping the
      paper lacks, :func:`~listwise_ranking.relevance.shape_cosines`. ``floor: c`` maps cosines at or
      below ``c`` to 0 and rescales the rest to ``[0, 1]``; ``sharpen: p`` raises the result to the
      power ``p``. Ground-truth captions stay 1. They shape the evaluation's RSC NDCG too.
      ``floor: auto`` computes the floor from the training captions alone
      (:func:`~listwise_ranking.relevance.calibration.auto_floor_from_table`: the equal-error cut between
      the cosines of an image's captions to each other and those of images to other images'
      captions), when the caption table is ready; an evaluation without training computes it from
      the evaluated split's captions.
    * ``embeddings``: a ``.npy`` ``[n_train_captions, D]`` of precomputed caption embeddings in the
      training captions' order (the published code's workflow) used instead of encoding them.
    * ``relevance_file``: a precomputed training relevance (``.npy`` dense or ``.npz`` sparse,
      :mod:`listwise_ranking.relevance.files`) looked up for each batch instead of RSC; same-image
      pairs stay 1. ``floor`` / ``sharpen`` do not apply to it.

    Relative paths are taken from the working directory. ``embeddings`` and ``relevance_file``
    replace the training relevance only: the evaluation's RSC NDCG is computed with ``encoder``.
    """

    encoder: str | None = None  # local HF encoder directory; None = bundled all-MiniLM-L6-v2
    cache_dir: Path = field(default_factory=default_cache_dir)
    batch_size: int = 256
    floor: float | str | None = None  # a cosine, None (the paper's mapping) or "auto" (until resolved)
    sharpen: float = 1.0
    auto_floor: bool = False  # the floor was computed by floor: auto
    embeddings: Path | None = None
    relevance_file: Path | None = None

    @property
    def shaping(self) -> dict[str, Any]:
        """``floor`` and ``sharpen``: keyword arguments of ``listwise_ranking.relevance.rsc_relevance``."""
        return {"floor": self.floor, "sharpen": self.sharpen}

    def describe(self) -> str:
        """The training relevance in words, e.g. ``RSC (1 + cos) / 2`` or ``relevance file x.npy``."""
        if self.relevance_file is not None:
            return f"relevance file {self.relevance_file}"
        if self.floor is None:
            mapping = "(1 + cos) / 2"
        elif self.floor == AUTO:
            mapping = "floor auto"
        else:
            mapping = f"floor {'auto = ' if self.auto_floor else ''}{self.floor:.4g}"
        source = f", embeddings {self.embeddings}" if self.embeddings is not None else ""
        sharpen = f", sharpen {self.sharpen:g}" if self.sharpen != 1.0 else ""
        return f"RSC {mapping}{sharpen}{source}"

    def with_auto_floor(self, table: Tensor, image_caption_index: Tensor) -> RelevanceConfig:
        """These settings with ``floor: auto`` computed from a caption table (``[T, D]``) and its
        images' caption rows (``[I, K]``, ``-1`` padded); unchanged unless ``floor`` is ``auto``."""
        if self.floor != AUTO:
            return self
        from listwise_ranking.relevance.calibration import auto_floor_from_table

        floor = round(auto_floor_from_table(table, image_caption_index), 4)
        return dataclasses.replace(self, floor=floor, auto_floor=True)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> RelevanceConfig:
        cfg = dict(cfg or {})
        where = f"{_KEY}.relevance"
        _unknown(
            cfg,
            {"encoder", "cache_dir", "batch_size", "floor", "sharpen", "embeddings", "relevance_file"},
            where,
        )
        encoder = cfg.get("encoder")
        if encoder not in (None, "", "default"):
            path = Path(str(encoder)).expanduser()
            if not (path / "config.json").is_file():
                raise MissingPathError(
                    f"{where}.encoder: {str(path)!r} is not a local Hugging Face encoder directory "
                    "(no config.json); leave it unset for the bundled all-MiniLM-L6-v2"
                )
            encoder = str(path.resolve())
        else:
            encoder = None
        cache_dir = cfg.get("cache_dir")
        cache_dir = Path(str(cache_dir)).expanduser().resolve() if cache_dir else default_cache_dir()
        batch_size = _integer(cfg.get("batch_size", 256), f"{where}.batch_size", minimum=1)
        floor = cfg.get("floor")
        if isinstance(floor, str) and floor.strip().lower() == AUTO:
            floor = AUTO
        elif isinstance(floor, str) and not _is_float(floor):
            raise ConfigError(f"{where}.floor must be a cosine in [-1, 1), auto or null, got {floor!r}")
        elif floor is not None:
            floor = _number(floor, f"{where}.floor")
            if not -1.0 <= floor < 1.0:
                raise ConfigError(f"{where}.floor must be a cosine in [-1, 1), auto or null, got {floor}")
        sharpen = _number(cfg.get("sharpen", 1.0), f"{where}.sharpen")
        if not sharpen > 0:
            raise ConfigError(f"{where}.sharpen must be > 0, got {sharpen}")
        embeddings = _existing_file(cfg.get("embeddings"), f"{where}.embeddings", (".npy",))
        relevance_file = _existing_file(
            cfg.get("relevance_file"), f"{where}.relevance_file", (".npy", ".npz")
        )
        if embeddings is not None and relevance_file is not None:
            raise ConfigError(
                f"{where}: set embeddings or relevance_file, not both (a relevance file needs no embeddings)"
            )
        if relevance_file is not None and (floor is not None or sharpen != 1.0):
            raise ConfigError(
                f"{where}.floor / sharpen shape RSC cosines and do not apply to relevance_file; unset them"
            )
        return cls(
            encoder=encoder,
            cache_dir=cache_dir,
            batch_size=batch_size,
            floor=floor,
            sharpen=sharpen,
            embeddings=embeddings,
            relevance_file=relevance_file,
        )

    def caption_cache(self) -> CaptionEmbeddingCache:
        """The caption-embedding cache these settings describe (the encoder loads lazily)."""
        return CaptionEmbeddingCache(
            self.cache_dir, SentenceEncoder(self.encoder, batch_size=self.batch_size)
        )


@dataclass(frozen=True)
class ListwiseConfig:
    """``model.listwise``: which listwise loss, how strongly, and where relevance comes from.

    ``combine: add`` gives ``L = L_stock + weight * L_list`` (LAVIS's losses kept whole);
    ``combine: convex`` gives the paper's ``(1 - weight) * L_stock + weight * L_list``.
    ``weight: 0`` reproduces the stock model exactly. ``kernel`` picks the S-NDCG implementation:
    ``torch`` (chunked), ``compiled`` (``torch.compile`` fused reductions), ``triton`` (hand-written
    Triton kernels, CUDA) or ``auto`` (compiled on CUDA, chunked elsewhere).
    ``relevance_topk: K`` is an approximation that keeps only each query's K most relevant candidates
    as gains, in ``O(B*K*B)`` instead of ``O(B^3)``.
    ``ideal_dcg`` is the loss's normaliser: ``paper`` (default; tied items share their group's best
    ideal rank, so with several tied positives the loss cannot reach 0) or ``sorted`` (the standard
    ideal DCG of the descending gains, as the evaluation NDCG computes it).
    """

    loss: str = "smooth_ndcg"
    weight: float = 0.0
    tau: float = 0.01
    combine: str = "add"
    reference_compat: bool = False
    kernel: str = "auto"
    relevance_topk: int | None = None
    ideal_dcg: str = "paper"
    relevance: RelevanceConfig = field(default_factory=RelevanceConfig)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> ListwiseConfig:
        cfg = dict(cfg or {})
        _unknown(
            cfg,
            {"loss", "weight", "tau", "combine", "reference_compat", "kernel", "relevance_topk", "relevance"}
            | {"ideal_dcg"},
            _KEY,
        )
        loss = str(cfg.get("loss", "smooth_ndcg"))
        try:
            loss_cls = get_loss_class(loss)
        except KeyError as err:
            raise ConfigError(f"{_KEY}.loss: {err.args[0]}") from None
        if not getattr(loss_cls, "is_listwise", False):
            raise ConfigError(f"{_KEY}.loss: {loss!r} is not a listwise loss (it takes no relevance)")
        weight = _number(cfg.get("weight", 0.0), f"{_KEY}.weight")
        combine = str(cfg.get("combine", "add"))
        tau = _number(cfg.get("tau", 0.01), f"{_KEY}.tau")
        kernel = str(cfg.get("kernel", "auto"))
        topk = cfg.get("relevance_topk")
        ideal = str(cfg.get("ideal_dcg", "paper"))
        # the loss class checks its own parameters, the combine rule its own: one check each
        try:
            check_combine(weight, combine)
            check_params = getattr(loss_cls, "check_params", loss_cls)  # else building it checks them
            check_params(tau=tau, kernel=kernel, relevance_topk=topk, ideal_dcg=ideal)
        except ValueError as err:
            raise ConfigError(f"{_KEY}.{err}") from None
        _check_tau_gives_finite_loss(tau)
        return cls(
            loss=loss,
            kernel=kernel,
            relevance_topk=topk,
            ideal_dcg=ideal,
            weight=weight,
            tau=tau,
            combine=combine,
            reference_compat=bool(cfg.get("reference_compat", False)),
            relevance=RelevanceConfig.from_cfg(cfg.get("relevance")),
        )

    @property
    def loss_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the listwise loss class is built with (see ``losses.registry``)."""
        return {
            "tau": self.tau,
            "kernel": self.kernel,
            "relevance_topk": self.relevance_topk,
            "ideal_dcg": self.ideal_dcg,
        }

    def build_loss(self) -> nn.Module:
        """The listwise loss ``model.listwise`` describes, from the loss registry."""
        return build_loss(self.loss, **self.loss_kwargs)

    def combined_loss(self, stock: Tensor, listwise: Tensor) -> Tensor:
        """The training loss from the model's stock loss and the listwise term (``combine``, ``weight``)."""
        return combine_losses(stock, listwise, self.weight, self.combine)


#: Scores spanning the cosine range with ties, near-ties and graded relevance: the probe a tau must pass.
_TAU_PROBE_SCORES = (-1.0, -1.0, 0.0, 0.0, 1e-7, 0.5, 1.0, 1.0)
_TAU_PROBE_RELEVANCE = (1.0, 0.2, 0.5, 0.5, 0.0, 1.0, 0.3, 1.0)


def _check_tau_gives_finite_loss(tau: float) -> None:
    """Refuse a ``tau`` whose smoothed ranks or gradients overflow for cosine scores in float32.

    ``(s_j - s_i) / tau`` is formed in float32, so below about 6e-39 the scaled scores themselves are
    infinite and every loss is NaN; the probe runs the real loss and its backward on one row.
    """
    import torch

    from listwise_ranking.losses import smooth_ndcg_loss

    scores = torch.tensor([_TAU_PROBE_SCORES], dtype=torch.float32, requires_grad=True)
    relevance = torch.tensor([_TAU_PROBE_RELEVANCE], dtype=torch.float32)
    loss = smooth_ndcg_loss(scores, relevance, tau=tau, kernel="torch")
    loss.backward()
    if not (torch.isfinite(loss) and torch.isfinite(scores.grad).all()):
        raise ConfigError(
            f"{_KEY}.tau = {tau!r} gives non-finite smoothed ranks or gradients for cosine scores in "
            "[-1, 1] in float32 (the paper uses 0.01)"
        )


def _existing_file(value: Any, key: str, suffixes: tuple[str, ...]) -> Path | None:
    """``None`` for an unset key, else the absolute path of an existing file with one of ``suffixes``."""
    if value in (None, ""):
        return None
    path = Path(str(value)).expanduser().resolve()
    if path.suffix not in suffixes:
        raise ConfigError(f"{key}: {str(path)!r} must be a {' or '.join(suffixes)} file")
    if not path.is_file():
        raise ConfigError(f"{key}: file {str(path)!r} does not exist")
    return path


def _number(value: Any, key: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    return out


def _integer(value: Any, key: str, minimum: int | None = None) -> int:
    """An integer setting: a YAML integer (not a bool, not ``2.7`` truncated, not a string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    return value


def _tristate(value, key: str) -> str:
    """``auto`` / ``true`` / ``false`` from YAML (booleans or strings)."""
    text = str(value).lower()
    if text not in ("auto", "true", "false"):
        raise ConfigError(f"{key} must be auto, true or false, got {value!r}")
    return text


@dataclass(frozen=True)
class EvalSettings:
    """The ``run.*`` keys of the retrieval evaluation.

    * ``itm_eval``: ``fast`` (:mod:`lavis_listwise.evaluation.rerank`, default) or ``stock`` (LAVIS's
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
            raise ConfigError(f"run.itm_eval must be 'fast' or 'stock', got {itm!r}")
        pairs = cfg.get("itm_eval_pairs")
        if pairs is not None and (isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1):
            raise ConfigError(f"run.itm_eval_pairs must be a positive integer or null, got {pairs!r}")
        where = str(cfg.get("eval_feature_device", "auto"))
        if where not in ("auto", "device", "cpu"):
            raise ConfigError(f"run.eval_feature_device must be auto, device or cpu, got {where!r}")
        keep = cfg.get("save_rankings", 0) or 0
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ConfigError(
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
            raise ConfigError(
                "run.coco_1k: true needs run.itm_eval: fast (each fold is re-ranked on its own)"
            )
        return settings


# ----------------------------------------------------------------------------- values, before building
#: ``model`` keys whose values are checked by their own code here, not by the default YAML's types.
_OWN_CHECKS = frozenset({"arch", "model_type", "listwise", "model_config"})


def _plain(cfg) -> Any:
    """An OmegaConf node as plain Python (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _check_types(defaults: Mapping, given: Mapping, where: str) -> None:
    """Each value of ``given`` has the kind of its value in the arch's default YAML: a number where
    the default is a number, a boolean where it is a boolean; mappings recursively."""
    for key, value in given.items():
        default = defaults.get(key)
        if key in _OWN_CHECKS or default is None or value is None:
            continue
        name = f"{where}{key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number (the default is {default!r}), got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be finite, got {value!r}")
        elif isinstance(default, Mapping) and isinstance(value, Mapping):
            _check_types(default, value, f"{name}.")


def _check_device(run_cfg: Mapping, available: bool = False) -> str | None:
    """``run.device``: a device torch knows (and, with ``available``, CUDA only where a GPU is
    visible). Returns its type."""
    import torch

    device = run_cfg.get("device")
    if device is None:
        return None
    try:
        kind = torch.device(str(device)).type
    except (RuntimeError, ValueError):
        raise ConfigError(f"run.device: {device!r} is not a torch device (cpu, cuda, cuda:0...)") from None
    if available and kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"run.device is {device!r} but no CUDA GPU is visible (torch.cuda.is_available() is False); "
            "set run.device: cpu"
        )
    return kind


def difflib_hint(name: str, valid) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``valid``, or nothing."""
    import difflib

    match = difflib.get_close_matches(str(name), sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _check_dataset_paths(name: str, section: Mapping) -> None:
    """Annotation files (or a url to download them from) and the image directory of a plugin builder."""
    import lavis.common.utils as lavis_utils

    def absolute(path: str) -> str:
        return path if os.path.isabs(path) else lavis_utils.get_cache_path(path)

    key = f"datasets.{name}.build_info"
    build_info = section.get("build_info") or {}
    for split, info in (build_info.get("annotations") or {}).items():
        if split not in ("train", "val", "test") or not isinstance(info, Mapping):
            continue
        storage = info.get("storage")
        for path in [storage] if isinstance(storage, str) else list(storage or []):
            if not os.path.isfile(absolute(str(path))) and not info.get("url"):
                raise MissingPathError(
                    f"{key}.annotations.{split}.storage: annotation file {absolute(str(path))!r} does not "
                    "exist and no url is given to download it"
                )
    data_type = section.get("data_type") or "images"
    visual = build_info.get(data_type)
    storage = visual.get("storage") if isinstance(visual, Mapping) else None
    if storage is None:
        raise ConfigError(f"{key}.{data_type}.storage: the image directory is not set")
    if not os.path.isdir(absolute(str(storage))):
        what = "is a file, not a directory" if os.path.exists(absolute(str(storage))) else "does not exist"
        raise MissingPathError(
            f"{key}.{data_type}.storage: image directory {absolute(str(storage))!r} {what}"
        )


def check_settings(model_cfg, run_cfg, model_defaults=None, model_cls: type | None = None) -> None:
    """Check the values of the plugin's settings when the config is read, before anything is built
    (:func:`~lavis_listwise.config_check.check_config` calls it): each failure is one
    :class:`ConfigError` naming the key (and the file or directory). What depends on the machine
    (a GPU, the data on disk) is :func:`check_environment`'s.

    Args:
        model_cfg: the ``model`` section (merged over the arch's default YAML).
        run_cfg: the ``run`` section.
        model_defaults: the arch's default ``model`` YAML: values must be of its values' kinds.
        model_cls: the arch's class, if it is one of the plugin's (else ``model`` is not checked).
    """
    from .evaluation.ground_truth import gt_relevance_paths, positive_threshold

    run = _plain(run_cfg)
    EvalSettings.from_run_cfg(run)
    _check_device(run)
    positive_threshold(run.get("gt_positive_threshold"))
    splits = set(run.get("valid_splits") or []) | set(run.get("test_splits") or [])
    gt_relevance_paths(run.get("gt_relevance"), splits)
    if model_cls is None:
        return
    model = _plain(model_cfg)
    if model_defaults is not None:
        _check_types(_plain(model_defaults), model, "model.")
    ListwiseConfig.from_cfg(model.get("listwise"))
    check_model = getattr(model_cls, "check_model_config", None)  # the arch checks its own keys
    if check_model is not None:
        check_model(model)


def check_environment(cfg) -> None:
    """What a run needs of this machine, checked before datasets and model are built (first thing in
    ``retrieval_listwise``'s ``build_datasets``): ``model.listwise.kernel: triton`` only where Triton
    runs, and the plugin builders' annotation files (or a url to download them) and image
    directories. (``run.device`` is :func:`check_run_device`'s: the process group is set up before
    the task.)

    Args:
        cfg: LAVIS's ``Config`` (its model and dataset sections merged over their default YAMLs).

    Raises:
        ConfigError naming the key and the path.
    """
    from lavis.common.registry import registry

    run = _plain(cfg.run_cfg)
    device = _check_device(run)
    listwise = _plain(cfg.model_cfg.get("listwise")) if cfg.model_cfg is not None else None
    if isinstance(listwise, Mapping) and str(listwise.get("kernel")) == "triton":
        import torch

        from listwise_ranking.losses.kernels.triton import triton_available

        if _number(listwise.get("weight", 0.0), f"{_KEY}.weight") > 0 and not triton_available(
            torch.device(device or "cuda")
        ):
            raise ConfigError(
                f"{_KEY}.kernel: triton needs a CUDA device and the triton package (run.device is "
                f"{run.get('device')!r}); use kernel: auto or torch"
            )
    for name in cfg.datasets_cfg or {}:
        builder = registry.get_builder_class(name)
        if builder is not None and builder.__module__.startswith("lavis_listwise."):
            _check_dataset_paths(name, _plain(cfg.datasets_cfg[name]))


def check_run_device(cfg_path: str, options=()) -> None:
    """``run.device`` of a run YAML plus ``--options``: CUDA only where a GPU is visible. The commands
    that train or evaluate call it first, before the process group (which would fail on it) is set up.

    Raises:
        ConfigError naming ``run.device`` (or the unreadable file / malformed option).
    """
    from omegaconf import DictConfig, OmegaConf

    from .config_io import parse_options, read_yaml_file

    merged = OmegaConf.merge(read_yaml_file(cfg_path), parse_options(options))
    run = merged.get("run") if isinstance(merged, DictConfig) else None
    if isinstance(run, DictConfig):
        _check_device(_plain(run), available=True)


#: Keys that differ between a run and the checkpoint it resumes from by design.
_RESUME_KEYS_EXPECTED_TO_DIFFER = frozenset({"run.resume_ckpt_path"})


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(saved: Mapping | None, current: Mapping) -> list[str]:
    """``"key: saved -> current"`` for every setting of ``current`` (a run's config as a dict) that
    differs from ``saved`` (the config stored in the checkpoint it resumes), except
    ``run.resume_ckpt_path``; ``[]`` when the checkpoint stores no config."""
    if not saved:
        return []
    old, new = _flatten(_plain(saved)), _flatten(_plain(current))
    return [
        f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
        for key in sorted(set(old) | set(new))
        if key not in _RESUME_KEYS_EXPECTED_TO_DIFFER and old.get(key) != new.get(key)
    ]


def warn_config_differences(saved: Mapping | None, current: Mapping, checkpoint: Any) -> list[str]:
    """Log one warning listing :func:`config_differences` of a resumed run; returns them."""
    import logging

    differences = config_differences(saved, current)
    if differences:
        logging.warning(
            "resuming from %s with a config that differs from the checkpoint's in %d setting(s): %s",
            checkpoint,
            len(differences),
            "; ".join(differences),
        )
    return differences
