"""The competing head-scoring methods (SPEC 5) on tiny random models and on hand-made inputs with known answers."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from synprune.arch import attention_handles
from synprune.calibrate.attention import Arcs, AttentionBatch
from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.model.masking import HeadMask, mask_from_heads
from synprune.methods import available, get_method
from synprune.methods import gradient as G
from synprune.calibrate.summary import AttentionStats
from synprune.methods.attention_stats import confidence, entropy
from synprune.run.prune import prune
from synprune.data.tasks import Example

from conftest import STSB_ROWS, tiny_model

ALL_HEADS = sorted((l, h) for l in range(3) for h in range(4))


def _examples(kind: str = "embedding", labels: bool = True, n: int = 6) -> list[Example]:
    def label(score: float):
        if not labels:
            return None
        return score if kind == "embedding" else int(score) % 3

    return [Example(a, b, label(s)) for a, b, s in STSB_ROWS[:n]]


def _ctx(tm, labels: bool = True, batch_size: int = 2, n: int = 4) -> Calibration:
    return Calibration(tm, _examples(tm.kind, labels, n), PruneConfig(batch_size=batch_size), ("spearman",))


def _score(method: str, tm, seed: int = 0):
    return get_method(method)(_ctx(tm, batch_size=4), PruneConfig(method=method, seed=seed))  # one batch: fast


def test_random_differs_across_seeds_and_scores_are_ranks():
    tm = tiny_model("bert")
    orders = [_score("random", tm, seed=s).order for s in range(3)]
    assert orders[0] != orders[1] and orders[0] != orders[2] and orders[1] != orders[2]
    res = _score("random", tm, seed=5)
    assert [res.scores[h] for h in res.order] == list(range(12))


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet"])
def test_magnitude_orders_by_output_projection_column_norms(family):
    tm = tiny_model(family)
    gen = torch.Generator().manual_seed(1)
    target = (torch.randperm(12, generator=gen).double() + 1.0).reshape(3, 4) / 4
    with torch.no_grad():
        for h in attention_handles(tm.model):
            w = h.out_proj.weight
            for head in range(4):
                cols = slice(head * h.head_dim, (head + 1) * h.head_dim)
                block = torch.randn(w.shape[0], h.head_dim, generator=gen)
                w[:, cols] = (block / block.norm() * target[h.layer, head]).to(w.dtype)
    res = get_method("magnitude")(SimpleNamespace(tm=tm), PruneConfig())
    np.testing.assert_allclose(res.scores, target.numpy(), rtol=1e-5)
    expected = sorted(ALL_HEADS, key=lambda lh: float(target[lh]))
    assert res.order == expected


def _hand_batch(rows_per_head: list[list[list[float]]], real: list[bool]) -> AttentionBatch:
    """One item, one layer: rows_per_head[h] is head h's T x T attention matrix."""
    attn = torch.tensor(rows_per_head, dtype=torch.float32)[None, None]  # (1, 1, H, T, T)
    empty = torch.zeros(0, dtype=torch.long)
    return AttentionBatch(attn, torch.tensor([real]), torch.zeros(1, 1, attn.shape[2], 1, 1), torch.ones(1, 1, dtype=torch.bool),
                          Arcs(empty, empty, empty, empty), [None])


def _h(row):
    return -sum(p * math.log(p) for p in row if p > 0)


