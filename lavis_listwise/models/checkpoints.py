"""Checkpoints a model is built from (``model.finetuned``, ``model.pretrained``) or resumed from
(``run.resume_ckpt_path``) must fit it.

LAVIS's ``BaseModel.load_checkpoint`` and the ``load_from_pretrained`` methods of BLIP, ALBEF and
BLIP-2 load with ``strict=False`` and log (at most) the missing keys, so a checkpoint of another
architecture loads nothing and the run goes on with random weights (UPSTREAMING 14); a file that is
not a checkpoint, or a tensor of another shape, ends in a raw torch traceback naming neither the
YAML key nor the file. Here every such problem is one :class:`CheckpointError` naming the key, the
file and the first offending keys. The exceptions a checkpoint may leave out are named below and
nowhere else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from listwise_ranking.errors import CheckpointError, ConfigError

__all__ = [
    "POSITION_IDS_SUFFIX",
    "connection_problem",
    "load_configured_checkpoint",
    "refuse_unread_checkpoints",
    "checkpoint_mismatch",
    "describe_keys",
    "frozen_parameter_names",
    "read_state_dict",
    "require_fit",
]

#: BERT's ``embeddings.position_ids`` buffer: transformers < 4.31 (LAVIS pins < 4.27) saves it,
#: later versions do not (non-persistent); its value is always ``arange``. A checkpoint may lack it
#: or carry it.
POSITION_IDS_SUFFIX = "embeddings.position_ids"


def describe_keys(keys: Iterable[str], first: int = 5) -> str:
    """``"a, b, c and 7 more"`` (the first ``first`` keys), or ``"none"``."""
    keys = list(keys)
    if not keys:
        return "none"
    return ", ".join(keys[:first]) + (f" and {len(keys) - first} more" if len(keys) > first else "")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def read_state_dict(url_or_filename: str, key: str) -> dict[str, torch.Tensor]:
    """The state dict of the checkpoint ``url_or_filename`` (``{"model": state dict}``, as LAVIS's and
    the plugin's runners write it, or a bare state dict), read as LAVIS's ``load_checkpoint`` reads it
    (a URL through LAVIS's download cache; ``torch.load`` with its default ``weights_only``).

    Raises:
        CheckpointError naming ``key`` and the file when it is missing, is not a torch checkpoint
        (truncated, another format, a pickle of other objects) or holds no state dict. A failed
        download's ``URLError`` passes through (the caller names the cache).
    """
    from lavis.common.dist_utils import download_cached_file
    from lavis.common.utils import is_url

    if is_url(url_or_filename):
        path = download_cached_file(url_or_filename, check_hash=False, progress=True)
    elif os.path.isfile(os.path.expanduser(str(url_or_filename))):
        path = os.path.expanduser(str(url_or_filename))
    else:
        raise CheckpointError(f"{key}: {str(url_or_filename)!r} is neither a file nor an http(s) URL")
    try:
        checkpoint = torch.load(path, map_location="cpu")
    except Exception as err:  # RuntimeError (zip reader), UnpicklingError, EOFError, ... for bad files
        raise CheckpointError(
            f"{key}: {str(url_or_filename)!r} is not a loadable torch checkpoint ({_first_line(err)})"
        ) from None
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if (
        not isinstance(state_dict, Mapping)
        or not state_dict
        or not all(isinstance(v, torch.Tensor) for v in state_dict.values())
    ):
        raise CheckpointError(
            f"{key}: {str(url_or_filename)!r} holds no model state dict (a mapping of names to tensors, "
            "bare or under 'model')"
        )
    return dict(state_dict)


def frozen_parameter_names(model: nn.Module) -> set[str]:
    """Names of ``model``'s parameters with ``requires_grad=False`` (BLIP/ALBEF's momentum encoders,
    BLIP-2's frozen ViT): LAVIS's ``RunnerBase._save_checkpoint`` leaves them out (UPSTREAMING 5)."""
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def checkpoint_mismatch(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    may_lack: Iterable[str] = (),
    may_add: bool = False,
) -> str | None:
    """Why ``state_dict`` does not fit ``model``, or ``None`` when it does.

    Args:
        may_lack: model keys the checkpoint may leave out.
        may_add: whether keys the model does not have are allowed.

    ``*.embeddings.position_ids`` may always be absent or extra (:data:`POSITION_IDS_SUFFIX`).
    """
    own = model.state_dict()
    shapes = [
        f"{k} (checkpoint {list(v.shape)}, model {list(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if shapes:
        return f"tensors of another shape: {describe_keys(shapes, first=3)}"
    may_lack = set(may_lack)
    missing = [
        k for k in own if k not in state_dict and k not in may_lack and not k.endswith(POSITION_IDS_SUFFIX)
    ]
    unexpected = (
        [] if may_add else [k for k in state_dict if k not in own and not k.endswith(POSITION_IDS_SUFFIX)]
    )
    if missing or unexpected:
        return f"missing keys: {describe_keys(missing)}; unexpected keys: {describe_keys(unexpected)}"
    return None


def require_fit(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    key: str,
    source: str,
    may_lack: Iterable[str] = (),
    may_add: bool = False,
    hint: str = "",
) -> None:
    """:class:`CheckpointError` naming ``key`` and ``source`` unless :func:`checkpoint_mismatch` passes."""
    problem = checkpoint_mismatch(model, state_dict, may_lack, may_add)
    if problem:
        raise CheckpointError(f"{key}: {source} does not fit this model{hint}: {problem}")


def frozen_keys_left_out(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> set[str]:
    """The frozen parameters ``state_dict`` may lack: all of them when it holds none (a checkpoint of
    LAVIS's runner, which drops them), none otherwise (a partial set is a truncated checkpoint)."""
    frozen = frozen_parameter_names(model)
    if frozen and not any(k in state_dict for k in frozen):
        return frozen
    return set()


def resync_momentum_encoders(model: nn.Module, left_out: set[str]) -> None:
    """After a checkpoint without the momentum encoders (LAVIS's runner drops them), start them from the
    loaded online encoders, as BLIP/ALBEF's ``__init__`` does (``copy_params``), instead of leaving them
    at the random initialisation."""
    pairs = getattr(model, "model_pairs", None)
    if not left_out or not pairs or not hasattr(model, "copy_params"):
        return
    names = {id(p): n for n, p in model.named_parameters()}
    if any(names.get(id(p)) in left_out for _, m in pairs for p in m.parameters()):
        model.copy_params()
        logging.info("the checkpoint has no momentum encoders: copied from the loaded encoders")


def _default_model_values(model_cls, cfg, key: str) -> list:
    """``model.<key>`` of ``model.model_type``'s default YAML (what the run gets without setting it); of
    every type's when the config does not say (``from_pretrained`` passes the default YAML alone)."""
    from omegaconf import OmegaConf

    types = getattr(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", {})
    model_type = cfg.get("model_type")
    names = [model_type] if model_type in types else list(types)
    return [OmegaConf.load(model_cls.default_config_path(name)).model.get(key) for name in names]


def refuse_unread_checkpoints(model_cls, cfg) -> None:
    """A :class:`ConfigError` when the user set a checkpoint the run would not read: ``model.finetuned``
    with ``model.load_finetuned: False``, or (where ``pretrained`` is only read without a fine-tuned
    checkpoint: BLIP, ALBEF, BLIP-2) ``model.pretrained`` with ``load_finetuned: True``. LAVIS ignores
    both silently. A value equal to the model type's default YAML is not the user's and passes (the
    ``coco`` types carry both URLs)."""
    load_finetuned = bool(cfg.get("load_finetuned", True))
    checks = [("finetuned", not load_finetuned)]
    if not getattr(model_cls, "pretrained_always_read", False):
        checks.append(("pretrained", load_finetuned))
    for key, unread in checks:
        value = cfg.get(key)
        if not unread or not value or value in _default_model_values(model_cls, cfg, key):
            continue
        if key == "finetuned":
            raise ConfigError(
                f"model.finetuned is set to {value!r} but model.load_finetuned is False, so the run would "
                "not read it: set model.load_finetuned=True to load it, or leave model.finetuned out"
            )
        raise ConfigError(
            f"model.pretrained is set to {value!r} but model.load_finetuned is True, so the run loads "
            f"model.finetuned ({cfg.get('finetuned')!r}) instead: set model.load_finetuned=False to start "
            "from model.pretrained, or leave model.pretrained out"
        )


def load_configured_checkpoint(model, cfg) -> None:
    """LAVIS's ``load_checkpoint_from_config`` when a checkpoint is configured; none = from scratch.

    ``load_finetuned: True`` needs ``finetuned``; ``load_finetuned: False`` loads ``pretrained`` if set.
    An http(s) URL is loaded from LAVIS's download cache (``$TORCH_HOME/hub/checkpoints/<file name>``)
    when the file is there, else downloaded by LAVIS. A local path must be a file.

    Raises:
        CheckpointError: the file is not in the cache and the URL's host (or the proxy) cannot be
            reached within 10 s, or the download fails; the message names the URL, the YAML key to set
            to a local copy instead, and the cache path. Also for a local path that is not a file, or a
            checkpoint that does not fit (the model's ``load_checkpoint`` / ``load_from_pretrained``).
        ConfigError: a checkpoint is set that the run would not read (:func:`refuse_unread_checkpoints`).
    """
    from urllib.error import URLError
    from urllib.parse import urlparse

    from lavis.common.utils import is_url
    from timm.models.hub import get_cache_dir

    refuse_unread_checkpoints(type(model), cfg)
    key = "finetuned" if cfg.get("load_finetuned", True) else "pretrained"
    source = cfg.get(key)
    if not source:
        if key == "finetuned":
            raise ConfigError("model.load_finetuned is True but model.finetuned is not set")
        logging.info("model.pretrained is not set: weights are initialised from scratch")
        return
    if not is_url(source):
        if not os.path.isfile(source):
            raise CheckpointError(f"model.{key}: {source!r} is neither a file nor an http(s) URL")
        model.load_checkpoint_from_config(cfg)
        return
    # LAVIS's download_cached_file looks in the same place (timm's hub cache, by file name) first
    cached = os.path.join(get_cache_dir(), os.path.basename(urlparse(source).path))

    def cannot_download(reason: str) -> CheckpointError:
        return CheckpointError(
            f"model.{key}: cannot download {source} ({reason}). Without network, fetch the file elsewhere "
            f"and set model.{key} to its local path (e.g. --options model.{key}=/path/to/"
            f"{os.path.basename(cached)}), or put it at {cached}, where LAVIS looks before downloading"
        )

    if not os.path.exists(cached):
        unreachable = connection_problem(source, timeout=10.0)
        if unreachable:  # LAVIS's own attempt would end in a raw URLError, after the resolver's timeouts
            raise cannot_download(unreachable)
    try:
        model.load_checkpoint_from_config(cfg)
    except URLError as err:  # reachable, but the download failed (HTTP error, connection reset, ...)
        raise cannot_download(str(err.reason)) from err


def connection_problem(url: str, timeout: float) -> str | None:
    """Why a TCP connection to ``url``'s host, or to the proxy urllib would use for it, cannot be made
    within ``timeout`` seconds; ``None`` if it can."""
    import socket
    import threading
    from urllib.parse import urlparse
    from urllib.request import getproxies, proxy_bypass

    parts = urlparse(url)
    proxy = getproxies().get(parts.scheme)
    if proxy and not proxy_bypass(parts.hostname or ""):
        parts = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{address[0]}:{address[1]}: {err.strerror or err}")

    # name resolution has no timeout of its own: bound it with the thread's
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no connection to {address[0]}:{address[1]} within {timeout:g} s"
