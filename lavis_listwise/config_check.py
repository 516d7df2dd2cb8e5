"""Strict configuration keys: a key nothing reads is refused before anything is built.

LAVIS reads its YAML with ``cfg.get("key", default)`` and attribute access, so a misspelled key
(``run.max_epochs`` for ``max_epoch``) is silently ignored and the default applies. This module
derives the keys LAVIS and the plugin actually read, from their source code, and refuses any other
key under ``run``, under ``model`` (for the plugin's archs), under each ``datasets.<builder>`` and
its ``build_info``, under the demo's ``demo`` section, and at the top level, naming the key and the
closest valid one.

How the valid keys are derived (nothing is guessed; each source is named below):

- *Reader files* (:data:`RUN_READERS` and the others): the source files of the modules that read a
  section are parsed with :mod:`ast` (located with ``importlib.util.find_spec``, read as text, never
  executed), and every key read from a *receiver* expression is collected: ``r.key``,
  ``r.get("key")``, ``r["key"]``, ``"key" in r``, ``getattr(r, "key")``, and string literals passed
  together with ``r`` to a helper of the same file (``_positive_int(run_cfg, "k_test")``). Receivers
  are patterns of the dotted expression, e.g. ``*.run_cfg`` matches ``self.config.run_cfg``.
- *Model archs* of the plugin: the arch class's ``from_config`` is parsed, and every call that passes
  the config on is followed into the callee (module functions, ``cls.``/``self.`` methods, methods of
  imported classes, ``super()``), mapping the argument to the callee's parameter; callees outside
  LAVIS, the plugin and the arch's own package (OmegaConf, builtins) count as reading no keys. So a
  new arch needs nothing here: its ``from_config`` and what it calls define its keys. A call that
  cannot be resolved is reported (:class:`ModelKeys`); the arch's ``model`` keys are then not
  checked (with a warning).
- *Dataset builders*: the source files of every class in the builder's MRO, with the receivers
  ``self.config`` (the builder's keys) and ``build_info`` / ``*.build_info`` (``build_info``'s keys).

``run.strict_config: false`` (default ``true``) turns the unknown-key check off, for users whose own
LAVIS extensions read keys this derivation does not know. Malformed ``--options`` and unregistered
names (arch, task, runner, builder) are refused either way: LAVIS would mis-handle or crash on them.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import functools
import importlib.util
import inspect
import logging
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config_io import parse_options
from .errors import ConfigError

__all__ = [
    "STRICT_SWITCH",
    "ModelKeys",
    "check_config",
    "model_keys",
    "plugin_archs",
    "valid_build_info_keys",
    "valid_dataset_keys",
    "valid_demo_keys",
    "valid_model_keys",
    "valid_run_keys",
    "valid_top_level_keys",
]

#: The one switch that turns the unknown-key check off (read below as ``run_cfg.get("strict_config")``).
STRICT_SWITCH = "run.strict_config"
_HINT = f"(set {STRICT_SWITCH}: false to skip this check for your own LAVIS extensions)"

#: Methods of a config mapping: ``r.get`` is a read through ``get``, never a key named ``get``.
_MAPPING_METHODS = frozenset(
    {"get", "items", "keys", "values", "pop", "setdefault", "update", "copy", "__contains__", "__getitem__"}
)


@dataclass(frozen=True)
class Reader:
    """Code that reads one config section: a module's source file, the receiver patterns that denote
    the section in it, and optionally the functions (qualified names) the patterns apply to."""

    module: str
    receivers: tuple[str, ...]
    functions: tuple[str, ...] = ()


_RUN = ("run_cfg", "*.run_cfg")

#: Everything that reads ``run``: LAVIS's runners, task setup, retrieval task and models'
#: ``compute_sim_matrix(data_loader, task_cfg)``, ``init_distributed_mode`` (LAVIS's train.py passes
#: it the run config; the keys of LAVIS's own YAMLs, ``dist_url`` / ``world_size``, are read there),
#: and the plugin's entry point, process group, runner, task and this check.
RUN_READERS: tuple[Reader, ...] = (
    Reader("lavis.runners.runner_base", _RUN),
    Reader("lavis.runners.runner_iter", _RUN),
    Reader("lavis.tasks", _RUN),
    Reader("lavis.tasks.retrieval", (*_RUN, "self.cfg")),
    Reader("lavis.models.blip_models.blip_retrieval", ("task_cfg",), ("BlipRetrieval.compute_sim_matrix",)),
    Reader(
        "lavis.models.albef_models.albef_retrieval", ("task_cfg",), ("AlbefRetrieval.compute_sim_matrix",)
    ),
    Reader("lavis.common.dist_utils", ("args",), ("init_distributed_mode",)),
    Reader("lavis_listwise.train", _RUN),
    Reader("lavis_listwise.distributed", _RUN),
    Reader("lavis_listwise.runners.runner_listwise", _RUN),
    Reader("lavis_listwise.tasks.retrieval_listwise", (*_RUN, "self.cfg")),
    # the task's constructor and EvalSettings receive the run config as ``cfg``
    Reader("lavis_listwise.tasks.retrieval_listwise", ("cfg",), ("RetrievalListwiseTask.__init__",)),
    Reader("lavis_listwise.config", ("cfg",), ("EvalSettings.from_run_cfg",)),
    Reader("lavis_listwise.config_check", _RUN),
)

#: The run YAML's top level: LAVIS's ``Config`` reads ``model``, ``datasets`` and ``run`` and drops
#: everything else; the plugin's demo reads its ``demo`` section from the same file.
TOP_LEVEL_READERS: tuple[Reader, ...] = (
    Reader(
        "lavis.common.config",
        ("config",),
        ("Config.build_model_config", "Config.build_runner_config", "Config.build_dataset_config"),
    ),
    Reader("lavis_listwise.demo.runner", ("read_yaml_file(*)",), ("run_demo",)),
)

#: ``demo:`` of projects/demo/*.yaml (``spec`` in ``run_demo``).
DEMO_READERS: tuple[Reader, ...] = (Reader("lavis_listwise.demo.runner", ("spec",), ("run_demo",)),)

#: ``model`` keys read outside the arch's ``from_config``: ``arch`` / ``model_type`` by LAVIS's Config
#: and task, ``queue_size`` by the plugin's size check.
MODEL_READERS: tuple[Reader, ...] = (
    Reader("lavis.common.config", ("model",), ("Config.build_model_config",)),
    Reader("lavis.tasks.base_task", ("model_config",), ("BaseTask.build_model",)),
    Reader("lavis_listwise.tasks.retrieval_listwise", ("*.model_cfg",)),
)

#: ``datasets.<builder>`` keys read outside the builder: ``type`` by LAVIS's Config.
DATASET_READERS: tuple[Reader, ...] = (
    Reader("lavis.common.config", ("datasets[*]",), ("Config.build_dataset_config",)),
)
_BUILDER_RECEIVERS = ("self.config",)
_BUILD_INFO_RECEIVERS = ("build_info", "*.build_info")


# ----------------------------------------------------------------------------- source scanning
def _render(node: ast.AST) -> str | None:
    """A receiver expression as text: ``self.config.run_cfg``, ``datasets[*]`` (any subscript),
    ``OmegaConf.load(*)`` (any call); ``None`` for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _render(node.value)
        return None if base is None else f"{base}.{node.attr}"
    if isinstance(node, ast.Subscript):
        base = _render(node.value)
        return None if base is None else f"{base}[*]"
    if isinstance(node, ast.Call):
        base = _render(node.func)
        return None if base is None else f"{base}(*)"
    return None


