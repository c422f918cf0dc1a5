"""SAP's arithmetic on hand-made attention maps and parses, with answers worked out by hand."""
from collections import Counter

import numpy as np
import pytest
import torch

from synprune.calibrate.attention import Arcs, AttentionBatch
from synprune.syntax.dependencies import DependencyRanking, arcs, label_counts
from synprune.methods import order_by
from synprune.calibrate.summary import MeanAttention, parse_threshold
from synprune.methods.sap import Penalty
from synprune.syntax.parse import Parse

OFF = 0.1  # every off-diagonal value not named below


def _batch() -> AttentionBatch:
    """2 items x 1 layer x 2 heads. Item 0 has 3 words (a 4th slot is padding); item 1 has 4 words, the 4th dropped."""
    W = torch.full((2, 1, 2, 4, 4), OFF)
    idx = torch.arange(4)
    W[:, :, :, idx, idx] = 0.7  # diagonals never count
    W[:, :, :, 3, :] = 0.5  # padding / dropped word: never counts
    W[:, :, :, :, 3] = 0.5
    # arcs (dep -> head): item 0: 0->1 nsubj, 2->1 obj; item 1: 1->0 nsubj, 2->0 amod
    W[0, 0, 0, 0, 1], W[0, 0, 0, 2, 1] = 0.9, 0.05
    W[1, 0, 0, 1, 0], W[1, 0, 0, 2, 0] = 0.8, 0.02
    W[0, 0, 1, 0, 1], W[0, 0, 1, 2, 1] = 0.1, 0.7
    W[1, 0, 1, 1, 0], W[1, 0, 1, 2, 0] = 0.05, 0.6
    labels = {"nsubj": 0, "amod": 1, "obj": 2}
    a = torch.tensor([[0, 1, 0, labels["nsubj"]], [0, 1, 2, labels["obj"]],
                      [1, 0, 1, labels["nsubj"]], [1, 0, 2, labels["amod"]]])
    word_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    return AttentionBatch(torch.zeros(2, 1, 2, 5, 5), torch.ones(2, 5, dtype=torch.bool), W, word_mask,
                          Arcs(a[:, 0], a[:, 1], a[:, 2], a[:, 3]), [None, None])


RANK_COUNTS = Counter({"nsubj": 2, "amod": 1, "obj": 1})


def test_weights_top_k_descend_and_rarest_weighs_most():
    r = DependencyRanking.from_counts(Counter({"a": 5, "b": 4, "c": 3, "d": 2, "e": 1}), k=2)
    assert r.labels == ("a", "b", "c", "d", "e")
    assert r.weights == (2, 1, 1, 2, 3)
    assert [e["top_k"] for e in r.to_json()] == [True, True, False, False, False]


def test_ranking_ties_break_by_label_name_and_k_above_T():
    r = DependencyRanking.from_counts(RANK_COUNTS, k=1)
    assert r.labels == ("nsubj", "amod", "obj") and r.weights == (1, 1, 2)
    r7 = DependencyRanking.from_counts(RANK_COUNTS, k=7)
    assert r7.weights == (7, 6, 5) and all(r7.is_top(i) for i in range(3))


def test_arcs_skip_root_and_punct_unless_kept():
    p = Parse(((0, 3), (4, 7), (7, 8)), (1, 1, 1), ("nsubj", "ROOT", "punct"))
    assert list(arcs(p)) == [(1, 0, "nsubj")]
    assert list(arcs(p, keep_punct=True)) == [(1, 0, "nsubj"), (1, 2, "punct")]
    assert label_counts([p, p]) == Counter({"nsubj": 2})


def test_thresholds_exact():
    stats = MeanAttention((1, 2))
    stats.update(_batch())
    # off-diagonal sums over the 3 real words: head 0: 1.35 + 1.22, head 1: 1.2 + 1.05; 12 values per head
    assert stats.count == 12
    assert float(stats.threshold("global-mean")[0, 0]) == pytest.approx(4.82 / 24)
    assert stats.threshold("head-mean").numpy() == pytest.approx(np.array([[2.57 / 12, 2.25 / 12]]))
    assert stats.threshold("layer-mean").numpy() == pytest.approx(np.array([[4.82 / 24, 4.82 / 24]]))
    assert float(stats.threshold("0.25")[0, 1]) == 0.25
    # 24 values: 16 x 0.1, then 0.9 0.05 0.8 0.02 0.7 0.6 and 0.1 0.05 (head 1's arcs) -> median is 0.1
    assert float(stats.threshold("quantile:0.5")[0, 0]) == pytest.approx(0.1, abs=1e-4)


@pytest.mark.parametrize("k, tau, expected", [
    (1, "global-mean", [[0, 5]]),  # head 1 misses both nsubj (w1 each), over-attends obj (w2) and amod (w1)
    (2, "global-mean", [[1, 5]]),  # k=2: amod becomes top-k (w1): head 0 misses it; obj (non-top, w1)
    (1, "0.85", [[1 + 0, 2]]),  # tau 0.85: head 0 misses nsubj 0.8; head 1 misses both nsubj
])
def test_penalty_exact(k, tau, expected):
    ranking = DependencyRanking.from_counts(RANK_COUNTS, k)
    batch = _batch()
    stats = MeanAttention((1, 2))
    stats.update(batch)
    # the batch's label ids follow the test's own table; re-map to the ranking's order
    order = {"nsubj": 0, "amod": 1, "obj": 2}
    remap = torch.tensor([ranking.index[l] for l in sorted(order, key=order.get)])
    batch.arcs.label = remap[batch.arcs.label]
    pen = Penalty(stats.threshold(tau), ranking, "dep2head")
    pen.update(batch)
    assert pen.penalty.numpy().tolist() == expected
    assert pen.n_arcs == 4


def test_direction_head2dep_reads_the_transposed_entry():
    batch = _batch()
    a = batch.arc_attention("head2dep")
    assert a.shape == (4, 1, 2)
    assert torch.allclose(a[:, 0, 0], torch.full((4,), OFF))
    assert torch.allclose(batch.arc_attention("max")[:, 0, 0], torch.tensor([0.9, 0.1, 0.8, 0.1]))


def test_order_highest_first_with_tiebreak():
    scores = np.array([[3.0, 5.0], [5.0, 1.0]])
    tie = np.array([[0.0, 0.4], [0.2, 0.0]])
    assert order_by(scores, highest_first=True, tiebreak=tie) == [(1, 0), (0, 1), (0, 0), (1, 1)]
    assert order_by(scores, highest_first=False) == [(1, 1), (0, 0), (0, 1), (1, 0)]


@pytest.mark.parametrize("bad", ["median", "quantile:2", "quantile:x", ""])
def test_bad_thresholds_rejected(bad):
    with pytest.raises(ValueError):
        parse_threshold(bad)
