"""Carry a sentence-transformers model's own files (modules.json, pooling, normalisation, its configs) into a
pruned export. A standard export (every layer the same size) keeps sentence-transformers' own Transformer module:
`SentenceTransformer(DIR)` loads it with no remote code. An adaptive export gets its first module pointed at
`synprune.export.st_module.PrunedTransformer`, so it loads with `SentenceTransformer(DIR, trust_remote_code=True)`
(with synprune installed); both embed exactly as the pruned model does."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

MODULES_FILE = "modules.json"
PRUNED_MODULE = "synprune.export.st_module.PrunedTransformer"
_TRANSFORMER_TYPES = ("sentence_transformers.models.Transformer",
                      "sentence_transformers.base.modules.transformer.Transformer",
                      "sentence_transformers.sentence_transformer.modules.Transformer")
_ROOT_FILES = ("sentence_bert_config.json", "config_sentence_transformers.json")


def carry_sentence_transformers(source: str | Path | None, folder: Path, standard: bool = False) -> bool:
    """Copy `source`'s sentence-transformers files into `folder`; False (nothing copied) for other models."""
    if not source or not (Path(source) / MODULES_FILE).is_file():
        return False
    src = Path(source)
    modules = json.loads((src / MODULES_FILE).read_text(encoding="utf-8"))
    for m in modules:
        if m.get("path", "") in ("", ".") and m.get("type") in _TRANSFORMER_TYPES and not standard:
            m["type"] = PRUNED_MODULE
        elif m.get("path"):
            sub = src / m["path"]
            if sub.is_dir():
                shutil.copytree(sub, folder / m["path"], dirs_exist_ok=True)
    for name in _ROOT_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, folder / name)
    (folder / MODULES_FILE).write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    return True
