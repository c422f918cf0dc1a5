"""benchmarks/cf_speed.py's floor of an exact CF: the least layer runs a CF log's trials need, and the time of
their matrix products, which the README quotes against the naive CF."""
import importlib.util
from pathlib import Path

import numpy as np

from synprune.cf import filter as cf
from synprune.config import PruneConfig
from synprune.methods import order_by

from test_cf import _calibration, one_thread  # noqa: F401 (autouse: many tiny passes run faster on one thread)

spec = importlib.util.spec_from_file_location("cf_speed", Path(__file__).parents[1] / "benchmarks" / "cf_speed.py")
CS = importlib.util.module_from_spec(spec)
spec.loader.exec_module(CS)


def _entry(stage, heads, removed=False, metric=1.0):
    return {"stage": stage, "heads": [list(h) for h in heads], "metric": metric, "removed": removed}


def test_a_trial_starts_where_no_earlier_set_shares_its_input():
    """3 layers. After (2,1) is accepted, the walk tries (0,0): layer 2's input is the one the single of (0,0)
    computed (the same heads removed below layer 2), so only layer 2 must run, though the set differs from the
    accepted state from layer 0 up. A step equal to a single costs nothing."""
    ctx = _calibration("bert")
    calls = len(CS.call_masks(ctx.prepared))
    log = [_entry("single", [(0, 0)]), _entry("single", [(2, 1)]), _entry("single", [(1, 3)]),
           _entry("walk", [(2, 1)], removed=True),  # = the single of (2,1): known
           _entry("walk", [(0, 0)], removed=False),  # {(2,1),(0,0)}: from layer 2, on the single (0,0)'s states
           _entry("walk", [(1, 3)], removed=True),  # {(2,1),(1,3)}: from layer 2, on the single (1,3)'s states
           {"stage": "walk", "heads": [], "metric": None, "removed": False}]  # not tried: costs nothing
    runs, seconds = CS.exact_floor(ctx, log, calls, repeats=1)
    per_call = 3 + 1 + 2 + 0 + 1 + 1  # singles from layers 0, 2, 1; walk: known, from 2, from 2
    assert runs == calls * per_call
    assert seconds > 0


def test_floor_is_no_more_than_the_fast_cf_runs():
    ctx = _calibration("bert", seed=3)
    order = order_by(np.random.default_rng(0).random((3, 4)), highest_first=True)
    cfg = PruneConfig(sparsity=0.5, tolerance=1.0)  # some removals pass, some do not
    scorers = []

    class Counting(cf.AblationScorer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            scorers.append(self)

    original, cf.AblationScorer = cf.AblationScorer, Counting
    try:
        _, log = cf.candidate_filter(ctx, order, 6, cfg)
    finally:
        cf.AblationScorer = original
    fast = scorers[-1]
    calls = len(CS.call_masks(ctx.prepared))
    runs, _ = CS.exact_floor(ctx, log, calls, repeats=1)
    trials = [e for e in log if e["metric"] is not None]
    assert any(e["stage"] == "walk" and not e["removed"] for e in trials)  # a rejection: the state does not move
    # the dense pass is the fast scorer's first; every later layer run of it is one the floor counts or skips
    assert runs <= fast.layer_runs - calls * 3
    assert runs > 0