def _matches(text: str, pattern: str) -> bool:
    """``pattern`` is a rendered expression, or ``*.tail`` for any expression ending in ``.tail``."""
    return text == pattern or (pattern.startswith("*.") and text.endswith(pattern[1:]))


def _constants(node: ast.AST, bound: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The string values ``node`` can have: a literal, or a name bound to literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return frozenset([node.value])
    if isinstance(node, ast.Name) and node.id in bound:
        return bound[node.id]
    return frozenset()


def _literal_loop_bindings(tree: ast.AST) -> dict[str, frozenset[str]]:
    """Names that loop over a literal tuple/list of strings (``for k in ("a", "b")``), with the strings."""
    bound: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name):
            items = node.iter.elts if isinstance(node.iter, (ast.Tuple, ast.List)) else []
            values = [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
            if values and len(values) == len(items):
                bound.setdefault(node.target.id, set()).update(values)
    return {k: frozenset(v) for k, v in bound.items()}


def _is_membership(node: ast.AST) -> bool:
    """``a in b`` or ``a not in b``."""
    return (
        isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn))
    )


def _key_parameters(node: ast.FunctionDef) -> frozenset[tuple[int, int]]:
    """``(config, key)`` parameter positions of a helper that reads ``config.get(key)``,
    ``config[key]``, ``getattr(config, key)`` or ``key in config`` (e.g. ``_positive_int(run_cfg, key)``)."""
    params = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
    pairs = set()
    for sub in ast.walk(node):
        recv = key = None
        func = sub.func if isinstance(sub, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr == "get" and sub.args:
            recv, key = func.value, sub.args[0]
        elif isinstance(func, ast.Name) and func.id == "getattr":
            recv, key = (sub.args + [None, None])[:2]
        elif isinstance(sub, ast.Subscript):
            recv, key = sub.value, sub.slice
        elif _is_membership(sub):
            recv, key = sub.comparators[0], sub.left
        if isinstance(recv, ast.Name) and isinstance(key, ast.Name) and {recv.id, key.id} <= set(params):
            pairs.add((params.index(recv.id), params.index(key.id)))
    return frozenset(pairs)


class _KeyCollector:
    """Keys read from receivers in one function or module body."""

    def __init__(
        self,
        is_receiver,
        bound: Mapping[str, frozenset[str]],
        helpers: Mapping[str, frozenset[tuple[int, int]]] | None = None,
    ):
        self.is_receiver = is_receiver
        self.bound = bound
        self.helpers = helpers or {}  # module-level helper -> its (config, key) parameter positions
        self.keys: set[str] = set()

    def visit(self, tree: ast.AST) -> set[str]:
        for node in ast.walk(tree):
            self._node(node)
        return self.keys

    def _node(self, node: ast.AST) -> None:
        loads = isinstance(getattr(node, "ctx", None), ast.Load)
        if isinstance(node, ast.Attribute) and loads and self.is_receiver(node.value):
            if node.attr not in _MAPPING_METHODS:
                self.keys.add(node.attr)
        elif isinstance(node, ast.Subscript) and loads and self.is_receiver(node.value):
            self.keys |= _constants(node.slice, self.bound)
        elif _is_membership(node):
            if self.is_receiver(node.comparators[0]):
                self.keys |= _constants(node.left, self.bound)
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in ("get", "pop", "setdefault")
                and self.is_receiver(func.value)
                and node.args
            ):
                self.keys |= _constants(node.args[0], self.bound)
            elif isinstance(func, ast.Name):
                pairs = {(0, 1)} if func.id in ("getattr", "hasattr") else self.helpers.get(func.id, ())
                for recv, key in pairs:
                    if max(recv, key) < len(node.args) and self.is_receiver(node.args[recv]):
                        self.keys |= _constants(node.args[key], self.bound)


