"""Controlled attention: chosen heads attend to each word's syntactic head with probability p, nothing else changes."""
import importlib.util
from pathlib import Path

import pytest
import torch

from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.calibrate.controlled import controlled_attention, syntactic_targets
from synprune.errors import SynpruneError
from synprune.data.tasks import load_task, make_split

from conftest import tiny_model

HEADS = [(1, 2), (2, 0)]


def _ctx(glue_dir, tm, n=8):
    return Calibration(tm, make_split(load_task("stsb", glue_dir), n, 0).calibration, PruneConfig(calib_size=n))


class Recorder:
    """Word attention of every arc (dep -> head), and the token attention of each batch."""

    def __init__(self):
        self.arc_attn, self.token, self.mask = [], [], []

    def update(self, batch):
        self.arc_attn.append(batch.arc_attention("dep2head"))
        self.token.append(batch.token_attn)
        self.mask.append(batch.token_mask)


def _scan(ctx, keep_punct=True):
    return ctx.run_scan([Recorder()], keep_punct=keep_punct)[0]


def test_p_one_makes_every_arc_attention_one_and_leaves_other_heads_alone(glue_dir):
    tm = tiny_model("bert")
    ctx = _ctx(glue_dir, tm)
    plain = _scan(ctx)
    targets = syntactic_targets(tm.tokenizer, ctx.items)
    with controlled_attention(tm.model, targets, HEADS, 1.0) as state:
        ctl = _scan(ctx)
    assert state.calls > 0
    a = torch.cat(ctl.arc_attn)  # (arcs, L, H)
    for l, h in HEADS:
        torch.testing.assert_close(a[:, l, h], torch.ones(len(a)), atol=1e-5, rtol=0)
    before = torch.cat(plain.arc_attn)
    assert (before[:, 1, 2] < 0.9).all()  # the random model does not do this by itself
    # layer 0 is before every chosen head: identical; the other heads of layer 1 too (same inputs, own maps)
    for t0, t1 in zip(plain.token, ctl.token):
        torch.testing.assert_close(t1[:, 0], t0[:, 0])
        torch.testing.assert_close(t1[:, 1, [0, 1, 3]], t0[:, 1, [0, 1, 3]])
        assert not torch.allclose(t1[:, 2, [1, 2, 3]], t0[:, 2, [1, 2, 3]])  # layer 2 reads the changed layer-1 output


def test_p_zero_with_original_rows_changes_nothing(glue_dir):
    tm = tiny_model("bert")
    ctx = _ctx(glue_dir, tm)
    plain = _scan(ctx)
    with controlled_attention(tm.model, syntactic_targets(tm.tokenizer, ctx.items), HEADS, 0.0):
        ctl = _scan(ctx)
    for t0, t1 in zip(plain.token, ctl.token):
        torch.testing.assert_close(t1, t0)


def test_head_output_is_the_synthetic_map_times_its_values(glue_dir):
    """The head's contribution to the output projection's input is new_map @ V, so the whole model sees it."""
    tm = tiny_model("bert")
    ctx = _ctx(glue_dir, tm, n=2)
    layer = tm.model.encoder.layer[1]
    seen = {}
    h1 = layer.attention.self.value.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o))
    h2 = layer.attention.output.dense.register_forward_pre_hook(lambda m, i: seen.__setitem__("ctx", i[0]))
    item = ctx.items[0]
    enc = tm.tokenizer([item.text_a], return_tensors="pt")
    try:
        with controlled_attention(tm.model, syntactic_targets(tm.tokenizer, [item]), [(1, 2)], 1.0):
            out = tm.model(**enc, output_attentions=True)
    finally:
        h1.remove()
        h2.remove()
    d = 8  # hidden 32 / 4 heads
    v = seen["v"][0, :, 2 * d:3 * d]
    attn = out.attentions[1][0, 2]
    torch.testing.assert_close(seen["ctx"][0, :, 2 * d:3 * d], attn @ v)
    rows = attn.sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    assert set(attn.max(-1).values.tolist()) >= {1.0}  # at least one row is one-hot on its head's token


