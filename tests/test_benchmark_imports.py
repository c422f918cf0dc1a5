"""The benchmark scripts import synprune inside functions (so `--help` stays fast), which no other test runs:
a name moved by a refactor would only fail hours into a benchmark run. Every `from synprune... import name`
in benchmarks/*.py must resolve."""
import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "synprune" and not node.level:
            for alias in node.names:
                yield node.module, alias.name, node.lineno


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_benchmark_synprune_imports_resolve(path):
    missing = []
    for module, name, line in _imports(path):
        mod = importlib.import_module(module)
        if name != "*" and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{path.name}:{line}: from {module} import {name}")
    assert not missing, "\n".join(missing)
