"""Dense evaluations are cached on disk by content: a second command on the same model and split reuses them,
and any change to the weights, the examples or the labels computes them again."""
import torch

import synprune.run.prune as P
from synprune.evaluation.evalcache import cached_dense
from synprune.evaluation.evaluate import evaluate, prepare
from synprune.data.tasks import Example

from conftest import STSB_ROWS, tiny_model


def _prepared(tm, rows=STSB_ROWS):
    return {"validation": prepare(tm, [Example(a, b, s) for a, b, s in rows], batch_size=4)}


def _dense(tm, prepared, calls):
    def compute():
        calls.append(1)
        return {s: evaluate(tm, p, ["pearson"]) for s, p in prepared.items()}
    return cached_dense(tm, prepared, ["pearson"], compute)


def test_second_evaluation_comes_from_the_cache_and_changes_invalidate_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNPRUNE_CACHE", str(tmp_path / "cache"))
    tm, calls = tiny_model("bert"), []
    first, cached = _dense(tm, _prepared(tm), calls)
    assert not cached and len(calls) == 1
    again, cached = _dense(tiny_model("bert"), _prepared(tm), calls)  # a new model object with the same weights
    assert cached and again == first and len(calls) == 1

    rows = list(STSB_ROWS)
    rows[0] = (rows[0][0], rows[0][1], rows[0][2] - 1.0)  # one label changed
    _, cached = _dense(tm, _prepared(tm, rows), calls)
    assert not cached and len(calls) == 2

    with torch.no_grad():
        tm.model.encoder.layer[-1].output.dense.bias[0] += 0.5  # one weight changed
    changed, cached = _dense(tm, _prepared(tm), calls)
    assert not cached and len(calls) == 3 and changed != first


def test_a_second_prune_does_not_evaluate_the_dense_model_again(glue_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("SYNPRUNE_CACHE", str(tmp_path / "cache"))  # other tests evaluate the same model and rows
    dense_calls = []
    real = P.evaluate_heads
    monkeypatch.setattr(P, "evaluate_heads", lambda tm, prepared, names, pruned:
                        (dense_calls.append(1) if not list(pruned) else None) or real(tm, prepared, names, pruned))
    first = P.prune(tiny_model("bert"), task="stsb", sparsity=0.25, glue_dir=glue_dir, method="magnitude")
    second = P.prune(tiny_model("bert"), task="stsb", sparsity=0.5, glue_dir=glue_dir, method="magnitude")
    assert len(dense_calls) == 1
    assert not first.details["dense_cached"] and second.details["dense_cached"]
    assert second.metric["dense"] == first.metric["dense"]