def _source_file(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise RuntimeError(f"config check: cannot locate the source of {module!r}")
    return Path(spec.origin)


def _functions(tree: ast.Module) -> dict[str, ast.AST]:
    """Every function of a module by qualified name (``Class.method``, ``function``)."""
    out: dict[str, ast.AST] = {}

    def walk(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[prefix + node.name] = node
                walk(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.ClassDef):
                walk(node.body, f"{prefix}{node.name}.")

    walk(tree.body, "")
    return out


@functools.cache
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@functools.cache
def _keys_read(reader: Reader) -> frozenset[str]:
    """Keys that ``reader``'s receivers are read with, in its module's source file."""
    tree = _parsed(_source_file(reader.module))

    def is_receiver(node: ast.AST) -> bool:
        text = _render(node)
        return text is not None and any(_matches(text, p) for p in reader.receivers)

    functions = _functions(tree)
    helpers = {n: _key_parameters(f) for n, f in functions.items() if "." not in n}
    if reader.functions:
        missing = [f for f in reader.functions if f not in functions]
        if missing:
            raise RuntimeError(f"config check: {reader.module} has no function {missing} to read keys from")
        bodies = [functions[f] for f in reader.functions]
    else:
        bodies = [tree]
    keys: set[str] = set()
    for body in bodies:
        keys |= _KeyCollector(is_receiver, _literal_loop_bindings(body), helpers).visit(body)
    return frozenset(keys)


def _keys_of(readers: Iterable[Reader]) -> frozenset[str]:
    return frozenset().union(*(_keys_read(r) for r in readers))


# ----------------------------------------------------------------------------- model archs
@dataclass(frozen=True)
class ModelKeys:
    """What an arch's ``from_config`` reads: ``keys``, and the calls that receive the config but could
    not be followed (``unresolved``; the check is skipped for such an arch, with a warning)."""

    keys: frozenset[str]
    unresolved: tuple[str, ...]


def _function_of(obj) -> Any:
    obj = inspect.unwrap(obj.__func__ if inspect.ismethod(obj) else obj)
    return obj if inspect.isfunction(obj) else None


def _defining_class(owner: type, func) -> type | None:
    """The class of ``owner``'s MRO whose body defines ``func``."""
    holder = (func.__module__, func.__qualname__.rpartition(".")[0])
    return next((k for k in owner.__mro__ if (k.__module__, k.__qualname__) == holder), None)


class _ModelScanner:
    """Follows the model config through ``from_config`` and the calls it is passed to."""

    def __init__(self, owner: type):
        self.owner = owner
        self.packages = {"lavis", "lavis_listwise", owner.__module__.partition(".")[0]}  # code to follow
        self.keys: set[str] = set()
        self.unresolved: list[str] = []
        self._seen: set[tuple[Any, str]] = set()

    def scan(self, func, param: str) -> None:
        if (func, param) in self._seen:
            return
        self._seen.add((func, param))
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        node = tree.body[0]
        tracked = {param}
        for stmt in ast.walk(node):  # plain aliases: ``c = cfg``
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Name) and stmt.value.id in tracked:
                tracked |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}

        def is_receiver(n: ast.AST) -> bool:
            return isinstance(n, ast.Name) and n.id in tracked

        self.keys |= _KeyCollector(is_receiver, _literal_loop_bindings(node)).visit(node)
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            positions = [i for i, a in enumerate(call.args) if is_receiver(a)]
            names = [k.arg for k in call.keywords if k.arg and is_receiver(k.value)]
            if not positions and not names:
                continue
            if isinstance(call.func, ast.Name) and hasattr(builtins, call.func.id):
                continue  # isinstance(cfg, ...), getattr(cfg, "key") (collected above), len(cfg)...
            callee, shift = self._resolve(call.func, func)
            if callee is None:
                self.unresolved.append(f"{func.__qualname__}: {ast.unparse(call)}")
                continue
            if callee.__module__.partition(".")[0] not in self.packages:
                continue  # a library (OmegaConf, torch...) handling the config, not reading our keys
            args = _arguments(callee)
            params = [p.arg for p in (*args.posonlyargs, *args.args)]
            for i in positions:
                if i + shift < len(params):
                    self.scan(callee, params[i + shift])
            for name in names:
                self.scan(callee, name)

    def _resolve(self, func_node: ast.AST, caller) -> tuple[Any, int]:
        """The function a call goes to and how many leading parameters are bound (``cls``/``self``)."""
        scope = caller.__globals__
        if isinstance(func_node, ast.Name):
            target = scope.get(func_node.id)
            if isinstance(target, type):  # a constructor
                return self._member(target, "__init__")
            function = _function_of(target) if callable(target) else None
            return function, 1 if inspect.ismethod(target) else 0
        if not isinstance(func_node, ast.Attribute):
            return None, 0
        base, name = func_node.value, func_node.attr
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
            klass, mro = _defining_class(self.owner, caller), self.owner.__mro__
            later = mro[mro.index(klass) + 1 :] if klass else ()
            holder = next((k for k in later if name in vars(k)), None)
            return self._member(holder, name) if holder else (None, 0)
        if isinstance(base, ast.Name) and base.id in scope:
            target = scope[base.id]
            if isinstance(target, type):
                return self._member(target, name)
            if inspect.ismodule(target):
                return _function_of(getattr(target, name, None)), 0
            return None, 0
        # cls.x / self.x, or a method of a local instance of the arch (``model.load_checkpoint_from_config``)
        return self._member(self.owner, name)

    @staticmethod
    def _member(klass: type, name: str) -> tuple[Any, int]:
        static = inspect.getattr_static(klass, name, None)
        if static is None:
            return None, 0
        if isinstance(static, staticmethod):
            return _function_of(static.__func__), 0
        raw = static.__func__ if isinstance(static, classmethod) else static
        return _function_of(raw), 1  # classmethod's cls, or the instance's self


