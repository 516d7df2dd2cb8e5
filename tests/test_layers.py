"""The distribution's shape, read from its source. Three layers, arrows pointing down only:

- core: ``listwise_ranking`` (losses, relevance, metrics and their helpers), torch only, no LAVIS;
- glue: ``lavis_listwise`` (LAVIS's registered models, tasks, runners, datasets, config, evaluation);
- entry: the commands, the demo and the console module ``lavis_listwise_cli``.

No module imports a higher layer, and no two modules import each other, directly or through others.
Every Python module of the distribution is covered, the top-level console module included.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The distribution's Python sources: its two packages and its one top-level module.
SOURCES = sorted([*(ROOT / "listwise_ranking").rglob("*.py"), *(ROOT / "lavis_listwise").rglob("*.py")]) + [
    ROOT / "lavis_listwise_cli.py"
]
TOP_LEVEL = {"listwise_ranking", "lavis_listwise", "lavis_listwise_cli"}
#: Modules of the entry layer (a module or package name; everything under a package belongs to it).
ENTRY = {"lavis_listwise_cli", "lavis_listwise.__main__", "lavis_listwise.commands", "lavis_listwise.demo"}
RANK = {"core": 0, "glue": 1, "entry": 2}
#: What the core may not import at all: LAVIS, and the plugin built on it.
NOT_IN_CORE = {"lavis", "lavis_listwise", "lavis_listwise_cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(module, line)`` of every import in ``path``, at any depth, relative ones made absolute."""
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
    return found


def _own_imports(path: Path) -> list[tuple[str, int]]:
    return [(name, line) for name, line in _imports(path) if name.split(".")[0] in TOP_LEVEL]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _layer(module: str) -> str:
    if module.split(".")[0] == "listwise_ranking":
        return "core"
    if any(module == entry or module.startswith(entry + ".") for entry in ENTRY):
        return "entry"
    return "glue"


def test_every_source_is_a_module_of_the_distribution():
    names = {_module_name(p) for p in SOURCES}
    assert {"listwise_ranking", "lavis_listwise", "lavis_listwise_cli"} <= names
    assert all(entry in names for entry in ENTRY), sorted(ENTRY - names)


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in SOURCES:
        module = _module_name(path)
        for target, line in _own_imports(path):
            if RANK[_layer(target)] > RANK[_layer(module)]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert upward == []


def test_the_core_imports_no_lavis():
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in SOURCES
        if _layer(_module_name(path)) == "core"
        for target, line in _imports(path)
        if target.split(".")[0] in NOT_IN_CORE
    ]
    assert found == []


def test_importing_the_core_leaves_lavis_out():
    """Run, not read: every core module imported in a fresh interpreter pulls in no LAVIS, no plugin."""
    core = [_module_name(p) for p in SOURCES if _layer(_module_name(p)) == "core"]
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        "unwanted = {'lavis', 'lavis_listwise', 'lavis_listwise_cli', 'transformers'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in unwanted))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


#: The core's own test files: they must pass with LAVIS, the plugin and transformers not importable
#: (the few tests in them that compare with the plugin or run the sentence encoder skip themselves).
CORE_TESTS = [
    "test_smooth_ndcg.py",
    "test_kernels.py",
    "test_losses_registry.py",
    "test_loss_contracts.py",
    "test_relevance.py",
    "test_metrics.py",
    "test_stats.py",
]
_WITHOUT_LAVIS = """
import sys
for name in ("lavis", "lavis_listwise", "lavis_listwise_cli", "transformers"):
    sys.modules[name] = None  # ``import name`` raises ImportError, as if it were not installed
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def test_the_cores_tests_pass_with_torch_alone():
    """The core is testable without LAVIS: its test files, in a fresh interpreter where LAVIS, the
    plugin and transformers cannot be imported, pass; only the tests that compare with them skip."""
    here = Path(__file__).parent
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LAVIS, "-q", "-rs", "-p", "no:cacheprovider", *CORE_TESTS],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    skipped = int(summary.split(" skipped")[0].split()[-1]) if " skipped" in summary else 0
    assert passed >= 50 and skipped <= 10, summary


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p) for p in SOURCES}
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        module = _module_name(path)
        edges = set()
        for target, _ in _own_imports(path):
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
