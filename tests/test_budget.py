"""Budget specs -> number of ranked heads, checked against costs computed by hand.

Tiny config: d=8, 2 heads (dh=4), 2 layers, di=16.
params: per head 4*8*4 + 3*4 = 140; per layer attention 2*140 + 8 (out bias) = 288, FFN 2*8*16 + 16 + 8 = 280;
        total 2 * 568 = 1136.
flops at n=10: per head 4*10*8*4 + 2*10*10*4 = 2080; FFN per layer 2*10*8*16 = 2560; total 2 * 6720 = 13440.
"""
from __future__ import annotations

import pytest
import transformers as tf

from synprune.selection.budget import CostModel, heads_to_prune, parse_budget
from synprune.errors import SynpruneError

CFG = tf.BertConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=2, intermediate_size=16, vocab_size=10)
RANKED = [(0, 0), (1, 1), (0, 1), (1, 0)]
# remaining params after pruning the first k ranked heads: the 3rd head empties layer 0 (+8 bias)
# k: 0 -> 1136, 1 -> 996, 2 -> 856, 3 -> 708, 4 -> 560


def test_totals_by_hand():
    c = CostModel.from_model(CFG)
    assert (c.hidden, c.head_dim, c.n_heads, c.n_layers, c.intermediate) == (8, 4, 2, 2, 16)
    assert c.head_cost("params") == 140
    assert c.total("params") == 1136
    assert c.head_cost("flops", 10) == 2080
    assert c.total("flops", 10) == 13440
    assert c.saved(RANKED[:3], "params") == 1136 - 708


@pytest.mark.parametrize("spec,expected", [
    ("params:1.0", 0), ("params:0.9", 1), ("params:0.88", 1), ("params:0.87", 2),
    ("params:0.7", 3), ("params:0.5", 4),
])
def test_params_budget(spec, expected):
    assert heads_to_prune(CFG, RANKED, spec) == expected


# remaining flops: k: 0 -> 13440, 1 -> 11360, 2 -> 9280, 3 -> 7200, 4 -> 5120
@pytest.mark.parametrize("spec,expected", [("flops:0.85", 1), ("flops:0.7", 2), ("flops:0.6", 3), ("flops:0.381", 4)])
def test_flops_budget(spec, expected):
    assert heads_to_prune(CFG, RANKED, spec, mean_seq_len=10) == expected


def test_flops_depend_on_sequence_length():
    # at n=1000 a head costs 4*1000*8*4 + 2*1e6*4 = 8128000 and the FFN 256000 per layer, so heads dominate:
    # remaining after k=1 is (2*(2*8128000+256000) - 8128000) / 33024000 = 0.7539
    assert heads_to_prune(CFG, RANKED, "flops:0.76", mean_seq_len=1000) == 1
    assert heads_to_prune(CFG, RANKED, "flops:0.76", mean_seq_len=10) == 2  # 9280/13440 = 0.69


def test_pipeline_name_is_the_same_function():
    from synprune.selection.budget import heads_for_budget

    assert heads_for_budget(CFG, RANKED, "flops:0.6", 10) == 3


def test_heads_budget_is_sparsity_one_minus_f():
    assert heads_to_prune(CFG, RANKED, "heads:0.5") == 2
    assert heads_to_prune(CFG, RANKED, "heads:0.75") == 1
    assert heads_to_prune(CFG, RANKED, "heads:0.1") == 4  # round(0.9 * 4)
    assert heads_to_prune(CFG, RANKED, "heads:1") == 0


def test_layer_fraction_counts_whole_layers():
    # target 0.76 * 1136 = 863.4. With layer_fraction 0.5 the first head already takes layer 0 away:
    # 1136 - 288 = 848 remain; without it, k=1 leaves 996 and k=2 leaves 856
    assert heads_to_prune(CFG, RANKED, "params:0.76", layer_fraction=0.5) == 1
    assert heads_to_prune(CFG, RANKED, "params:0.76") == 2


def test_minilm_sized_head_cost():
    cfg = tf.BertConfig(hidden_size=384, num_attention_heads=12, num_hidden_layers=6, intermediate_size=1536)
    c = CostModel.from_model(cfg)
    assert c.head_cost("params") == 4 * 384 * 32 + 3 * 32 == 49248
    assert c.head_cost("flops", 128) == 4 * 128 * 384 * 32 + 2 * 128 * 128 * 32 == 7340032


def test_distilbert_config_names():
    cfg = tf.DistilBertConfig(dim=8, n_heads=2, n_layers=2, hidden_dim=16, vocab_size=10)
    assert CostModel.from_model(cfg).total("params") == 1136


