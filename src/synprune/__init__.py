"""synprune: prune transformer attention heads without retraining, and explain what was kept."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so `import synprune` stays cheap (no torch/transformers) until the loader is used.
    if name == "load_pruned":
        from .export import load_pruned

        return load_pruned
    raise AttributeError(f"module 'synprune' has no attribute {name!r}")
