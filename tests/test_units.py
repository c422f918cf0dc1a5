"""--units heads,neurons through prune(): neuron scores, the budgeted search, repairs, result.json, export."""
import json

import numpy as np
import pytest
import torch

from conftest import tiny_model
from synprune.selection.budget import CostModel
from synprune.errors import SynpruneError
from synprune.evaluation.evaluate import prepare
from synprune.model.pruned import load_pruned
from synprune.model.masking import UnitMask
from synprune.methods.gradient import TASK_LOSS, mask_gradients
from synprune.run.prune import prune


def test_neuron_mask_gradient_matches_a_finite_difference():
    tm = tiny_model("bert")
    tm.model.double()  # a float32 difference quotient is mostly rounding
    from synprune.data.tasks import Example

    ex = [Example("a cat sat on the mat", "a dog sat", 3.0), Example("hello there", "hi", 1.0)]
    batch = prepare(tm, ex, batch_size=2).batches[0]
    _, ng = mask_gradients(tm, [batch], torch.ones(tm.grid), TASK_LOSS, neurons=True)
    from synprune.evaluation import evaluate as E

    def loss_at(eps):
        n = torch.ones(3, 37, dtype=torch.float64)
        n[1, 5] += eps
        with torch.no_grad(), UnitMask(tm.model, torch.ones(tm.grid), n):
            return float(E.loss(tm, batch))

    fd = (loss_at(1e-5) - loss_at(-1e-5)) / 2e-5
    assert ng[0, 1, 5] == pytest.approx(fd, rel=1e-4) and abs(fd) > 1e-8
    assert np.abs(ng).sum() > 0


@pytest.mark.parametrize("method", ["fisher", "output-fisher", "magnitude"])
def test_flops_budget_with_neurons_is_met_and_recorded(glue_dir, tmp_path, method):
    res = prune(tiny_model("bert"), task="stsb", glue_dir=glue_dir, calib_size=6, method=method, budget="flops:0.5",
                units="heads,neurons", out=tmp_path / "run")
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    b = data["details"]["budget"]
    assert b["met"] and b["flops_kept"] <= 0.5 + 1e-9
    assert data["n_neurons"] == 3 * 37 and data["n_neurons_pruned"] == len(data["pruned_neurons"]) > 0
    cost = CostModel.from_model(tiny_model("bert").model)
    n = b["mean_seq_len"]
    kept = cost.kept_fraction([tuple(h) for h in data["pruned_heads"]], "flops", n,
                              neurons=[tuple(u) for u in data["pruned_neurons"]])
    assert kept == pytest.approx(b["flops_kept"], abs=1e-6)
    # the search spends the budget: keeping one more neuron would break it
    assert kept > 0.5 - cost.neuron_cost("flops", n) / cost.total("flops", n) - 1e-9
    assert res.details["budget"]["units"]["neuron_score"] == {"fisher": "fisher", "output-fisher": "output-fisher",
                                                             "magnitude": "magnitude"}[method]


def test_sparsity_with_neurons_prunes_that_fraction_of_each(glue_dir):
    res = prune(tiny_model("bert"), task="stsb", sparsity=0.5, glue_dir=glue_dir, calib_size=6, method="magnitude",
                units="heads,neurons", neuron_score="wanda")
    assert len(res.pruned_heads) == 6 and len(res.pruned_neurons) == round(0.5 * 111)


def test_kwon_runs_the_whole_recipe_and_exports_an_ordinary_model(glue_dir, tmp_path):
    tm = tiny_model("bert")
    res = prune(tm, task="stsb", glue_dir=glue_dir, calib_size=6, method="kwon", budget="flops:0.6",
                export=tmp_path / "small")
    assert res.config["units"] == "heads,neurons" and res.config["repair"] == "ls" and res.config["neuron_score"] == "fisher"
    assert res.details["budget"]["units"]["rearranged"] is True
    assert res.details["repair"]["kind"] == "ls"
    small, _ = load_pruned(tmp_path / "small")
    info = json.loads((tmp_path / "small" / "synprune_pruning.json").read_text())
    assert info["pruned_neurons"] == len(res.pruned_neurons) and info["repair"]["kind"] == "ls"
    from synprune.repair import repaired

    inputs = tm.tokenizer(["a small test sentence", "two"], padding=True, return_tensors="pt")
    with torch.no_grad():
        got = small(**inputs)[0]
        with repaired(tm.model, res.pruned_heads, res.pruned_neurons, res.repair):
            want = tm.model(**inputs)[0]
    assert torch.allclose(got, want, atol=1e-5)


