"""docs/load-anywhere.md's Python recipes run as written, on tiny exports: those that do not name synprune in a
Python that cannot import it, the synprune one here."""
import re
from pathlib import Path

import pytest

from _isolated import run_without_synprune

DOC = Path(__file__).resolve().parents[1] / "docs" / "load-anywhere.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """pruned-llm (uniform tiny Llama with the SmolLM2 tokenizer), pruned-llm-adaptive, pruned-minilm (the
    bundled MiniLM, the same neurons pruned in every layer, with model.onnx)."""
    from transformers import AutoModel, AutoTokenizer

    from _tiny_lm import tiny_lm
    from synprune.export.checkpoint import export_pruned
    from synprune.model.load import bundled_model_path

    root = tmp_path_factory.mktemp("docs")
    tm = tiny_lm(layers=3)
    neurons = [(l, n) for l in range(3) for n in range(12)]
    export_pruned(tm.model, tm.tokenizer, [(l, h) for l in range(3) for h in (1, 3)], root / "pruned-llm", neurons=neurons)
    export_pruned(tm.model, tm.tokenizer, [(0, 1), (1, 0), (1, 1), (2, 2)], root / "pruned-llm-adaptive",
                  neurons=neurons[:20])
    src = bundled_model_path()
    minilm = AutoModel.from_pretrained(src).eval()
    export_pruned(minilm, AutoTokenizer.from_pretrained(src), [], root / "pruned-minilm", onnx=True,
                  neurons=[(l, n) for l in range(6) for n in range(0, 1536, 2)])
    return root


def test_the_doc_has_the_recipes():
    text = "\n".join(_blocks())
    for needle in ('from_pretrained("pruned-llm")', "trust_remote_code=True", "SentenceTransformer(", "InferenceSession(",
                   "load_pruned("):
        assert needle in text


@pytest.mark.integration
def test_every_python_recipe_runs(folders, monkeypatch):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("onnxruntime")
    for code in _blocks():
        if "synprune" in code:
            monkeypatch.chdir(folders)
            exec(compile(code, str(DOC), "exec"), {})
            continue
        r = run_without_synprune(code, folders)
        assert r.returncode == 0, f"{code}\n---\n{r.stderr[-2000:]}"
        assert r.stdout.strip(), code  # every recipe prints what it got
