"""Baselines on causal LMs: FLAP (fluctuation + bias compensation), attention-block dropping, the other
methods on the LM loss, and Candidate Filtering with perplexity (lower is better)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _tiny_lm import tiny_lm
from synprune.calibrate.context import Calibration
from synprune.cf.filter import candidate_filter
from synprune.config import PruneConfig
from synprune.methods import get_method
from synprune.data.metrics import goodness
from synprune.data.tasks import Example

TEXTS = [f"The {w} number {i} walked slowly across the wide yard." for i, w in enumerate(["dog", "cat", "man", "kid"] * 2)]


def _ctx(tm, n: int = 8) -> Calibration:
    return Calibration(tm, [Example(t) for t in TEXTS[:n]], PruneConfig(batch_size=4, sparsity=0.25), ("perplexity",))


def test_flap_with_bias_repair_runs_end_to_end_on_a_decoder(tmp_path):
    from synprune.run.prune import prune

    f = tmp_path / "t.txt"
    f.write_text("\n".join(TEXTS * 3), encoding="utf-8")
    tm = tiny_lm(layers=2)
    plain = prune(tm, None, str(f), 0.25, method="flap", calib_size=8, batch_size=4)
    repaired = prune(tm, None, str(f), 0.25, method="flap", calib_size=8, batch_size=4, repair="bias")
    assert plain.pruned_heads == repaired.pruned_heads and plain.metric["name"] == "perplexity"
    assert plain.metric["pruned"] != repaired.metric["pruned"]  # the compensation changes the pruned model


def test_flap_ranks_a_head_with_no_output_weights_first_in_its_layer():
    tm = tiny_lm(layers=2)
    o = tm.model.model.layers[1].self_attn.o_proj
    with torch.no_grad():
        o.weight[:, 2 * 8:3 * 8] = 0  # head 2 of layer 1 writes nothing: Var(x) * ||W||^2 = 0
    scores = get_method("flap")(_ctx(tm), PruneConfig())
    assert scores.details["raw"][1][2] == 0 and min(scores.details["raw"][1]) == 0
    layer1 = [h for l, h in scores.order if l == 1]
    assert layer1[0] == 2
    assert np.allclose(scores.scores.mean(1), 0) and np.allclose(scores.scores.std(1, ddof=1), 1)  # standardised


def test_attn_drop_puts_a_block_that_adds_nothing_first():
    tm = tiny_lm(layers=3)
    with torch.no_grad():
        tm.model.model.layers[1].self_attn.o_proj.weight.zero_()  # block 1 leaves its input unchanged
    scores = get_method("attn-drop")(_ctx(tm), PruneConfig())
    importance = scores.details["block_importance"]
    assert importance[1] == pytest.approx(0, abs=1e-9) and min(importance[0], importance[2]) > 1e-4
    assert [l for l, _ in scores.order[:4]] == [1, 1, 1, 1]


@pytest.mark.parametrize("method", ["random", "magnitude", "entropy", "confidence", "fisher", "michel", "output-fisher",
                                    "flap", "attn-drop"])
def test_every_baseline_orders_every_query_head_of_a_decoder(method):
    tm = tiny_lm(layers=2)
    scores = get_method(method)(_ctx(tm, 4), PruneConfig(batch_size=4))
    assert scores.scores.shape == (2, 4) and sorted(scores.order) == [(l, h) for l in range(2) for h in range(4)]
    if method in ("fisher", "michel"):
        assert scores.details["loss"] == "task-loss"  # the LM's own next-token loss, no labels needed
        assert np.abs(scores.scores).sum() > 0
    if method == "output-fisher":
        assert scores.details["loss"] == "output-fisher"


def test_cf_on_perplexity_keeps_removals_under_the_ceiling_and_fast_equals_slow():
    tm = tiny_lm(layers=3)
    ctx = _ctx(tm)
    cfg = PruneConfig(sparsity=0.5, tolerance=0.999, pool_ratio=1.0)
    order = get_method("magnitude")(ctx, cfg).order
    fast = candidate_filter(ctx, order, 6, cfg, fast=True)
    slow = candidate_filter(ctx, order, 6, cfg, fast=False)
    assert fast[0] == slow[0]
    walk = [e for e in fast[1] if e["stage"] == "walk" and e["metric"] is not None]
    dense = fast[1][0]["dense"]
    ceiling = walk[0]["floor"]
    assert ceiling == pytest.approx(dense * 1.001)  # perplexity may rise by 0.1%
    assert all(e["removed"] == (e["metric"] <= ceiling) for e in walk)
    assert all(goodness("perplexity", e["metric"]) >= goodness("perplexity", ceiling) for e in walk if e["removed"])