def _arguments(func) -> ast.arguments:
    return ast.parse(textwrap.dedent(inspect.getsource(func))).body[0].args


@functools.cache
def _model_keys_of_class(model_cls: type) -> ModelKeys:
    scanner = _ModelScanner(model_cls)
    from_config = _function_of(inspect.getattr_static(model_cls, "from_config").__func__)
    params = [p.arg for p in _arguments(from_config).args]
    scanner.scan(from_config, params[1])  # (cls, cfg)
    keys = frozenset(scanner.keys) | _keys_of(MODEL_READERS)
    return ModelKeys(keys, tuple(dict.fromkeys(scanner.unresolved)))


def plugin_archs() -> list[str]:
    """The archs registered by lavis-listwise (their ``model`` keys are checked)."""
    from lavis.common.registry import registry

    import lavis_listwise  # noqa: F401

    mapping = registry.mapping["model_name_mapping"]
    return sorted(n for n, c in mapping.items() if c.__module__.startswith("lavis_listwise."))


def model_keys(arch: str | type) -> ModelKeys:
    """What ``arch`` (a registered name, or a model class) reads from ``model`` (see :class:`ModelKeys`)."""
    from lavis.common.registry import registry

    return _model_keys_of_class(registry.get_model_class(arch) if isinstance(arch, str) else arch)


