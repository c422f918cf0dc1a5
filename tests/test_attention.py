"""The attention scan streams one layer at a time, and every collector ends up where a whole-batch scan
(all layers' maps at once) leaves it."""
import numpy as np
import pytest
import torch

from synprune.calibrate import attention as A
from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.explain.heads import HeadProfile, RelationAccuracy, _MapCollector
from synprune.calibrate.summary import AttentionStats, MeanAttention
from synprune.methods.sap import Penalty
from synprune.methods.sapx import ArcTable
from synprune.data.tasks import Example

from conftest import STSB_ROWS, tiny_model


class Shapes:
    """Records what each update holds; takes streamed layers only if `per_layer`."""

    def __init__(self, per_layer: bool):
        self.per_layer = per_layer
        self.seen = []

    def update(self, batch):
        start = None if batch.layers is None else batch.layers.start
        self.seen.append((start, batch.token_attn.shape[1], batch.word_attn.shape[1], batch.count_items, batch.last))


def _ctx(family: str, num_labels=None) -> Calibration:
    tm = tiny_model(family, num_labels)
    return Calibration(tm, [Example(a, b, s) for a, b, s in STSB_ROWS], PruneConfig(batch_size=3), ("pearson",))


def _collectors(ctx: Calibration) -> dict:
    grid = ctx.tm.grid
    labels = ctx.dependency_ranking(1, keep_punct=True).labels
    tau = torch.full(grid, 0.1, dtype=torch.float64) + torch.rand(grid, generator=torch.Generator().manual_seed(0)) / 5
    return {"mean": MeanAttention(grid), "penalty": Penalty(tau, ctx.dependency_ranking(2, True), "max"),
            "stats": AttentionStats(grid), "arcs": ArcTable(grid, labels), "relations": RelationAccuracy(grid, labels),
            "profile": HeadProfile(tau), "maps": _MapCollector([(0, 1), (2, 3), (1, 0)])}


def _state(collectors: dict) -> dict:
    out = {}
    for name, c in collectors.items():
        if name == "arcs":
            out.update({f"arcs.{k}": c.column(k) for k in ("label", "item", "dep2head1", "head2dep0", "hit_dep2head", "hit_head2dep")})
            out.update({f"arcs.sum{k}": v.numpy() for k, v in c.sums.items()})
            out.update({"arcs.pairs": np.array(list(c.pairs.values())), "arcs.items": np.array(c.items)})
        elif name == "maps":
            out.update({f"maps{i}": m for i, m in enumerate(c.maps.values())})
        else:
            out.update({f"{name}.{k}": (v.numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in vars(c).items()
                        if torch.is_tensor(v) or isinstance(v, (int, float))})
    return out


def _scan(ctx: Calibration, collectors) -> None:
    ctx.run_scan(list(collectors), keep_punct=True)


@pytest.mark.parametrize("family,num_labels", [("bert", None), ("distilbert", None), ("mpnet", None), ("roberta", 2)])
def test_streamed_scan_matches_a_whole_batch_scan(family, num_labels):
    """Every collector synprune has takes streamed layers: the per-arc tables (sapx, explain) and the sentence
    maps end up as after a scan that hands them all layers at once (forced by a collector that cannot stream)."""
    ctx = _ctx(family, num_labels)
    shapes = Shapes(per_layer=True)
    streamed = _collectors(ctx)
    assert all(getattr(c, "per_layer", False) for c in streamed.values())
    _scan(ctx, [*streamed.values(), shapes])
    L = ctx.tm.grid[0]
    per_batch = [shapes.seen[i:i + L] for i in range(0, len(shapes.seen), L)]
    assert len(per_batch) == len(ctx.scan_inputs) > 1
    for batch in per_batch:  # one layer per update, in order, per-batch counts at the first, joins at the last
        assert batch == [(l, 1, 1, l == 0, l == L - 1) for l in range(L)]

    whole_shapes = Shapes(per_layer=False)
    whole = _collectors(ctx)
    _scan(ctx, [*whole.values(), whole_shapes])
    assert whole_shapes.seen == [(None, L, L, True, True)] * len(ctx.scan_inputs)
    a, b = _state(streamed), _state(whole)
    assert a.keys() == b.keys() and len(a) > 20
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert a["mean.count"] > 0 and a["penalty.n_arcs"] > 0 and a["arcs.items"] == len(ctx.items)


def test_scans_share_one_tokenization(monkeypatch):
    """Items are tokenized and aligned once per context: later scans, streamed or not, reuse that."""
    ctx = _ctx("bert")
    first = ctx.scan_inputs
    monkeypatch.setattr(A, "scan_batches", lambda *a, **k: pytest.fail("tokenized again"))
    streamed, whole = Shapes(per_layer=True), Shapes(per_layer=False)
    _scan(ctx, [streamed])
    _scan(ctx, [whole])
    assert ctx.scan_inputs is first and len(whole.seen) == len(first) and len(streamed.seen) == 3 * len(first)
