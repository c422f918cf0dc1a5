"""Token-window perplexity: the texts joined, cut into non-overlapping windows that each start with the start
token; every text token predicted once. Checked against a hand-made cut and a manual loop on tiny decoders."""
from __future__ import annotations

import json
import math

import pytest
import torch

from _tiny_lm import tiny_lm
from synprune.data.tasks import Example
from synprune.errors import SynpruneError
from synprune.evaluation import lm as LM
from synprune.evaluation.evaluate import evaluate, n_windows, prepare


def test_windows_cover_the_text_once_without_overlap_each_after_the_start_token():
    ids = list(range(10))
    w = LM.cut_windows(ids, 99, LM.Windowing(4))
    assert w == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6, 7, 8], [99, 9]]
    assert [t for x in w for t in x[1:]] == ids  # every token once, in order
    assert LM.cut_windows(ids, 99, LM.Windowing(4, limit=2)) == w[:2]
    assert LM.cut_windows(ids, 99, LM.Windowing(6, limit=9)) == [[99, 0, 1, 2, 3, 4], [99, 5, 6, 7, 8, 9]]
    with pytest.raises(SynpruneError, match="at least 2"):
        LM.Windowing(1)
    with pytest.raises(SynpruneError, match="eval-windows"):
        LM.Windowing(8, limit=0)
    assert LM.fit_window(256, 128) == 128 and LM.fit_window(256, None) == 256 and LM.fit_window(64, 2048) == 64


def _manual(model, tok, text: str, size: int) -> tuple[float, int, int]:
    """(summed NLL, predicted tokens, windows) by a plain loop: one window at a time, no padding, no batching."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    start = tok("x")["input_ids"][0]
    nll, n, windows = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(ids), size - 1):
            x = torch.tensor([[start, *ids[i:i + size - 1]]])
            logp = model(input_ids=x).logits[0, :-1].double().log_softmax(-1)
            nll -= float(logp.gather(-1, x[0, 1:, None]).sum())
            n += x.shape[1] - 1
            windows += 1
    return nll, n, windows


TEXTS = ["The cat sat on the mat.", "A much longer sentence follows, with a comma and several more words in it.",
         "Short.", "Then the weather turned cold and everyone went home early that evening."]


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_window_perplexity_matches_a_manual_loop_and_differs_from_per_sentence(kv_heads):
    tm = tiny_lm(kv_heads=kv_heads)
    size = 9
    prepared = prepare(tm, [Example(t) for t in TEXTS], batch_size=2, max_length=64, windowing=LM.Windowing(size))
    got = evaluate(tm, prepared, ["perplexity", "window_perplexity"])
    nll, n, windows = _manual(tm.model, tm.tokenizer, "\n".join(TEXTS), size)
    assert n_windows(prepared) == windows > 3  # the last window is shorter: padded in its batch
    assert got["window_perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert abs(got["window_perplexity"] - got["perplexity"]) > 1e-3 * got["perplexity"]  # two different figures
    entry = LM.window_perplexity(tm.model, tm.tokenizer, TEXTS, window=size)
    assert entry["perplexity"] == pytest.approx(got["window_perplexity"], rel=1e-6)
    assert (entry["tokens"], entry["windows"], entry["window"]) == (n, windows, size)


def test_window_perplexity_caps_windows_and_the_window_at_the_models_limit():
    tm = tiny_lm()
    text = " ".join(TEXTS * 3)
    capped = LM.window_perplexity(tm.model, tm.tokenizer, text, window=8, max_windows=2)
    assert capped["windows"] == 2 and capped["tokens"] == 14
    tm.model.config.max_position_embeddings = 16
    assert LM.window_perplexity(tm.model, tm.tokenizer, text, window=256)["window"] == 16


def test_prepared_windows_need_windowing_and_key_the_dense_cache():
    from synprune.evaluation.evalcache import cache_key

    tm = tiny_lm()
    examples = [Example(t) for t in TEXTS]
    plain = prepare(tm, examples, max_length=64)
    with pytest.raises(SynpruneError, match="windowing"):
        evaluate(tm, plain, ["window_perplexity"])
    a, b = (prepare(tm, examples, max_length=64, windowing=LM.Windowing(s)) for s in (8, 16))
    names = ["perplexity", "window_perplexity"]
    assert cache_key(tm, {"all": a}, names) != cache_key(tm, {"all": b}, names)


def test_prune_on_a_text_file_reports_both_perplexities_and_the_windows(tmp_path):
    from synprune.run.prune import prune

    text = tmp_path / "notes.txt"
    text.write_text("\n".join(f"Line {i} says something about the weather today." for i in range(40)), encoding="utf-8")
    r = prune(tiny_lm(), None, str(text), 0.25, method="magnitude", calib_size=4, ppl_window=16, eval_windows=3,
              out=tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "result.json").read_text())
    both = saved["metric"]["all"]["pruned"]["all"]
    assert set(both) == {"perplexity", "window_perplexity"} and saved["metric"]["name"] == "perplexity"
    assert saved["split"]["evaluation_all_windows"] == 3 and saved["split"]["windowing"] == {"size": 16, "limit": 3}
    assert "16 tokens" in saved["split"]["perplexity_kinds"]["window_perplexity"]
    assert saved["config"]["ppl_window"] == 16 and r.metric["all"]["dense"]["all"]["window_perplexity"] > 1
    with pytest.raises(SynpruneError, match="language modelling"):
        prune(None, None, "stsb", 0.25, method="random", ppl_window=128)


@pytest.mark.parametrize("tied", [True, False])
def test_params_budget_counts_every_parameter_once_as_the_exported_model_has_them(tied):
    """params:F is F of the whole model (embeddings in, tied ones once): a removed selection's real parameter
    count is exactly what the cost model says it keeps."""
    import copy

    from _tiny_lm import tiny_llama
    from synprune.model.remove import remove_units
    from synprune.selection.budget import CostModel, total_parameters

    model = tiny_llama(layers=2)
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    dense = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    emb = model.model.embed_tokens.weight.numel()
    assert total_parameters(model) == dense and dense > emb * (1 if tied else 2)  # every parameter, ties once
    cost = CostModel.from_model(model)
    assert cost.total("params") == dense and cost.fixed_params >= emb * (1 if tied else 2)
    assert CostModel.from_model(model.config).total("params") == dense - cost.fixed_params  # a config: the body
    heads, neurons = [(0, 1), (1, 0), (1, 3)], [(0, 2), (0, 5), (1, 7)]
    small = copy.deepcopy(model)
    remove_units(small, heads, neurons)
    assert total_parameters(small) == pytest.approx(cost.kept_fraction(heads, "params", neurons=neurons) * dense, abs=0.5)