def valid_model_keys(arch: str) -> frozenset[str]:
    """The ``model`` keys ``arch`` reads: its ``from_config`` chain plus :data:`MODEL_READERS`."""
    return model_keys(arch).keys


# ----------------------------------------------------------------------------- the other sections
def valid_run_keys() -> frozenset[str]:
    """The ``run`` keys LAVIS's runners and tasks and the plugin read (:data:`RUN_READERS`)."""
    return _keys_of(RUN_READERS)


def valid_top_level_keys() -> frozenset[str]:
    """Top-level keys of a run YAML: ``model``, ``datasets``, ``run`` (LAVIS) and ``demo`` (the demo)."""
    return _keys_of(TOP_LEVEL_READERS)


def valid_demo_keys() -> frozenset[str]:
    return _keys_of(DEMO_READERS)


def _builder_readers(builder: str, receivers: tuple[str, ...]) -> tuple[Reader, ...]:
    from lavis.common.registry import registry

    cls = registry.get_builder_class(builder)
    modules = dict.fromkeys(k.__module__ for k in cls.__mro__ if k is not object)
    return tuple(Reader(m, receivers) for m in modules)


def valid_dataset_keys(builder: str) -> frozenset[str]:
    """Keys of ``datasets.<builder>``: read by the builder's classes and by LAVIS's Config (``type``)."""
    return _keys_of(_builder_readers(builder, _BUILDER_RECEIVERS)) | _keys_of(DATASET_READERS)


