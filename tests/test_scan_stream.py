"""The attention scan streams one layer at a time when every collector can take it, with the same sums as
handing collectors all layers at once."""
from __future__ import annotations

import pytest
import torch

from _tiny_models import task_model
from conftest import tiny_model
from synprune.calibrate.attention import calibration_items, scan
from synprune.syntax.dependencies import DependencyRanking
from synprune.calibrate.summary import AttentionStats, MeanAttention
from synprune.methods.sap import Penalty
from synprune.syntax.parse import Parse

TEXTS = ["Dogs chase cats.", "The old man saw a dog in the park.", "Birds sing."]
PARSES = [Parse(((0, 4), (5, 10), (11, 15), (15, 16)), (1, 1, 1, 1), ("nsubj", "ROOT", "dobj", "punct")),
          Parse(((0, 3), (4, 7), (8, 11), (12, 15), (16, 17), (18, 21), (22, 24), (25, 28), (29, 33), (33, 34)),
                (2, 2, 3, 3, 5, 3, 3, 8, 6, 3), ("det", "amod", "nsubj", "ROOT", "det", "dobj", "prep", "det", "pobj", "punct")),
          Parse(((0, 5), (6, 10), (10, 11)), (1, 1, 1), ("nsubj", "ROOT", "punct"))]
RANKING = DependencyRanking.from_counts({"nsubj": 5, "det": 4, "dobj": 2, "prep": 1, "pobj": 1, "amod": 1}, 2)


class Layers:
    """Records how many layers each update holds; takes all at once unless told it may stream."""

    def __init__(self, per_layer: bool):
        self.per_layer = per_layer
        self.widths: list[int] = []

    def update(self, batch):
        self.widths.append(batch.token_attn.shape[1])


def _collectors(grid):
    tau = torch.full(grid, 0.2, dtype=torch.float64)
    return [MeanAttention(grid), Penalty(tau, RANKING, "dep2head"), AttentionStats(grid)]


DECODERS = ["llama", "qwen2", "gemma2", "phi3", "gpt2"]


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet", *DECODERS])
def test_streamed_scan_equals_the_all_layers_scan(family):
    tm = task_model(family) if family in DECODERS else tiny_model(family)
    grid = tm.grid
    items = calibration_items(tm, TEXTS, PARSES)
    streamed, probe = _collectors(grid), Layers(per_layer=True)
    scan(tm, items, [*streamed, probe], RANKING.index, batch_size=2)
    assert probe.widths == [1] * (2 * grid[0])  # two batches, one layer at a time
    whole, probe = _collectors(grid), Layers(per_layer=False)
    scan(tm, items, [*whole, probe], RANKING.index, batch_size=2)
    assert probe.widths == [grid[0]] * 2
    (m1, p1, a1), (m2, p2, a2) = streamed, whole
    assert m1.count == m2.count and torch.allclose(m1.sum, m2.sum) and torch.equal(m1.hist, m2.hist)
    assert torch.equal(p1.penalty, p2.penalty) and p1.n_arcs == p2.n_arcs and p1.top_count == p2.top_count
    assert torch.allclose(p1.top_sum, p2.top_sum)
    assert a1.rows == a2.rows and torch.allclose(a1.entropy_sum, a2.entropy_sum) and torch.allclose(a1.max_sum, a2.max_sum)
    assert float(p1.penalty.sum()) > 0 and float(m1.sum.sum()) > 0