def test_entropy_and_confidence_on_hand_made_attention():
    # batch 1: tokens 0, 1 real, token 2 padding. Head 0's first row puts 0.1 on padding: renormalised to [.5, .5].
    # The padding query row (last) is junk that must be ignored.
    b1 = _hand_batch([
        [[0.45, 0.45, 0.1], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]],
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4]],
        [[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5, 0.0, 0.5]],
    ], [True, True, False])
    b2 = _hand_batch([
        [[0.5, 0.5, 0.0]] * 3,
        [[1.0, 0.0, 0.0]] * 3,
        [[0.4, 0.3, 0.3]] * 3,
    ], [True, True, True])
    stats = AttentionStats((1, 3))
    stats.update(b1)
    stats.update(b2)
    real_rows = {0: [[0.5, 0.5]] * 2 + [[0.5, 0.5, 0.0]] * 3,
                 1: [[1.0, 0.0], [0.0, 1.0]] + [[1.0, 0.0, 0.0]] * 3,
                 2: [[0.9, 0.1], [0.2, 0.8]] + [[0.4, 0.3, 0.3]] * 3}
    want_h = [sum(_h(r) for r in real_rows[h]) / 5 for h in range(3)]
    want_max = [sum(max(r) for r in real_rows[h]) / 5 for h in range(3)]
    assert stats.rows == 5
    np.testing.assert_allclose(stats.mean_entropy.numpy()[0], want_h, rtol=1e-5)
    np.testing.assert_allclose(stats.mean_max.numpy()[0], want_max, rtol=1e-5)
    assert stats.padding_mass == pytest.approx(0.1, abs=1e-6)
    ctx = SimpleNamespace(attention_summary=lambda: (None, stats), tm=SimpleNamespace(grid=(1, 3)))
    # entropy: head 2 (0.82) > head 0 (ln 2) > head 1 (0); confidence: head 0 (0.5) < head 2 (0.58) < head 1 (1)
    assert entropy(ctx, PruneConfig()).order == [(0, 2), (0, 0), (0, 1)]
    assert confidence(ctx, PruneConfig()).order == [(0, 0), (0, 2), (0, 1)]


def test_entropy_and_confidence_share_one_scan_and_padding_keys_get_no_attention(monkeypatch):
    ctx = _ctx(tiny_model("bert"), batch_size=4)  # sentences of different lengths: batches are padded
    calls = []
    real_scan = ctx.run_scan
    monkeypatch.setattr(ctx, "run_scan", lambda collectors, **kw: calls.append(1) or real_scan(collectors, **kw))
    ent, conf = get_method("entropy")(ctx, PruneConfig()), get_method("confidence")(ctx, PruneConfig())
    assert len(calls) == 1
    assert ent.details["query_rows"] == conf.details["query_rows"] > 0
    assert ent.details["padding_mass_max"] < 1e-12  # eager attention gives padding keys zero weight
    assert ((ent.scores > 0) & (ent.scores <= math.log(40))).all()
    assert ((conf.scores > 0) & (conf.scores <= 1)).all()


def _objective_total(tm, batches, mask, kind, seed):
    with torch.no_grad(), HeadMask(tm.model, mask):
        return sum(float(G.objective(tm, b, kind, seed, i)) for i, b in enumerate(batches))


@pytest.mark.parametrize("kind, labels", [("embedding", True), ("classifier", True), ("embedding", False), ("classifier", False)])
def test_mask_gradient_matches_finite_difference(kind, labels):
    tm = tiny_model("bert", num_labels=3 if kind == "classifier" else None)
    tm.model.double()
    ctx = _ctx(tm, labels=labels)
    batches = ctx.prepared.batches
    loss = G.loss_kind(batches)
    assert loss == (G.TASK_LOSS if labels else G.OUTPUT_FISHER)
    mask = mask_from_heads(tm.grid, [(0, 1), (2, 3)]).double()  # a masked state, as in michel-iterative
    grads = G.mask_gradients(tm, batches, mask, loss, seed=3).sum(0)
    eps = 1e-5
    for head in [(0, 1), (1, 2)]:  # a masked head and a kept one
        up, down = mask.clone(), mask.clone()
        up[head] += eps
        down[head] -= eps
        fd = (_objective_total(tm, batches, up, loss, 3) - _objective_total(tm, batches, down, loss, 3)) / (2 * eps)
        assert grads[head] == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert np.abs(grads).max() > 1e-6  # the test would be vacuous with zero gradients


