"""The package's shape, read from its source: core (losses, relevance, evaluation, metrics and their
helpers) imports neither the LAVIS glue (models, tasks, runners, datasets, config) nor the entry
points (CLI, train, demo); the glue does not import the entry points; no two modules import each
other, directly or through others."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lavis_listwise"

#: Every first-level module or subpackage of ``lavis_listwise``, by layer (a new one must be placed).
LAYERS = {
    "core": {"losses", "relevance", "evaluation", "metrics", "stats", "errors", "rng", "distributed"},
    "glue": {
        "__init__",
        "models",
        "tasks",
        "runners",
        "datasets",
        "config",
        "config_check",
        "config_io",
        "registration",
        "resources",
    },
    "entry": {"__main__", "cli", "train", "demo", "check_data", "lavis_script", "relevance_report"},
}
RANK = {"core": 0, "glue": 1, "entry": 2}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(module, line)`` of every ``lavis_listwise`` module ``path`` imports, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if node.module is None:  # ``from . import a, b``: each name may be a module
                found += [
                    (f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target, node.lineno)
                    for a in node.names
                ]
            else:
                found.append((target, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "lavis_listwise"]


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _layer(module: str) -> str:
    parts = module.split(".")
    first = parts[1] if len(parts) > 1 else "__init__"
    for layer, members in LAYERS.items():
        if first in members:
            return layer
    raise AssertionError(f"{module}: place lavis_listwise.{first} in a layer of tests/test_layers.py")


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    firsts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES}
    assert firsts == set().union(*LAYERS.values())


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in SOURCES:
        module = _module_name(path)
        for target, line in _imports(path):
            if target == "lavis_listwise" and _layer(module) != "entry":
                target = "lavis_listwise.__init__"  # the root registers the plugin: glue
            if RANK[_layer(target)] > RANK[_layer(module)]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == []


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p) for p in SOURCES}
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        module = _module_name(path)
        edges = set()
        for target, _ in _imports(path):
            while target not in modules:  # ``from .x import name``: the module x
                target = target.rpartition(".")[0]
            # a package importing its own submodules, or a submodule its package, is no cycle
            nested = target.startswith(module + ".") or module.startswith(target + ".")
            if target != module and not nested:
                edges.add(target)
        graph[module] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    assert _cycle(_graph()) is None


@pytest.mark.parametrize(
    "graph, has_cycle",
    [({"a": {"b"}, "b": {"c"}, "c": set()}, False), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)],
)
def test_the_cycle_finder_finds_cycles(graph, has_cycle):
    assert (_cycle(graph) is not None) == has_cycle