def valid_build_info_keys(builder: str, data_type: str | None) -> frozenset[str]:
    """Keys of ``datasets.<builder>.build_info``. The builders read the visual storage as
    ``build_info.get(self.data_type)`` (base_dataset_builder.py), a key named by ``data_type``."""
    keys = _keys_of(_builder_readers(builder, _BUILD_INFO_RECEIVERS))
    return keys | {str(data_type)} if data_type else keys


# ----------------------------------------------------------------------------- the check
def _closest(name: str, valid: Iterable[str], where: str) -> str:
    valid = sorted(valid)
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if match:
        return f"did you mean {where}{match[0]}?"
    return f"valid keys: {', '.join(valid)}"


def _unknown(section: Mapping, valid: frozenset[str], where: str, from_options: set[str]) -> list[str]:
    problems = []
    for key in section.keys():
        if key in valid:
            continue
        dotted = f"{where}{key}"
        origin = " (given in --options)" if dotted in from_options else ""
        problems.append(f"{dotted}{origin}: unknown key; {_closest(str(key), valid, where)}")
    return problems


def _flat_keys(tree: Mapping, prefix: str = "") -> set[str]:
    """Every dotted key of a nested mapping: ``{"a": {"b": 1}}`` -> ``{"a", "a.b"}``."""
    out = set()
    for key, value in tree.items():
        out.add(f"{prefix}{key}")
        if isinstance(value, Mapping):
            out |= _flat_keys(value, f"{prefix}{key}.")
    return out


def _value(cfg, key: str):
    """``cfg[key]`` or ``None`` when absent or ``???``."""
    from omegaconf import OmegaConf

    if key not in cfg or OmegaConf.is_missing(cfg, key):
        return None
    return cfg[key]


def _section(cfg, key: str, required: bool = True):
    from omegaconf import DictConfig

    value = _value(cfg, key)
    if value is None:
        if required:
            raise ConfigError(f"{key}: the run YAML has no {key!r} section")
        return None
    if not isinstance(value, DictConfig):
        raise ConfigError(f"{key}: must be a mapping, got {value!r}")
    return value


def _registered(kind: str, name, key: str):
    from lavis.common.registry import registry

    mapping = registry.mapping[f"{kind}_name_mapping"]
    if name is None:
        raise ConfigError(f"{key} is not set")
    if name in mapping:
        return mapping[name]
    match = difflib.get_close_matches(str(name), sorted(mapping), n=1, cutoff=0.5)
    hint = f"did you mean {match[0]!r}?" if match else f"registered: {', '.join(sorted(mapping))}"
    raise ConfigError(f"{key}: {name!r} is not a registered LAVIS {kind}; {hint}")


def _config_type(cls, table: str, name, key: str) -> str:
    types = getattr(cls, table, {})
    if name not in types:
        match = difflib.get_close_matches(str(name), sorted(types), n=1, cutoff=0.5)
        hint = f"did you mean {match[0]!r}?" if match else f"available: {', '.join(sorted(types))}"
        raise ConfigError(f"{key}: {name!r} is not a type of {cls.__name__}; {hint}")
    return name


def _default_data_type(default_path: str, builder: str) -> str | None:
    from omegaconf import OmegaConf

    section = OmegaConf.load(default_path).get("datasets", {}).get(builder, {})
    return section.get("data_type")


def _check_values(model_cfg, run_cfg, model_cls, model_type) -> None:
    """The values of the plugin's settings, the model's merged over the arch's default YAML as LAVIS
    merges them (:func:`~lavis_listwise.config.check_settings`)."""
    from omegaconf import OmegaConf

    from .config import check_settings

    if not model_cls.__module__.startswith("lavis_listwise."):
        check_settings(model_cfg, run_cfg)
        return
    defaults = OmegaConf.load(model_cls.default_config_path(model_type=model_type)).get("model", {})
    check_settings(OmegaConf.merge(defaults, model_cfg), run_cfg, defaults, model_cls)