def test_repair_changes_the_pruned_metric_and_not_the_selection(glue_dir):
    kw = dict(task="stsb", glue_dir=glue_dir, calib_size=6, method="fisher", budget="flops:0.5", units="heads,neurons")
    plain = prune(tiny_model("bert"), **kw)
    fixed = prune(tiny_model("bert"), repair="ls", **kw)
    assert fixed.pruned_heads == plain.pruned_heads and fixed.pruned_neurons == plain.pruned_neurons
    pearson = [r.metric["all"]["pruned"]["dev"]["pearson"] for r in (plain, fixed)]  # ranks of 7 rows rarely move
    assert pearson[0] != pearson[1]
    assert fixed.metric["dense"] == plain.metric["dense"]


@pytest.mark.parametrize("options,match", [
    (dict(method="kwon"), "budget flops"),
    (dict(units="heads,neurons", budget="heads:0.5"), "heads only"),
    (dict(units="neurons"), "--units"),
    (dict(repair="retrain"), "--repair"),
    (dict(units="heads,neurons", neuron_score="taylor"), "--neuron-score"),
])
def test_bad_unit_options_are_refused(glue_dir, options, match):
    with pytest.raises(SynpruneError, match=match):
        prune(tiny_model("bert"), task="stsb", glue_dir=glue_dir, calib_size=4, **options)


def test_export_command_folds_the_recorded_repair(glue_dir, tmp_path):
    from typer.testing import CliRunner

    import synprune.commands.export  # noqa: F401  (registers the subcommand)
    from synprune.cli import app
    from synprune.export.checkpoint import export_pruned

    tm = tiny_model("bert")
    tm.model.save_pretrained(tmp_path / "dense")
    tm.tokenizer.save_pretrained(tmp_path / "dense")
    res = prune(tm, task="stsb", glue_dir=glue_dir, calib_size=6, method="fisher", budget="flops:0.5",
                units="heads,neurons", repair="ls", out=tmp_path / "run")
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    data["model"] = {"path": str(tmp_path / "dense")}
    (tmp_path / "run" / "result.json").write_text(json.dumps(data))
    out = CliRunner().invoke(app, ["export", str(tmp_path / "run" / "result.json"), "--out", str(tmp_path / "cli")])
    assert out.exit_code == 0, out.output
    export_pruned(tm.model, tm.tokenizer, res.pruned_heads, tmp_path / "api", neurons=res.pruned_neurons, repair=res.repair)
    a, _ = load_pruned(tmp_path / "cli")
    b, _ = load_pruned(tmp_path / "api")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


def test_cf_with_neurons_walks_heads_with_the_neurons_pruned(glue_dir, monkeypatch):
    """CF re-chooses as many heads as the search pruned, with the searched neurons as its background."""
    from synprune.cf import filter as cf_mod

    seen = {}
    real = cf_mod.candidate_filter

    def spy(ctx, order, n, cfg, fast=True, background=()):
        seen["n"], seen["background"] = n, background
        return real(ctx, order, n, cfg, fast, background)

    monkeypatch.setattr(cf_mod, "candidate_filter", spy)
    kw = dict(task="stsb", glue_dir=glue_dir, calib_size=6, method="fisher", budget="flops:0.5", units="heads,neurons")
    plain = prune(tiny_model("bert"), **kw)
    walked = prune(tiny_model("bert"), cf=True, **kw)
    assert seen["n"] == len(plain.pruned_heads) == len(walked.pruned_heads)
    assert list(seen["background"]) == plain.pruned_neurons == walked.pruned_neurons
    assert walked.cf_log and walked.details["budget"]["met"]


def test_a_written_result_reads_back_with_its_neurons_and_repair(glue_dir, tmp_path):
    from synprune.repair import repaired
    from synprune.run.result import PruneResult

    tm = tiny_model("bert")
    res = prune(tm, task="stsb", glue_dir=glue_dir, calib_size=6, method="kwon", budget="flops:0.6", out=tmp_path / "run")
    back = PruneResult.read(tmp_path / "run")
    assert back.pruned_neurons == res.pruned_neurons and back.n_neurons == res.n_neurons
    inputs = tm.tokenizer(["a short one"], return_tensors="pt")
    with torch.no_grad():
        with repaired(tm.model, res.pruned_heads, res.pruned_neurons, res.repair):
            a = tm.model(**inputs)[0]
        with repaired(tm.model, back.pruned_heads, back.pruned_neurons, back.repair):
            b = tm.model(**inputs)[0]
    assert torch.equal(a, b)
