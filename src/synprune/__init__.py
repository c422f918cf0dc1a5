"""synprune: prune transformer models without retraining. It scores and removes attention heads, key/value groups
and feed-forward neurons of BERT-family encoders and decoder LLMs (Llama, Mistral, Qwen, Gemma, Phi-3, GPT-2; GGUF
files too), repairs what is left, evaluates, exports a physically smaller model, compares methods and explains what
was kept.

    import synprune
    result = synprune.prune("path/or/hub-id", task="stsb", sparsity=0.5)
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
SUMMARY = ("Prune transformer models without retraining: score and remove attention heads, key/value groups and "
           "feed-forward neurons of encoders and decoder LLMs, repair what is left, export a smaller model, "
           "compare methods and explain what was kept.")  # `synprune --help`
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