@pytest.mark.parametrize("spec", ["", "params", "params:", "foo:0.5", "params:abc", "params:1.5", "flops:-0.1",
                                  "params:nan", "0.5"])
def test_bad_specs(spec):
    with pytest.raises(SynpruneError) as e:
        parse_budget(spec)
    assert "\n" not in str(e.value)


def test_unreachable_budget_and_missing_length():
    with pytest.raises(SynpruneError, match="cannot be met"):
        heads_to_prune(CFG, RANKED, "params:0.49")  # 560/1136 = 0.493 is the floor
    with pytest.raises(SynpruneError, match="cannot be met"):
        heads_to_prune(CFG, RANKED[:2], "params:0.7")  # only two heads ranked: 856/1136
    with pytest.raises(SynpruneError, match="sequence length"):
        heads_to_prune(CFG, RANKED, "flops:0.5")
    with pytest.raises(SynpruneError, match="outside"):
        heads_to_prune(CFG, [(2, 0)], "params:0.9")
    with pytest.raises(SynpruneError, match="only 2 are ranked"):
        heads_to_prune(CFG, RANKED[:2], "heads:0.1")


def test_mean_sequence_length(tmp_path):
    from synprune.selection.budget import mean_sequence_length

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue", "green"]) + "\n")
    tok = tf.BertTokenizer(vocab=str(vocab))
    # [CLS] red blue [SEP] = 4 and [CLS] green [SEP] = 3; as a pair: [CLS] red blue [SEP] green [SEP] = 6 and 5
    assert mean_sequence_length(tok, ["red blue", "green"]) == 3.5
    assert mean_sequence_length(tok, ["red blue", "green"], ["green", "red"]) == 5.5
    assert mean_sequence_length(tok, ["red blue green red blue"], max_length=4) == 4
    with pytest.raises(SynpruneError):
        mean_sequence_length(tok, [])


def test_heads_budget_rounds_halves_up_like_sparsity():
    from synprune.selection.select import n_to_prune

    one_layer = tf.BertConfig(hidden_size=8, num_attention_heads=4, num_hidden_layers=1, intermediate_size=16, vocab_size=10)
    ranked = [(0, h) for h in range(4)]
    # 0.625 * 4 = 2.5 heads: --sparsity 0.625 prunes 3; Python's round() would give 2
    assert n_to_prune(0.625, 4) == 3
    assert heads_to_prune(one_layer, ranked, "heads:0.375") == 3


def test_budget_report_says_what_a_selection_keeps():
    from synprune.selection.budget import budget_report

    report = budget_report(CFG, [(0, 0), (0, 1)], "params:0.76", mean_seq_len=10)
    assert report["params_kept"] == pytest.approx(848 / 1136) and report["met"]  # layer 0 gone with its bias
    assert report["heads_kept"] == 0.5 and report["flops_kept"] == pytest.approx(1 - 2 * 2080 / 13440)
    assert not budget_report(CFG, [(0, 0)], "params:0.76")["met"]  # 996/1136 = 0.88 > 0.76


def _pipeline_run(glue_dir, **options):
    from conftest import tiny_model
    from synprune.run.prune import prune

    return prune(tiny_model("bert"), task="stsb", glue_dir=glue_dir, calib_size=4, method="magnitude", **options)


def test_budget_through_prune_records_what_was_pruned(glue_dir):
    # params:F counts the whole model (the tiny BERT is mostly embeddings: all its heads are 1.3% of it)
    res = _pipeline_run(glue_dir, budget="params:0.995", layer_fraction=0.5)
    b = res.details["budget"]
    assert b["met"] and b["params_kept"] <= 0.995 and b["heads_pruned"] == len(res.pruned_heads) > 0
    assert res.sparsity == pytest.approx(len(res.pruned_heads) / 12)  # not the default 0.5
    assert res.config["sparsity"] == res.sparsity and res.config["budget"] == "params:0.995"
    # with layer_fraction 0.5, two pruned heads of a 4-head layer take the whole layer
    per_layer = res.pruned_per_layer
    assert all(n in (0, 1, 4) for n in per_layer), per_layer


def test_budget_sizes_the_cf_pool_from_its_own_head_count(glue_dir, monkeypatch):
    import synprune.cf.filter as cf
    from synprune.selection.select import Selection

    seen = {}

    def fake_cf(ctx, order, n, cfg):
        seen["sparsity"], seen["n"] = cfg.sparsity, n
        return Selection(sorted(order[:n]), []), []

    monkeypatch.setattr(cf, "candidate_filter", fake_cf)
    res = _pipeline_run(glue_dir, budget="heads:0.75", cf=True)
    assert seen == {"sparsity": 0.25, "n": 3} and res.sparsity == 0.25
