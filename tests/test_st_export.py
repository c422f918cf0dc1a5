"""An exported sentence encoder is the encoder its task used, and sentence-transformers itself can load it."""
import json

import pytest
import torch

from conftest import tiny_config
from synprune.cli import main
from synprune.model.pruned import load_pruned
from synprune.model.masking import HeadMask
from synprune.model.load import bundled_model_path

PRUNED = [[0, 1], [1, 0], [1, 1], [1, 2], [1, 3]]


def _sentence_encoder(folder):
    """A tiny MPNet saved the way sentence-transformers checkpoints often are: config names MPNetForMaskedLM."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(tiny_config("mpnet")).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled_model_path()).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                  "pooling_mode_mean_tokens": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return folder


@pytest.fixture
def exported(tmp_path):
    src = _sentence_encoder(tmp_path / "src")
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"model": {"path": str(src), "kind": "embedding"}, "pruned_heads": PRUNED,
                                  "removed_layers": [1]}))
    with pytest.raises(SystemExit) as exc:
        main(["export", str(result), "--out", str(tmp_path / "small")])
    assert exc.value.code == 0
    return src, tmp_path / "small"


def _dense_masked(src, texts):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(src, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(src)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad(), HeadMask.pruning(model, [tuple(h) for h in PRUNED]):
        hidden = model(**enc).last_hidden_state
    return hidden, enc


def test_load_pruned_gives_the_encoder_not_a_fresh_masked_lm_head(exported):
    src, small = exported
    model, tok = load_pruned(small)
    assert type(model).__name__ == "MPNetModel"
    hidden, enc = _dense_masked(src, ["a short text", "another one here"])
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    assert torch.allclose(out, hidden, atol=1e-4)


def test_sentence_transformers_loads_the_export_with_its_pooling(exported):
    st = pytest.importorskip("sentence_transformers")
    src, small = exported
    texts = ["a short text", "another one here"]
    emb = st.SentenceTransformer(str(small), device="cpu", trust_remote_code=True).encode(texts, convert_to_tensor=True)
    hidden, enc = _dense_masked(src, texts)
    m = enc["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    assert torch.allclose(emb.cpu(), expected, atol=1e-4)