def test_replaced_rows_grow_with_p_and_previous_fallback_is_positional(glue_dir):
    tm = tiny_model("bert")
    ctx = _ctx(glue_dir, tm, n=4)
    targets = syntactic_targets(tm.tokenizer, ctx.items)

    def one_hot_rows(p, otherwise="original"):
        with controlled_attention(tm.model, targets, [(0, 1)], p, otherwise):
            rec = _scan(ctx)
        return [(t[:, 0, 1].max(-1).values > 0.999) for t in rec.token]

    low, high = one_hot_rows(0.3), one_hot_rows(0.8)
    assert all(bool((l <= h).all()) for l, h in zip(low, high)) and sum(int(l.sum()) for l in low) < sum(int(h.sum()) for h in high)
    with controlled_attention(tm.model, targets, [(0, 1)], 0.0, "previous"):
        rec = _scan(ctx)
    for t, real in zip(rec.token, rec.mask):
        a = t[:, 0, 1]  # every real row: one-hot on the previous token (the first on itself)
        arg = a.argmax(-1)
        expected = torch.clamp(torch.arange(a.shape[-1]) - 1, min=0).expand_as(arg)
        assert bool((arg[real] == expected[real]).all())


def test_unknown_inputs_run_unchanged_and_the_interface_is_restored(glue_dir):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    tm = tiny_model("bert")
    ctx = _ctx(glue_dir, tm, n=2)
    enc = tm.tokenizer(["Nothing here was calibrated on."], return_tensors="pt")
    before = tm.model(**enc).last_hidden_state
    with controlled_attention(tm.model, syntactic_targets(tm.tokenizer, ctx.items), HEADS, 1.0):
        during = tm.model(**enc).last_hidden_state
    torch.testing.assert_close(during, before)
    assert "eager" not in ALL_ATTENTION_FUNCTIONS._local_mapping
    with pytest.raises(SynpruneError, match="probability"):
        with controlled_attention(tm.model, {}, HEADS, 1.5):
            pass


def _harness():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "controlled_attention.py"
    spec = importlib.util.spec_from_file_location("controlled_attention_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_harness_reports_sap_parts_and_placements(glue_dir, tmp_path):
    """End to end on a tiny model: at p = 1 the chosen heads miss no top-k arc (attention 1 > tau), and every
    method's placement is reported; magnitude does not read attention, so it cannot move."""
    bench = _harness()
    tm = tiny_model("bert")
    ctx = _ctx(glue_dir, tm, n=6)
    rows = bench.measure(tm, ctx.examples, ctx.config, ("spearman",), HEADS, [0.0, 1.0], ["sap", "entropy", "magnitude"],
                         "original", 0.5, ctx.parses)
    first, last = rows
    assert first["top_misses"] > 0 and last["top_misses"] == 0
    assert last["top_attention"] == pytest.approx(1.0, abs=1e-5)
    assert first["methods"]["magnitude"] == last["methods"]["magnitude"]
    assert first["methods"]["entropy"]["score"] > last["methods"]["entropy"]["score"]  # one-hot rows have zero entropy
    v = bench.verdict(rows)
    assert v["heads"] == 2 and isinstance(v["mean_falls"], bool)
    text = bench.markdown(rows, ["sap", "entropy", "magnitude"], {"heads": HEADS, "otherwise": "original", "model": "tiny",
                                                                  "task": "stsb", "calib_size": 6, "sparsity": 0.5}, v)
    assert text.count("\n| ") == 3 and "Verdict" in text


def test_head_choice_rejects_bad_specs():
    bench = _harness()
    assert bench.choose_heads("sap-top:2", (3, 4), [(2, 1), (0, 0), (1, 1)], 0) == [(2, 1), (0, 0)]
    assert len(set(bench.choose_heads("random:5", (3, 4), [], 0))) == 5
    for bad in ("3:0", "x:1", "random:0", ""):
        with pytest.raises(SynpruneError):
            bench.choose_heads(bad, (3, 4), [], 0)


def test_only_the_chosen_relations_become_syntactic(glue_dir):
    """With relations={'det'}, a p = 1 head attends fully to the head of every det arc and to no other arc's
    head more than its own map did."""
    tm = tiny_model("bert")
    ctx = _ctx(glue_dir, tm)
    labels = ctx.dependency_ranking(1, True).labels
    det = torch.cat(ctx.run_scan([LabelRecorder()], keep_punct=True)[0].labels) == labels.index("det")
    plain = torch.cat(_scan(ctx).arc_attn)
    with controlled_attention(tm.model, syntactic_targets(tm.tokenizer, ctx.items, relations={"det"}), [(0, 1)], 1.0):
        ctl = torch.cat(_scan(ctx).arc_attn)
    assert det.any() and (~det).any()
    torch.testing.assert_close(ctl[det, 0, 1], torch.ones(int(det.sum())), atol=1e-5, rtol=0)
    torch.testing.assert_close(ctl[~det, 0, 1], plain[~det, 0, 1])  # layer 0: its other rows keep their own map


class LabelRecorder:
    def __init__(self):
        self.labels = []

    def update(self, batch):
        self.labels.append(batch.arcs.label)
