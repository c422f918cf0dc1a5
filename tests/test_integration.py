"""The real bundled MiniLM and spaCy model on a handful of sentences."""
import numpy as np
import pytest
import torch
from scipy import stats

from synprune.syntax.parse import parse_texts
from synprune.run.prune import prune

from conftest import STSB_ROWS

pytestmark = pytest.mark.integration


def test_spacy_parse_gives_expected_arcs():
    (p,), info = parse_texts(["A man is playing a guitar."])
    words = ["A man is playing a guitar.".__getitem__(slice(*w)) for w in p.words]
    assert words == ["A", "man", "is", "playing", "a", "guitar", "."]
    assert (p.heads[1], p.deps[1]) == (3, "nsubj")
    assert p.deps[3] == "ROOT" and p.heads[3] == 3
    assert "en_core_web_sm" in info["parser"]


def test_prune_bundled_minilm_on_stsb_rows(glue_dir):
    res = prune(None, task="stsb", sparsity=0.5, glue_dir=glue_dir, calib_size=8)
    assert res.n_heads == 72 and len(res.pruned_heads) == 36
    assert np.asarray(res.head_scores).shape == (6, 12)
    assert res.details["dependency_ranking"][0]["count"] >= res.details["dependency_ranking"][-1]["count"]
    assert res.model["weights_sha256"] and res.model["layers"] == 6


def test_dense_metric_matches_plain_embedding_evaluation(glue_dir):
    """Our evaluation against an independent mean-pooling + cosine computation with plain transformers."""
    from transformers import AutoModel, AutoTokenizer

    from synprune.model.load import bundled_model_path

    res = prune(None, task="stsb", sparsity=0.25, glue_dir=glue_dir, calib_size=4)
    tok = AutoTokenizer.from_pretrained(bundled_model_path())
    model = AutoModel.from_pretrained(bundled_model_path()).eval()

    def embed(texts):
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        return (h * m).sum(1) / m.sum(1)

    a, b = embed([r[0] for r in STSB_ROWS]), embed([r[1] for r in STSB_ROWS])
    cos = torch.nn.functional.cosine_similarity(a, b).numpy()
    expected = 100 * stats.spearmanr(cos, [r[2] for r in STSB_ROWS])[0]
    assert res.metric["dense"] == pytest.approx(expected, abs=1e-6)
