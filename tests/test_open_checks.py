"""The open-check benchmarks' own logic: run-level resume, CF onset, ranking similarity."""
import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))  # the benchmarks import their shared `_runs` helper by name
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def test_finished_runs_are_read_back_without_loading_anything(tmp_path):
    runs = _load("_runs")
    done = tmp_path / "sap_s0.5"
    done.mkdir()
    (done / "result.json").write_text(json.dumps({"method": "sap", "cf": False, "metric": {"pruned": 1.0}}))

    class Never(runs.TaskRuns):
        @property
        def context(self):
            raise AssertionError("a finished run must not load the task model")

    tr = Never("sst2")
    assert tr.result(done, runs.Deadline(None))["metric"]["pruned"] == 1.0
    assert tr.read == 1 and tr.ran == 0
    expired = runs.Deadline(0)
    expired.end -= 1  # already past
    assert tr.result(tmp_path / "other", expired) is None
    assert tr.skipped == [str(tmp_path / "other")]


def test_run_folders_name_method_sparsity_and_seed(tmp_path):
    deg = _load("degradation_curve")
    assert deg.folder(tmp_path, "cola", "sap", True, 0.3) == tmp_path / "cola" / "sap+cf_s0.3"
    assert deg.folder(tmp_path, "cola", "random", False, 0.9, seed=2) == tmp_path / "cola" / "random_s0.9_seed2"


def test_cf_onset_is_the_first_sparsity_beating_random_sd():
    deg = _load("degradation_curve")
    curves = {"sap": {0.1: [80.0], 0.2: [79.0], 0.3: [70.0], 0.4: [50.0]},
              "sap+cf": {0.1: [80.5], 0.2: [80.0], 0.3: [75.0], 0.4: [70.0]},
              "random": {0.1: [80.0, 81.0, 79.0], 0.2: [78.0, 79.0, 80.0], 0.3: [70.0, 71.0, 72.0], 0.4: [60.0, 50.0, 55.0]}}
    # sd is 1.0 at 0.1-0.3: the gains are 0.5, 1.0 (not more than sd), 5.0
    assert deg.cf_onset(curves, "sap") == 0.3
    assert deg.cf_onset(curves, "fisher") is None
    curves["sap+cf"][0.3] = [70.5]
    assert deg.cf_onset(curves, "sap") == 0.4  # gain 20 > sd 5


def test_degradation_table_lists_every_method_and_the_onset():
    deg = _load("degradation_curve")
    curve = {s: [90.0 - 10 * s] for s in deg.SPARSITIES}
    got = {"cola": {"_metric": {"name": "matthews", "dense": 26.66, "split": "dev"}, "sap": curve, "sap+cf": curve,
                    "random": {s: [1.0, 2.0] for s in deg.SPARSITIES}}}
    text = deg.markdown(got, ["cola"])
    assert "| cola (matthews) | sap | 26.7 |" in text and "|  | sap+cf |  | 89.0 |" in text
    assert "| cola | none up to 0.9 | not run |" in text  # equal curves: CF never helps; fisher+cf missing


def test_weight_correlation_of_rankings():
    tr = _load("dependency_transfer")
    a = [{"label": "det", "weight": 3}, {"label": "nsubj", "weight": 2}, {"label": "amod", "weight": 1}]
    b = [{"label": "det", "weight": 1}, {"label": "nsubj", "weight": 2}, {"label": "amod", "weight": 3}]
    c = [{"label": "det", "weight": 3}, {"label": "nsubj", "weight": 2}, {"label": "obj", "weight": 1}]
    corr = tr.weight_correlations({"a": a, "b": b, "c": c})
    assert corr[("a", "a")] == pytest.approx(1.0) and corr[("a", "b")] == pytest.approx(-1.0)
    assert 0 < corr[("a", "c")] < 1  # amod and obj each missing from one ranking: weight 0 there
    assert tr.jaccard([[0, 1], [1, 2]], [[1, 2], [2, 3]]) == pytest.approx(1 / 3)


def test_ranking_error_by_relations_served():
    """A method that orders the 'serve many' heads backwards and the others right has its error there only."""
    import numpy as np

    rd = _load("relation_diversity")
    served = np.array([[3.0, 3.0, 3.0, 3.0], [0.5, 0.5, 0.5, 0.5]])  # row 0 serves many
    drops = np.array([[1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4]])  # reference: row 1 first, then row 0 in order
    right = [(1, 0), (1, 1), (1, 2), (1, 3), (0, 0), (0, 1), (0, 2), (0, 3)]
    half_wrong = right[:4] + right[4:][::-1]
    res = rd.analyse(served, drops, {"right": right, "half": half_wrong})
    many, few = "serve many (> median)", "serve few (<= median)"
    assert res["methods"]["right"]["all"]["mean_error"] == 0.0
    assert res["methods"]["half"][few]["mean_error"] == 0.0 and res["methods"]["half"][many]["mean_error"] > 0
    assert res["methods"]["half"][many]["spearman"] == pytest.approx(-1.0)
    assert res["methods"]["half"]["error_vs_served"] > 0
