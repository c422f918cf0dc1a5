"""Candidate Filtering: the walk on a hand-made metric, the layer-skipping scorer against full forward passes,
and cf_log.jsonl from prune()."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from synprune.cf import filter as cf
from synprune.evaluation import evaluate as E
from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.errors import SynpruneError
from synprune.evaluation.evaluate import evaluate
from synprune.cf.layercache import AblationScorer
from synprune.model.masking import HeadMask
from synprune.methods import order_by
from synprune.run.prune import prune
from synprune.data.tasks import Example

from _tiny_models import DECODERS, tiny_model as tiny_decoder
from conftest import STSB_ROWS, tiny_model

@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny forward passes: on a shared 2-core machine one thread is many times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# 3 layers x 4 heads. The method's order, and what removing each head costs (the metric is 100 - total cost).
ORDER = [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0), (2, 1), (1, 2), (2, 2), (0, 3), (1, 3), (2, 3)]
COST = {(2, 2): 0.0, (0, 3): 0.25, (2, 0): 0.5, (1, 2): 0.5, (0, 0): 1.0, (0, 2): 1.0, (0, 1): 1.5,
        (2, 1): 2.0, (1, 0): 2.5, (1, 1): 6.0, (1, 3): 0.0, (2, 3): 0.0}


class AdditiveScorer:
    """Stands in for AblationScorer: metric = 100 - sum of the removed heads' costs; records each removed set
    it scored (`scored`, reset by the fixture)."""

    scored: list = []

    def __init__(self, tm, prepared, metric_name, layers=(), fast=True):
        self.base, self.trial = frozenset(), None
        self.dense = 100.0

    def metric(self, extra):
        self.trial = self.base | frozenset(extra)
        AdditiveScorer.scored.append(self.trial)
        return 100.0 - sum(COST[h] for h in self.trial)

    def accept(self):
        self.base = self.trial

    def assume(self, heads):
        self.base, self.trial = frozenset(heads), None


@pytest.fixture
def additive(monkeypatch):
    monkeypatch.setattr(cf, "AblationScorer", AdditiveScorer)
    AdditiveScorer.scored = []
    store: dict = {}

    def memo(key, compute):
        if key not in store:
            store[key] = compute()
        return store[key]

    return SimpleNamespace(tm=SimpleNamespace(grid=(3, 4)), prepared=None, metric_names=("spearman",), memo=memo)


def test_walk_on_hand_made_metric(additive):
    """Pool of 10 (R = 10/12), budget 8, floor 95, and a layer goes whole at its 3rd removed head (fraction 0.75).

    Alone, the candidates score (2,2) 100 > (0,3) 99.75 > (2,0) = (1,2) 99.5 > (0,0) = (0,2) 99 > (0,1) 98.5
    > (2,1) 98 > (1,0) 97.5 > (1,1) 94; ties go by the method's order ((2,0) before (1,2) though (1,2) sorts
    first by index). The walk removes (2,2), (0,3), (2,0), (1,2), (0,0) (metric 97.75); (0,2) is layer 0's 3rd
    head, so layer 0 goes whole with (0,1) (95.25 >= 95, 7 heads); (0,1) is then already gone; (2,1) would take
    layer 2 whole, 9 heads > 8, so it is skipped; (1,0) drops to 92.75 and (1,1) to 89.25: both put back
    although (1,0) alone was fine. The pool is spent at 7, so (1,3), outside the pool, fills the budget.
    """
    cfg = PruneConfig(sparsity=8 / 12, pool_ratio=10 / 12, tolerance=0.95, layer_fraction=0.75)
    selection, log = cf.candidate_filter(additive, ORDER, 8, cfg)
    assert selection.pruned == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 0), (2, 2)]
    assert selection.removed_layers == [0] and selection.fill

    single = [e for e in log if e["stage"] == "single"]
    assert [(e["layer"], e["head"]) for e in single] == ORDER[:10]
    assert all(e["kept"] and not e["removed"] for e in single)
    assert [e["metric"] for e in single] == [100 - COST[h] for h in ORDER[:10]]

    walk = [((e["layer"], e["head"]), e["metric"], e["removed"]) for e in log if e["stage"] == "walk"]
    assert walk == [((2, 2), 100.0, True), ((0, 3), 99.75, True), ((2, 0), 99.25, True), ((1, 2), 98.75, True),
                    ((0, 0), 97.75, True), ((0, 2), 95.25, True), ((0, 1), None, True), ((2, 1), None, False),
                    ((1, 0), 92.75, False), ((1, 1), 89.25, False)]
    by_head = {(e["layer"], e["head"]): e for e in log if e["stage"] == "walk"}
    assert by_head[(0, 2)]["heads"] == [[0, 1], [0, 2]]  # the layer rule took the rest of layer 0
    assert "layer" in by_head[(0, 1)]["reason"] and "budget" in by_head[(2, 1)]["reason"]
    assert all(e["kept"] is (not e["removed"]) for e in log)
    fill = [e for e in log if e["stage"] == "fill"]
    assert [(e["layer"], e["head"], e["metric"], e["removed"]) for e in fill] == [(1, 3, None, True)]
    assert cf.summarize(log) == {"pool": 10, "tried": 8, "removed": 6, "rejected": 2, "filled": 1, "fill": True}
    # nothing was scored twice and the skipped heads were never scored in the walk; the walk's first step
    # removes (2,2) alone, already scored in the single stage, so it costs no pass
    assert len(AdditiveScorer.scored) == 10 + 7 == len(set(AdditiveScorer.scored))


def test_walk_stops_at_the_budget_without_fill(additive):
    selection, log = cf.candidate_filter(additive, ORDER, 3, PruneConfig(sparsity=0.25))
    # pool: ceil((0.25 + 0.25) * 12) = 6 candidates; the three cheapest of them within tolerance are removed
    assert sum(e["stage"] == "single" for e in log) == 6
    assert selection.pruned == [(0, 0), (0, 2), (2, 0)] and not selection.fill
    assert [e["stage"] for e in log].count("walk") == 3


def test_metrics_are_reused_across_budgets(additive):
    """A removed set's metric does not depend on the budget or on how the walk got there: a second CF run on
    the same context scores only the sets the first did not, and its log still carries every metric."""
    cf.candidate_filter(additive, ORDER, 3, PruneConfig(sparsity=0.25))
    first = list(AdditiveScorer.scored)
    selection, log = cf.candidate_filter(additive, ORDER, 6, PruneConfig(sparsity=0.5))
    second = AdditiveScorer.scored[len(first):]
    asked = [frozenset(h for e2 in log[:i + 1] if e2["stage"] == "walk" and e2["removed"] for h in map(tuple, e2["heads"]))
             | {(e["layer"], e["head"])} for i, e in enumerate(log) if e["stage"] == "walk" and e["metric"] is not None]
    singles = [e for e in log if e["stage"] == "single"]
    assert [e["metric"] for e in singles] == [100 - COST[h] for h in ORDER[:9]]
    walk = [e for e in log if e["stage"] == "walk" and e["metric"] is not None]
    assert [e["metric"] for e in walk] == [100 - sum(COST[h] for h in s) for s in asked]
    assert len(set(first + second)) == len(first + second)  # no removed set scored twice
    assert set(second) == ({frozenset([h]) for h in ORDER[6:9]} | set(asked)) - set(first) - {frozenset()}


def test_absolute_tolerance(additive):
    """With --tolerance-abs 1 only removals costing at most 1 in total are kept: (2,2), (2,0), (1,2) of the pool
    ORDER[:9]; the budget of 6 is then filled with the heads outside the pool, (0,3), (1,3), (2,3)."""
    selection, log = cf.candidate_filter(additive, ORDER, 6, PruneConfig(sparsity=0.5, tolerance_abs=1.0))
    walk = [e for e in log if e["stage"] == "walk"]
    assert [(e["layer"], e["head"]) for e in walk if e["removed"]] == [(2, 2), (2, 0), (1, 2)]
    assert len(walk) == 9 and all(e["floor"] == 99.0 for e in walk)
    assert selection.fill and selection.pruned == [(0, 3), (1, 2), (1, 3), (2, 0), (2, 2), (2, 3)]


def test_metric_floor_for_negative_and_zero_metrics():
    assert cf.metric_floor(80.0, PruneConfig(tolerance=0.9)) == pytest.approx(72.0)
    assert cf.metric_floor(-10.0, PruneConfig(tolerance=0.9)) == pytest.approx(-11.0)  # a drop, not a gain
    assert cf.metric_floor(0.0, PruneConfig(tolerance=0.9)) == 0.0
    assert cf.metric_floor(-10.0, PruneConfig(tolerance_abs=2.5)) == -12.5
    with pytest.raises(SynpruneError, match="--tolerance-abs"):
        PruneConfig(tolerance_abs=-1.0).validate()


def _calibration(family: str, num_labels=None, seed=0) -> Calibration:
    """8 STS-B pairs scored by Pearson: a continuous metric, so any change in the outputs shows."""
    tm = tiny_model(family, num_labels, seed=seed)
    examples = [Example(a, b, s) for a, b, s in STSB_ROWS]
    return Calibration(tm, examples, PruneConfig(batch_size=3), ("pearson",))


@pytest.mark.parametrize("family,num_labels,attention", [("bert", None, "eager"), ("distilbert", None, "eager"),
                                                         ("roberta", 1, "eager"), ("electra", 1, "eager"),
                                                         ("bert", 1, "sdpa")])
def test_fast_scorer_matches_full_forward(family, num_labels, attention):
    """Embedding models (two model calls per batch) and regression classifiers (one call through the head),
    with eager attention and with SDPA (how models are loaded for evaluation)."""
    ctx = _calibration(family, num_labels)
    ctx.tm.model.set_attn_implementation(attention)
    heads = [(l, h) for l in range(3) for h in range(4)]
    fast = AblationScorer(ctx.tm, ctx.prepared, ctx.metric_names[0], range(3))
    plain = AblationScorer(ctx.tm, ctx.prepared, ctx.metric_names[0], range(3), fast=False)

    def reference(removed):
        with HeadMask.pruning(ctx.tm.model, removed):
            return evaluate(ctx.tm, ctx.prepared, ctx.metric_names)[ctx.metric_names[0]]

    assert fast.dense == pytest.approx(reference([]), abs=1e-5)
    for step, accepted in enumerate([[(1, 2)], [(0, 0), (0, 3)]]):
        for head in heads if step == 0 else heads[1::5]:
            f, p = fast.metric([head]), plain.metric([head])
            assert f == pytest.approx(p, abs=1e-5), (step, head)
        assert fast.metric(accepted) == pytest.approx(reference(sorted(plain.base | set(accepted))), abs=1e-5)
        plain.metric(accepted)
        fast.accept(), plain.accept()
    assert fast.fast and fast.layer_runs < 0.75 * plain.layer_runs
    # after accepting heads in layer 0 the cache is refreshed: a layer-2 ablation still matches
    assert fast.metric([(2, 1)]) == pytest.approx(reference([(0, 0), (0, 3), (1, 2), (2, 1)]), abs=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_fast_and_plain_cf_make_the_same_decisions(family):
    ctx = _calibration(family, seed=3)
    order = order_by(np.random.default_rng(0).random((3, 4)), highest_first=True)
    cfg = PruneConfig(sparsity=0.5, tolerance=1.0)  # floor = dense metric: some removals pass, some do not
    fast_sel, fast_log = cf.candidate_filter(ctx, order, 6, cfg)
    plain_sel, plain_log = cf.candidate_filter(ctx, order, 6, cfg, fast=False)
    assert fast_sel == plain_sel
    strip = lambda log: [{k: v for k, v in e.items() if k not in ("metric", "floor", "dense")} for e in log]
    assert strip(fast_log) == strip(plain_log)
    for a, b in zip(fast_log, plain_log):
        assert (a["metric"] is None) == (b["metric"] is None)
        if a["metric"] is not None:
            assert a["metric"] == pytest.approx(b["metric"], abs=1e-5)


def test_prune_with_cf_writes_one_log_line_per_decision(glue_dir, tmp_path):
    res = prune(tiny_model("bert"), task="stsb", sparsity=0.5, glue_dir=glue_dir, out=tmp_path / "run",
                calib_size=7, cf=True, tolerance=0.9)  # 7: test_pipeline expects its 6-example parses uncached
    lines = (tmp_path / "run" / "cf_log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    assert log == res.cf_log and len(log) >= 9  # 9 candidates scored alone (pool 0.75 x 12), then the walk
    assert sum(e["stage"] == "single" for e in log) == 9
    assert {"layer", "head", "metric", "kept", "removed", "stage"} <= set(log[0])
    removed = {(e["layer"], e["head"]) for e in log if e["removed"]}
    assert removed == set(res.pruned_heads) and len(res.pruned_heads) == 6
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    assert data["cf"] is True and data["config"]["tolerance"] == 0.9


def test_cli_cf_options_reach_the_run_and_the_summary(capsys, glue_dir, tmp_path):
    from synprune.cli import main

    tm = tiny_model("bert")
    folder = tmp_path / "tiny"
    tm.model.save_pretrained(folder)
    tm.tokenizer.save_pretrained(folder)
    with pytest.raises(SystemExit) as exc:  # a floor of m0 - 200 keeps every removal (metrics are in [-100, 100])
        main(["prune", "--model", str(folder), "--glue-dir", str(glue_dir), "--sparsity", "0.25", "--calib-size", "5",
              "--cf", "--pool-ratio", "0.5", "--tolerance-abs", "200", "--out", str(tmp_path / "o"), "-q"])
    assert exc.value.code == 0
    config = json.loads((tmp_path / "o" / "result.json").read_text())["config"]
    assert config["cf"] is True and config["pool_ratio"] == 0.5 and config["tolerance_abs"] == 200
    log = [json.loads(line) for line in (tmp_path / "o" / "cf_log.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in log] == ["single"] * 6 + ["walk"] * 3 and all(e["removed"] for e in log[6:])
    err = capsys.readouterr().err
    assert "6 candidates scored alone; walk tried 3, removed 3, rejected 0; no fill-up needed" in " ".join(err.split())


def test_scorer_starts_after_assume_where_the_removals_differ_from_its_cache():
    """`assume` takes a base whose metric is known without a pass; the next trial runs from the lowest layer
    where base + trial differ from the cached removals (no catch-up pass), or from the dense states where
    those differ later (a new walk from an empty base), and scores what a full forward pass gives."""
    ctx = _calibration("bert")
    fast = AblationScorer(ctx.tm, ctx.prepared, ctx.metric_names[0], range(3))
    fast.metric([(2, 0)])
    fast.accept()
    passes, runs = fast.passes, fast.layer_runs
    fast.assume({(2, 0), (1, 2), (1, 3)})
    assert fast.passes == passes

    def reference(removed):
        with HeadMask.pruning(ctx.tm.model, removed):
            return evaluate(ctx.tm, ctx.prepared, ctx.metric_names)[ctx.metric_names[0]]

    assert fast.metric([(2, 1)]) == pytest.approx(reference([(1, 2), (1, 3), (2, 0), (2, 1)]), abs=1e-6)
    calls = (fast.layer_runs - runs) // 2  # one pass from layer 1 of the 3 layers
    assert fast.passes == passes + 1 and fast.layer_runs - runs == 2 * calls
    fast.metric([(0, 1)])
    fast.accept()  # the cache now holds a layer-0 removal
    fast.assume(set())
    runs = fast.layer_runs
    assert fast.metric([(2, 3)]) == pytest.approx(reference([(2, 3)]), abs=1e-6)
    assert fast.layer_runs - runs == calls  # from layer 2, on the dense states


def test_scorer_passes_run_on_a_copy_without_the_accepted_heads():
    """Accepted removals are sliced out of a copy (the caller's model keeps every head); a base that needs a
    sliced head back gets a fresh copy, and every score still matches the masked model's full forward pass."""
    from synprune.arch import attention_handles

    ctx = _calibration("bert")
    fast = AblationScorer(ctx.tm, ctx.prepared, ctx.metric_names[0], range(3))

    def reference(removed):
        with HeadMask.pruning(ctx.tm.model, removed):
            return evaluate(ctx.tm, ctx.prepared, ctx.metric_names)[ctx.metric_names[0]]

    kept = lambda model: [h.kept_heads for h in attention_handles(model)]
    fast.metric([(1, 2), (1, 3)])
    fast.accept()
    assert kept(fast.sliced.model) == [[0, 1, 2, 3], [0, 1], [0, 1, 2, 3]]
    assert kept(ctx.tm.model) == [[0, 1, 2, 3]] * 3
    assert fast.metric([(1, 0)]) == pytest.approx(reference([(1, 0), (1, 2), (1, 3)]), abs=1e-6)  # narrowed cache
    fast.assume({(1, 2), (0, 1)})  # (1, 3) comes back
    assert fast.metric([(2, 0)]) == pytest.approx(reference([(0, 1), (1, 2), (2, 0)]), abs=1e-6)
    fast.accept()
    assert kept(fast.sliced.model) == [[0, 2, 3], [0, 1, 3], [1, 2, 3]]
    assert fast.metric([(1, 3)]) == pytest.approx(reference([(0, 1), (1, 2), (1, 3), (2, 0)]), abs=1e-6)
    assert kept(ctx.tm.model) == [[0, 1, 2, 3]] * 3
    want = reference([(0, 0), (1, 2), (2, 1)])
    with HeadMask.pruning(ctx.tm.model, [(0, 0)]):  # the caller's hooks would be copied: no slicing, masks only
        hooked = AblationScorer(ctx.tm, ctx.prepared, ctx.metric_names[0], range(3))
        hooked.metric([(1, 2)])
        hooked.accept()
        assert hooked.sliced is ctx.tm and hooked.metric([(2, 1)]) == pytest.approx(want, abs=1e-6)


def test_a_second_cf_run_on_the_same_context_reuses_every_pass():
    ctx = _calibration("bert", seed=3)
    order = order_by(np.random.default_rng(0).random((3, 4)), highest_first=True)
    cfg = PruneConfig(sparsity=0.5, tolerance=1.0)
    first = cf.candidate_filter(ctx, order, 6, cfg)
    scorer = ctx.memo(("cf-scorer", ctx.metric_names[0], ()), lambda: None)
    passes = scorer.passes
    assert cf.candidate_filter(ctx, order, 6, cfg) == first
    assert scorer.passes == passes


def _lm_prepared(seed: int = 0) -> E.Prepared:
    """Random token ids (the tiny decoders' vocabulary is 100) in two right-padded batches, scored by perplexity."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b, lengths in enumerate(([9, 7, 4], [6, 6, 3])):
        ids = torch.randint(3, 100, (3, max(lengths)), generator=gen)
        mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
        batches.append(E.Batch(np.arange(3 * b, 3 * b + 3), {"input_ids": ids * mask, "attention_mask": mask}, None, None, lm=True))
    return E.Prepared(batches, 6, None)


@pytest.mark.parametrize("family", DECODERS)
def test_fast_scorer_matches_full_forward_on_decoders(family):
    """Decoder families (rotary positions, grouped-query attention, fused q/k/v in GPT-2 and Phi-3): the
    layer-reusing scorer gives the full forward pass's perplexity, or falls back to full passes."""
    from synprune.model.load import TaskModel

    tm = TaskModel(tiny_decoder(family, "lm"), None, "lm", family, "", None)
    prepared = _lm_prepared()
    fast = AblationScorer(tm, prepared, "perplexity", range(3))
    plain = AblationScorer(tm, prepared, "perplexity", range(3), fast=False)

    def reference(removed):
        with HeadMask.pruning(tm.model, removed):
            return evaluate(tm, prepared, ["perplexity"])["perplexity"]

    assert fast.dense == pytest.approx(reference([]), rel=1e-5)
    for extra, accept in (([(1, 2)], True), ([(2, 0)], False), ([(0, 1), (0, 3)], True), ([(2, 3)], False)):
        want = reference(sorted(fast.base | set(extra)))
        assert fast.metric(extra) == pytest.approx(want, rel=1e-5), extra
        assert plain.metric(extra) == pytest.approx(want, rel=1e-5), extra
        if accept:
            fast.accept(), plain.accept()
    if fast.fast:  # the layer reuse held: fewer layers ran than full passes would
        assert fast.layer_runs < plain.layer_runs


def test_walk_key_is_known_once_the_pool_is_scored_alone_and_gives_the_walk_order(additive):
    """A sweep queues a walk once its pool is scored alone (`score_alone`, possibly in another process), and
    makes two walks with the same key once: the key holds the order the walk then tries its candidates in."""
    cfg = PruneConfig(sparsity=8 / 12, pool_ratio=10 / 12, tolerance=0.95, layer_fraction=0.75)
    assert cf.walk_key(additive, ORDER, 8, cfg) is None
    cf.score_alone(additive, ORDER[:9], cfg)
    assert cf.walk_key(additive, ORDER, 8, cfg) is None  # ORDER[9] is in the pool and not yet scored
    cf.score_alone(additive, ORDER[9:10], cfg)
    key = cf.walk_key(additive, ORDER, 8, cfg)
    assert len(AdditiveScorer.scored) == 10  # each head alone, once
    selection, log = cf.candidate_filter(additive, ORDER, 8, cfg)
    assert len(AdditiveScorer.scored) == 10 + 7  # the single stage found every candidate scored
    assert list(key[0]) == [(e["layer"], e["head"]) for e in log if e["stage"] == "walk"]
    # the same pool in another order whose ties ((2,0) and (1,2); (0,0) and (0,2)) go the same way: same walk
    other = sorted(ORDER[:10], key=lambda h: (h not in ((2, 0), (0, 0)), ORDER.index(h))) + ORDER[10:]
    assert cf.walk_key(additive, other, 8, cfg) == key
    assert cf.candidate_filter(additive, other, 8, cfg)[0].pruned == selection.pruned
    assert len(AdditiveScorer.scored) == 17  # nothing new to score
    assert cf.walk_key(additive, ORDER, 7, cfg) != key  # another budget is another walk
