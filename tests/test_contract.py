"""One contract for every registered head method and neuron scorer, on a tiny model of every registered family
(encoders and causal LMs), driven by the registries: a new method, scorer or family is tested without being
listed here.

A method gives finite scores over the model's head grid and an order that is a permutation of every query head,
JSON-able details (they go into result.json), the same answer on a fresh context with the same seed, computes
only what it declares (`needs`: parses, an attention scan, gradients, a forward pass) and what it declares, gives
the same answer without labels unless it declares `labels` (and still runs without them when it does), ignores
the scoring options it does not list in `uses`, and selects heads, key/value groups and heads with neurons. A
neuron scorer gives finite, non-negative scores over the feed-forward grid, the same on a fresh context, and
the same without labels when it is label-free.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from _tiny_models import task_model
from synprune.arch import adapters
from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.data.tasks import Example
from synprune.io import to_jsonable
from synprune.methods import NEEDS, USES, available, get_method
from synprune.methods.neurons import LABEL_FREE, SCORERS
from synprune.model.masking import neuron_grid

from conftest import STSB_ROWS

METHODS = available()
FAMILIES = sorted(adapters())
ENCODER, DECODER = "bert", "llama"  # the checks that build fresh contexts run on one family of each kind
LM_TEXTS = [f"The {w} number {i} walked slowly across the wide yard." for i, w in enumerate(["dog", "cat", "man", "kid"])]
# a value away from the default for each scoring option some method reads (`uses`); the seed draws the sample
OTHER_VALUE = {"k": 2, "threshold": "layer-mean", "direction": "head2dep", "keep_punct": True}


def _examples(kind: str, labels: bool = True) -> list[Example]:
    if kind == "lm":
        return [Example(t) for t in LM_TEXTS]
    rows = STSB_ROWS[:4]
    return [Example(a, b, (s if kind == "embedding" else int(s) % 3) if labels else None) for a, b, s in rows]


def _context(family: str, labels: bool = True, kind: str | None = None, **options) -> Calibration:
    tm = task_model(family, kind)
    metric = {"lm": "perplexity", "embedding": "spearman", "classifier": "accuracy"}[tm.kind]
    return Calibration(tm, _examples(tm.kind, labels), PruneConfig(batch_size=4, **options), (metric,))


@functools.cache
def _shared(family: str) -> Calibration:
    """One context per family, shared by every method (parses, scans and gradients are memoized in it)."""
    return _context(family)


def _config(method: str, **options) -> PruneConfig:
    return PruneConfig(method=method, batch_size=4, **options)


def _run(method: str, ctx: Calibration, **options):
    return get_method(method)(ctx, _config(method, **options))


def _all_heads(grid) -> list[tuple[int, int]]:
    return [(l, h) for l in range(grid[0]) for h in range(grid[1])]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_method_orders_every_head_with_finite_scores(method, family):
    ctx = _shared(family)
    res = _run(method, ctx)
    assert res.scores.shape == ctx.tm.grid
    assert np.isfinite(res.scores).all()
    assert sorted(res.order) == _all_heads(ctx.tm.grid)
    json.dumps(to_jsonable(res.details))


@pytest.mark.parametrize("family", [ENCODER, DECODER])
@pytest.mark.parametrize("method", METHODS)
def test_method_gives_the_same_answer_on_a_fresh_context(method, family):
    first, second = _run(method, _context(family), seed=3), _run(method, _context(family), seed=3)
    assert first.order == second.order
    np.testing.assert_array_equal(first.scores, second.scores)


# What a need makes the context compute: parses (cached), an attention scan, gradients, tokenized batches.
def _computed(ctx: Calibration) -> dict[str, bool]:
    return {"parser": "parses" in ctx.__dict__, "attention": "attention" in ctx.timings,
            "gradients": "gradients" in ctx.timings, "batches": "prepared" in ctx.__dict__}


@pytest.mark.parametrize("family", [ENCODER, DECODER])
@pytest.mark.parametrize("method", METHODS)
def test_method_computes_what_it_declares_and_nothing_else(method, family):
    ctx = _context(family)
    _run(method, ctx)
    needs = set(NEEDS[method])
    declared = {"parser": "parser" in needs, "attention": "attention" in needs, "gradients": "gradients" in needs,
                "batches": bool(needs & {"gradients", "activations", "labels"})}
    assert _computed(ctx) == declared


@pytest.mark.parametrize("kind", ["embedding", "classifier"])
@pytest.mark.parametrize("method", METHODS)
def test_method_without_labels(method, kind):
    """Label-free methods give the same answer without labels; those that use labels still run without them."""
    labelled = _run(method, _context(ENCODER, kind=kind))
    free = _run(method, _context(ENCODER, labels=False, kind=kind))
    assert sorted(free.order) == _all_heads((3, 4)) and np.isfinite(free.scores).all()
    if "labels" not in NEEDS[method]:
        assert free.order == labelled.order
        np.testing.assert_allclose(free.scores, labelled.scores, rtol=1e-9)
    else:
        assert labelled.details["loss"] == "task-loss" and free.details["loss"] == "output-fisher"


@pytest.mark.parametrize("method", METHODS)
def test_method_ignores_the_options_it_does_not_use(method):
    unused = {o: v for o, v in OTHER_VALUE.items() if o not in USES[method]}
    assert set(OTHER_VALUE) >= set().union(*USES.values()) - {"seed", "dependencies_from"}, "give the new option a value"
    base, other = _run(method, _context(ENCODER)), _run(method, _context(ENCODER), **unused)
    assert base.order == other.order
    np.testing.assert_array_equal(base.scores, other.scores)


def _valid_units(units, grid) -> bool:
    return len(set(units)) == len(units) and all(0 <= l < grid[0] and 0 <= i < grid[1] for l, i in units)


@pytest.mark.parametrize("family", [ENCODER, DECODER])
@pytest.mark.parametrize("method", METHODS)
def test_method_selects_heads_groups_and_neurons(method, family):
    from synprune.arch import group_size
    from synprune.run.prune import choose_heads

    ctx = _shared(family)
    grid, neurons = ctx.tm.grid, neuron_grid(ctx.tm.model)
    budget = {"budget": "flops:0.7"} if method in ("kwon", "recon") else {}  # both search under a cost budget
    heads = choose_heads(ctx, _config(method, sparsity=0.5, **budget))
    assert _valid_units(heads.selection.pruned, grid) and (heads.selection.pruned or budget)  # a search may keep every head
    both = choose_heads(ctx, _config(method, sparsity=0.5, units="heads,neurons", **budget))
    assert _valid_units(both.selection.pruned, grid) and _valid_units(both.selection.neurons, neurons)
    assert both.selection.neurons
    searched = choose_heads(ctx, _config(method, units="heads,neurons", budget="flops:0.7"))
    assert searched.budget["met"] and _valid_units(searched.selection.neurons, neurons)
    gs = group_size(ctx.tm.model)
    if gs > 1 and not budget:  # kwon always prunes heads with neurons
        groups = choose_heads(ctx, _config(method, sparsity=0.5, units="kv-groups")).selection.pruned
        assert _valid_units(groups, grid) and all(sum(1 for x in groups if x[0] == l and x[1] // gs == g) in (0, gs)
                                                  for l, g in {(l, h // gs) for l, h in groups})


def _neurons(scorer: str, ctx: Calibration):
    return SCORERS[scorer](ctx, PruneConfig(neuron_score=scorer, batch_size=4))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_neuron_scorer_gives_finite_non_negative_scores_over_the_grid(scorer, family):
    ctx = _shared(family)
    res = _neurons(scorer, ctx)
    assert res.kind == scorer and res.scores.shape == neuron_grid(ctx.tm.model)
    assert np.isfinite(res.scores).all() and (res.scores >= 0).all() and res.scores.any()
    json.dumps(to_jsonable(res.details))


@pytest.mark.parametrize("family", [ENCODER, DECODER])
@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_neuron_scorer_gives_the_same_answer_on_a_fresh_context(scorer, family):
    np.testing.assert_array_equal(_neurons(scorer, _context(family)).scores, _neurons(scorer, _context(family)).scores)


@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_neuron_scorer_without_labels(scorer):
    free = _neurons(scorer, _context(ENCODER, labels=False))
    assert np.isfinite(free.scores).all()
    if scorer in LABEL_FREE:
        np.testing.assert_allclose(free.scores, _neurons(scorer, _context(ENCODER)).scores, rtol=1e-9)
