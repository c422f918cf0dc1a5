"""Layers that only point down: the import graph of `src/synprune`, read from the source with `ast` (imports at
module level, under `if TYPE_CHECKING:` and inside functions; relative and absolute; `from synprune import x`),
has no cycle, and no stage imports a later stage. A package's `__init__` importing its own modules (the method,
family and repair registries loading their plugins) is no cycle. `importlib.import_module` with a computed name
(the registries' plugin loading, `synprune.__getattr__`'s lazy public names) is not read."""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# The pipeline's stages, earliest first; a module may import its own stage and earlier ones. `synprune` itself
# (`__version__`, a lazy facade) counts as base; `config` composes every stage's options, so it sits above them.
STAGES = (
    ("synprune", "errors", "io", "progress", "devices"),  # devices: where tensors are (accelerate device maps)
    ("arch",),
    ("syntax",),  # parsing, trees, CoNLL-U treebanks: no task knowledge (the ewt task reads a treebank)
    ("data",),
    ("model",),
    ("evaluation",),  # scoring a (masked) model: calibration, gradient methods and CF score too
    ("calibrate",),
    ("methods",),
    ("selection",),
    ("cf",),
    ("repair",),
    ("export",),
    ("config",),
    ("explain", "report", "train"),
    ("run",),
    ("commands", "cli", "__main__"),
)
RANK = {name: i for i, names in enumerate(STAGES) for name in names}
# Cycles still waiting for a fix, as sets of modules; each entry says why. Keep this empty.
ALLOWED_CYCLES: list[set[str]] = []  # none: a cycle is fixed by moving the shared code down, not listed here


@lru_cache(maxsize=None)
def modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package `__init__`), for every module under `src`."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def _targets(node: ast.AST, name: str, package: bool, known: dict) -> list[str]:
    """The synprune modules an import statement reads (`from a import b`: a.b where b is a module, else a)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "synprune"]
    if node.level:
        base = name.split(".") if package else name.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "synprune":
        return []
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]


@lru_cache(maxsize=None)
def import_graph(src: Path) -> dict[str, list[tuple[int, str]]]:
    """Module -> [(line, imported synprune module)], every import statement anywhere in the file."""
    known = modules(src)
    graph = {}
    for name, (path, package) in known.items():
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges += [(node.lineno, t) for t in _targets(node, name, package, known) if t != name]
        graph[name] = sorted(set(edges))
    return graph


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def where(src: Path, module: str, line: int) -> str:
    path, _ = modules(src)[module]
    return f"{path.relative_to(src)}:{line}"


def upward_imports(src: Path) -> list[str]:
    """'file:line -> target (stage a imports later stage b)' for each import of a later stage."""
    graph, bad = import_graph(src), []
    for module, edges in graph.items():
        for line, target in edges:
            a, b = stage(module), stage(target)
            if a not in RANK or b not in RANK:
                bad.append(f"{where(src, module, line)} -> {target}: give {(b if b not in RANK else a)!r} a place in STAGES")
            elif RANK[b] > RANK[a]:
                bad.append(f"{where(src, module, line)} -> {target} ({a} imports {b}, a later stage)")
    return bad


def _is_plugin_load(module: str, target: str, src: Path) -> bool:
    """A package's `__init__` importing a module of its own package (a registry loading its plugins)."""
    return modules(src)[module][1] and target.startswith(module + ".")


def cycles(src: Path) -> list[str]:
    """Each import cycle (a strongly connected set of modules), as a path of 'file:line -> target' steps."""
    graph = {m: [(line, t) for line, t in edges if t in graph_keys and not _is_plugin_load(m, t, src)]
             for graph_keys in [set(modules(src))] for m, edges in import_graph(src).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for _, w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for component in found:
        path = _cycle_path(graph, set(component), component[0], src)
        rest = sorted(set(component) - set(_modules_of(path)))
        out.append(path + (f" (and through {', '.join(rest)})" if rest else ""))
    return out


def _cycle_path(graph, component: set[str], start: str, src: Path) -> str:
    """One cycle through `start` inside its component, by breadth-first search back to it."""
    paths = {start: []}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for line, w in graph[v]:
            if w not in component:
                continue
            step = paths[v] + [f"{where(src, v, line)} -> {w}"]
            if w == start:
                return "; ".join(step)
            if w not in paths:
                paths[w] = step
                queue.append(w)
    return start


def test_no_import_cycles():
    found = [c for c in cycles(SRC) if not any(set(_modules_of(c)) == allowed for allowed in ALLOWED_CYCLES)]
    assert not found, "import cycles (move the shared code down a stage, or pass it in):\n" + "\n".join(found)


def _modules_of(cycle: str) -> list[str]:
    return [step.split(" -> ")[1].split(" ")[0] for step in cycle.split("; ")]


def test_no_stage_imports_a_later_stage():
    bad = upward_imports(SRC)
    assert not bad, ("imports of a later stage (stages: " + " < ".join("/".join(s) for s in STAGES) + "):\n"
                     + "\n".join(bad))


def test_every_import_is_read():
    """The reader sees all forms; a module that imports synprune code shows up with its edges."""
    graph = import_graph(SRC)
    assert ("synprune.errors" in {t for _, t in graph["synprune.config"]})
    assert len(graph) > 50 and sum(map(len, graph.values())) > 300


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"synprune/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_an_upward_import_inside_a_function(tmp_path):
    src = _tree(tmp_path, {"synprune/model/__init__.py": "", "synprune/export/__init__.py": "",
                           "synprune/export/remove.py": "",
                           "synprune/model/load.py": "def f():\n    from synprune.export import remove\n"})
    assert upward_imports(src) == ["synprune/model/load.py:2 -> synprune.export.remove (model imports export, a later stage)"]


def test_checker_finds_a_cycle_of_relative_imports(tmp_path):
    src = _tree(tmp_path, {"synprune/data/__init__.py": "", "synprune/data/a.py": "from .b import x\n",
                           "synprune/data/b.py": "import os\n\n\ndef g():\n    from . import a\n",
                           "synprune/methods/__init__.py": "def load():\n    from . import m\n",
                           "synprune/methods/m.py": "from . import register\n"})
    assert upward_imports(src) == []
    assert cycles(src) == ["synprune/data/a.py:1 -> synprune.data.b; synprune/data/b.py:5 -> synprune.data.a"]


@pytest.mark.parametrize("text", ["from synprune import run\n", "import synprune.run.prune\n", "from ..run import prune\n"])
def test_checker_reads_every_import_form(tmp_path, text):
    src = _tree(tmp_path, {"synprune/run/__init__.py": "", "synprune/run/prune.py": "",
                           "synprune/data/__init__.py": "", "synprune/data/tasks.py": text})
    assert len(upward_imports(src)) == 1 and "synprune/data/tasks.py:1 -> synprune.run" in upward_imports(src)[0]