def test_michel_and_fisher_share_one_gradient_pass(monkeypatch):
    tm = tiny_model("bert")
    ctx = _ctx(tm)
    calls = []
    real = G.mask_gradients
    monkeypatch.setattr(G, "mask_gradients", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    mich, fish = get_method("michel")(ctx, PruneConfig()), get_method("fisher")(ctx, PruneConfig())
    assert len(calls) == 1
    g = real(tm, ctx.prepared.batches, torch.ones(tm.grid), G.TASK_LOSS)
    assert g.shape == (len(ctx.prepared.batches), 3, 4) == (2, 3, 4)
    np.testing.assert_allclose(fish.scores, (g ** 2).sum(0), rtol=1e-6)
    raw = np.abs(g).sum(0)
    np.testing.assert_allclose(mich.details["raw"], raw, rtol=1e-6)
    np.testing.assert_allclose(mich.scores, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    assert mich.details["loss"] == fish.details["loss"] == G.TASK_LOSS and fish.details["n_batches"] == 2


def test_michel_iterative_starts_with_one_shot_and_rescores_with_heads_masked():
    tm = tiny_model("bert", seed=2)
    ctx = _ctx(tm, batch_size=4)
    one_shot = get_method("michel")(ctx, PruneConfig())
    it = get_method("michel-iterative")(ctx, PruneConfig())
    step = it.details["step_size"]
    assert step == 2  # ceil(0.1 * 12)
    assert it.order[:step] == one_shot.order[:step]
    assert sorted(it.order) == ALL_HEADS and len(it.details["steps"]) == 6
    # step 2 = the lowest of the rest, scored with step 1's heads masked and layers normalised over what is left
    first = it.order[:step]
    g = G.mask_gradients(tm, ctx.prepared.batches, mask_from_heads(tm.grid, first), G.TASK_LOSS)
    active = mask_from_heads(tm.grid, first).numpy()
    raw = np.abs(g).sum(0) * active
    rescored = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    rest = sorted((h for h in ALL_HEADS if h not in first), key=lambda h: (rescored[h], h))
    assert it.order[step:2 * step] == rest[:step]


@pytest.mark.parametrize("method", available())
def test_prune_runs_with_every_method(method, glue_dir):
    """End to end through `prune` (tests/test_contract.py checks every method's scores and selections)."""
    budget = {"budget": "flops:0.7"} if method in ("kwon", "recon") else {}  # they prune heads and neurons under a budget
    res = prune(tiny_model("bert"), task="stsb", sparsity=0.5, glue_dir=glue_dir, calib_size=4, method=method, **budget)
    assert res.method == method and res.split["calibration"] == 4 and (budget or len(res.pruned_heads) == 6)
    assert np.asarray(res.head_scores).shape == (3, 4)
    assert np.isfinite(res.metric["dense"]) and np.isfinite(res.metric["pruned"])
    if method in ("michel", "michel-iterative", "fisher"):
        assert res.details["loss"] == G.TASK_LOSS


def test_mask_gradients_are_zero_when_no_head_is_left():
    tm = tiny_model("bert")
    for layer in tm.model.encoder.layer:  # as after removing every attention block: nothing for the mask to scale
        layer._synprune_attention_removed = True
    ctx = _ctx(tm)
    g = G.mask_gradients(tm, ctx.prepared.batches, torch.ones(tm.grid), G.TASK_LOSS)
    assert g.shape == (2, 3, 4) and not g.any()


def test_output_fisher_ignores_labels_and_fusion_averages_positions():
    """output-fisher scores the label-free objective even on labelled data, so labels cannot change it."""
    from synprune.methods import fuse_orders

    tm = tiny_model("bert")
    with_labels, without = _ctx(tm, labels=True), _ctx(tm, labels=False)
    a = get_method("output-fisher")(with_labels, PruneConfig())
    b = get_method("output-fisher")(without, PruneConfig())
    assert a.details["loss"] == G.OUTPUT_FISHER and a.order == b.order
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-9)
    assert not np.allclose(a.scores, get_method("fisher")(with_labels, PruneConfig()).scores)
    x, y = [(0, 0), (0, 1), (0, 2)], [(0, 2), (0, 1), (0, 0)]
    assert fuse_orders(x, y) == [(0, 2), (0, 1), (0, 0)]  # all tie at mean position 1: the last order breaks ties
    assert fuse_orders(x, [(0, 1), (0, 0), (0, 2)]) == [(0, 1), (0, 0), (0, 2)]  # means 0.5, 0.5, 2; tie: last order
