"""A sentence-transformers module that loads a synprune export, so that `SentenceTransformer(DIR,
trust_remote_code=True)` reads a pruned sentence encoder with its own pooling and normalisation.

sentence-transformers builds its first module with `AutoModel.from_pretrained`, which cannot shape layers with
fewer heads than the config names; this subclass loads the weights with `synprune.load_pruned` instead.
Importing it needs sentence-transformers (`pip install sentence-transformers`).
"""
from __future__ import annotations

from typing import Any

from sentence_transformers.base.modules.transformer import Transformer


class PrunedTransformer(Transformer):
    """sentence-transformers' Transformer module over a folder written by `synprune.export_pruned`."""

    def _load_model(self, model_name_or_path: str, transformer_task: Any, config: Any, backend: str,
                    is_peft_model: bool, **model_kwargs: Any) -> Any:
        from synprune.model.pruned import load_pruned

        model, _ = load_pruned(model_name_or_path)
        return model