def check_config(user_cfg, options: Sequence[str] = ()) -> None:
    """Refuse a run YAML (an OmegaConf tree, as parsed from ``--cfg-path``) plus ``--options`` that
    LAVIS would silently mis-read. Call it after registering the plugin, before LAVIS's Config.

    Raises:
        ConfigError naming the key: malformed ``--options``; a missing ``model`` / ``datasets`` /
        ``run``; an unregistered arch, task, runner or dataset builder, or an unknown model or dataset
        ``type``; the values of the plugin's keys (:func:`~lavis_listwise.config.check_settings`); and,
        unless ``run.strict_config: false``, every key nothing reads, each with the closest valid key.
    """
    from omegaconf import DictConfig, OmegaConf

    import lavis_listwise  # noqa: F401  (registers the plugin's archs, builders, task and runner)

    from_options = parse_options(options)
    if not isinstance(user_cfg, DictConfig):
        raise ConfigError(
            f"--cfg-path: the YAML must be a mapping of sections, not {type(user_cfg).__name__}"
        )
    merged = OmegaConf.merge(user_cfg, from_options)
    option_keys = _flat_keys(OmegaConf.to_container(from_options))
    model_cfg, datasets_cfg = _section(merged, "model"), _section(merged, "datasets")
    run_cfg = _section(merged, "run")

    strict = run_cfg.get("strict_config", True)
    if not isinstance(strict, bool):
        raise ConfigError(f"{STRICT_SWITCH} must be true or false, got {strict!r}")

    model_cls = _registered("model", _value(model_cfg, "arch"), "model.arch")
    model_type = _value(model_cfg, "model_type")
    if model_type is None:
        types = sorted(model_cls.PRETRAINED_MODEL_CONFIG_DICT)
        raise ConfigError(f"model.model_type is not set ({model_cls.__name__} has the types {types})")
    _config_type(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", model_type, "model.model_type")
    _registered("task", _value(run_cfg, "task"), "run.task")
    if _value(run_cfg, "runner") is not None:
        _registered("runner", run_cfg.runner, "run.runner")
    builders = {}
    for name in datasets_cfg.keys():
        builder_cls = _registered("builder", name, f"datasets.{name}")
        section = _section(datasets_cfg, name)
        config_type = _config_type(
            builder_cls, "DATASET_CONFIG_DICT", section.get("type", "default"), f"datasets.{name}.type"
        )
        builders[name] = (section, builder_cls.default_config_path(type=config_type))
    values = (model_cfg, run_cfg, model_cls, model_type)
    if not strict:
        _check_values(*values)
        return

    problems = _unknown(merged, valid_top_level_keys(), "", option_keys)
    problems += _unknown(run_cfg, valid_run_keys(), "run.", option_keys)
    arch = str(model_cfg.arch)
    if arch in plugin_archs():
        found = model_keys(arch)
        if found.unresolved:
            logging.warning(
                "model keys of %s not checked: its from_config passes the config to calls this check "
                "cannot follow: %s",
                arch,
                "; ".join(found.unresolved),
            )
        else:
            # LAVIS merges the arch's default model YAML under the user's model section.
            defaults = OmegaConf.load(model_cls.default_config_path(model_type=model_type)).get("model", {})
            problems += _unknown(OmegaConf.merge(defaults, model_cfg), found.keys, "model.", option_keys)
    for name, (section, default_path) in builders.items():
        where = f"datasets.{name}."
        problems += _unknown(section, valid_dataset_keys(name), where, option_keys)
        build_info = _section(section, "build_info", required=False)
        if build_info is not None:
            # data_type names build_info's visual key; LAVIS merges it from the builder's default YAML
            data_type = _value(section, "data_type") or _default_data_type(default_path, name)
            valid = valid_build_info_keys(name, data_type)
            problems += _unknown(build_info, valid, f"{where}build_info.", option_keys)
    demo = _value(merged, "demo")
    if isinstance(demo, DictConfig):
        problems += _unknown(demo, valid_demo_keys(), "demo.", option_keys)
    if problems:
        raise ConfigError("; ".join(problems) + f" {_HINT}")
    _check_values(*values)  # after the key names: a misspelled key is the first thing to fix
