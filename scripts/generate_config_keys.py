"""Generate ``lavis_listwise/config_keys.json``: the YAML keys LAVIS and lavis-listwise read.

The strict key check (:mod:`lavis_listwise.config_check`) refuses a key nothing reads. Which keys
are read is a property of the source code of the installed LAVIS and of the plugin, so this script
derives them once, from that source, and writes a version-pinned table that the check only looks
up; the check parses no source at run time. ``tests/test_config_keys_table.py`` runs
:func:`generate` in memory and fails when the committed table differs (a renamed receiver, a new
key, another LAVIS), naming the command below.

    python scripts/generate_config_keys.py           # rewrite the table
    python scripts/generate_config_keys.py --check   # exit 1 when the table is stale

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
  cannot be followed is recorded as ``unresolved`` (the check then skips that arch's ``model`` keys,
  with a warning). The keys of the LAVIS class each arch extends are recorded too (``lavis_keys``:
  ``tests/test_docs.py`` requires the difference to be documented).
- *Dataset builders* (every builder registered by LAVIS and the plugin): the source files of every
  class in the builder's MRO, with the receivers ``self.config`` (the builder's keys) and
  ``build_info`` / ``*.build_info`` (``build_info``'s keys), plus ``type`` (read by LAVIS's Config).
"""

from __future__ import annotations

import argparse
import ast
import builtins
import functools
import importlib.metadata
import importlib.util
import inspect
import json
import sys
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "lavis_listwise" / "config_keys.json"
COMMAND = "python scripts/generate_config_keys.py"
#: The packages whose source the table is derived from.
PACKAGES = ("lavis", "lavis_listwise")

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


def _plugin_modules() -> list[str]:
    """Every module of the plugin's package, from its files (none is imported)."""
    root = Path(importlib.util.find_spec("lavis_listwise").origin).parent
    names = (p.relative_to(root.parent).with_suffix("").parts for p in sorted(root.rglob("*.py")))
    return [".".join(n[:-1] if n[-1] == "__init__" else n) for n in names]


#: Everything that reads ``run``: LAVIS's runners, task setup, retrieval task and models'
#: ``compute_sim_matrix(data_loader, task_cfg)``, ``init_distributed_mode`` (LAVIS's train.py passes
#: it the run config; the keys of LAVIS's own YAMLs, ``dist_url`` / ``world_size``, are read there),
#: and every module of the plugin (its commands, process group, runner, task, the check itself), so
#: moving plugin code between files needs no change here.
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
    *(Reader(module, _RUN) for module in _plugin_modules()),
    Reader("lavis_listwise.tasks.retrieval_listwise", ("self.cfg",)),
    # the task's constructor and EvalSettings receive the run config as ``cfg``
    Reader("lavis_listwise.tasks.retrieval_listwise", ("cfg",), ("RetrievalListwiseTask.__init__",)),
    Reader("lavis_listwise.config", ("cfg",), ("EvalSettings.from_run_cfg",)),
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
        raise RuntimeError(f"cannot locate the source of {module!r}")
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
            raise RuntimeError(f"{reader.module} has no function {missing} to read keys from")
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
def model_keys_of_class(model_cls: type) -> tuple[frozenset[str], tuple[str, ...]]:
    """What ``model_cls.from_config`` reads from ``model`` (plus :data:`MODEL_READERS`), and the calls
    that receive the config but could not be followed."""
    scanner = _ModelScanner(model_cls)
    from_config = _function_of(inspect.getattr_static(model_cls, "from_config").__func__)
    params = [p.arg for p in _arguments(from_config).args]
    scanner.scan(from_config, params[1])  # (cls, cfg)
    keys = frozenset(scanner.keys) | _keys_of(MODEL_READERS)
    return keys, tuple(dict.fromkeys(scanner.unresolved))


# ----------------------------------------------------------------------------- the table
def _builder_readers(builder_cls: type, receivers: tuple[str, ...]) -> tuple[Reader, ...]:
    modules = dict.fromkeys(k.__module__ for k in builder_cls.__mro__ if k is not object)
    return tuple(Reader(m, receivers) for m in modules)


def generate() -> dict[str, Any]:
    """The table, from the installed LAVIS's and the plugin's source (JSON-ready, sorted)."""
    from lavis.common.registry import registry

    from lavis_listwise.config_check import plugin_archs  # registers the plugin's archs and builders

    models = {}
    for arch in plugin_archs():
        cls = registry.get_model_class(arch)
        keys, unresolved = model_keys_of_class(cls)
        base = next(k for k in cls.__mro__ if k.__module__.startswith("lavis."))
        models[arch] = {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "keys": sorted(keys),
            "unresolved": list(unresolved),
            "extends": f"{base.__module__}.{base.__qualname__}",
            "lavis_keys": sorted(model_keys_of_class(base)[0]),
        }
    datasets = {}
    builders = registry.mapping["builder_name_mapping"].items()
    # only LAVIS's and the plugin's: whatever else this process registered is no part of the table
    for name, cls in sorted((n, c) for n, c in builders if c.__module__.partition(".")[0] in PACKAGES):
        keys = _keys_of(_builder_readers(cls, _BUILDER_RECEIVERS)) | _keys_of(DATASET_READERS)
        datasets[name] = {
            "keys": sorted(keys),
            "build_info": sorted(_keys_of(_builder_readers(cls, _BUILD_INFO_RECEIVERS))),
        }
    run = {
        package: sorted(_keys_of(r for r in RUN_READERS if r.module.partition(".")[0] == package))
        for package in PACKAGES
    }
    return {
        "generated_by": f"{COMMAND} (do not edit: regenerate)",
        "lavis_version": importlib.metadata.version("salesforce-lavis"),
        "top_level": sorted(_keys_of(TOP_LEVEL_READERS)),
        "run": run,
        "demo": sorted(_keys_of(DEMO_READERS)),
        "model": models,
        "datasets": datasets,
    }


def render(table: Mapping[str, Any]) -> str:
    """The table as the committed file's text."""
    return json.dumps(table, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed table is stale")
    args = parser.parse_args(argv)
    text = render(generate())
    if args.check:
        stale = not TABLE.is_file() or TABLE.read_text(encoding="utf-8") != text
        print(f"{TABLE.relative_to(REPO)}: {'stale, run ' + COMMAND if stale else 'up to date'}")
        return int(stale)
    TABLE.write_text(text, encoding="utf-8")
    print(f"wrote {TABLE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
