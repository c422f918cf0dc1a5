"""The attention scan streams one layer at a time, and every collector ends up where a whole-batch scan
(all layers' maps at once) leaves it."""
import numpy as np
import pytest
import torch

from synprune import attention as A
from synprune.calibration import Calibration
from synprune.config import PruneConfig
from synprune.explain import HeadProfile, RelationAccuracy, _MapCollector
from synprune.methods.attention_stats import AttentionStats
from synprune.methods.sap import MeanAttention, Penalty
from synprune.methods.sapx import ArcTable
from synprune.tasks import Example

from conftest import STSB_ROWS, tiny_model


class Shapes:
    """Records what each update holds."""

    def __init__(self):
        self.seen = []

    def update(self, batch):
        self.seen.append((batch.layers.start, batch.token_attn.shape[1], batch.word_attn.shape[1], batch.first, batch.last))


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
def test_streamed_scan_matches_a_whole_batch_scan(family, num_labels, monkeypatch):
    ctx = _ctx(family, num_labels)
    shapes = Shapes()
    streamed = _collectors(ctx)
    _scan(ctx, [*streamed.values(), shapes])
    L = ctx.tm.grid[0]
    assert A.attention_modules(ctx.tm.model) is not None
    per_batch = [shapes.seen[i:i + L] for i in range(0, len(shapes.seen), L)]
    assert len(per_batch) == len(ctx.scan_inputs) > 1
    for batch in per_batch:  # one layer per update, in order, flagged first and last
        assert batch == [(l, 1, 1, l == 0, l == L - 1) for l in range(L)]

    monkeypatch.setattr(A, "attention_modules", lambda model: None)
    whole_shapes = Shapes()
    whole = _collectors(ctx)
    _scan(ctx, [*whole.values(), whole_shapes])
    assert whole_shapes.seen == [(None, L, L, True, True)] * len(ctx.scan_inputs)
    a, b = _state(streamed), _state(whole)
    assert a.keys() == b.keys() and len(a) > 20
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert a["mean.count"] > 0 and a["penalty.n_arcs"] > 0 and a["arcs.items"] == len(ctx.items)


def test_streaming_keeps_one_layer_of_maps_alive():
    """The model's output carries only empty placeholders, so no layer's maps outlive its turn."""
    ctx = _ctx("bert")
    b = ctx.scan_inputs[0]
    kept = []
    with A._Streamer(A.attention_modules(ctx.tm.model), lambda layer, maps: kept.append(maps.shape)):
        out = ctx.tm.model(**b.model_inputs("cpu"), output_attentions=True)
    assert len(kept) == ctx.tm.grid[0] and all(len(s) == 4 for s in kept)
    assert all(a.numel() == 0 for a in out.attentions)
