"""synprune: prune transformer attention heads without retraining, and explain what was kept.

    import synprune
    result = synprune.prune("path/or/hub-id", task="stsb", sparsity=0.5)
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["prune", "PruneConfig", "PruneResult", "load_model", "load_pruned", "methods"]

_LAZY = {
    "prune": ("synprune.run.prune", "prune"),
    "PruneConfig": ("synprune.config", "PruneConfig"),
    "PruneResult": ("synprune.run.result", "PruneResult"),
    "load_model": ("synprune.model.load", "load_model"),
    "load_pruned": ("synprune.model.pruned", "load_pruned"),
    "methods": ("synprune.methods", "available"),
}


def __getattr__(name: str) -> Any:
    """Import torch-heavy modules on first use, so `import synprune` stays fast."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'synprune' has no attribute {name!r}")
