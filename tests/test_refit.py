"""`--repair refit` (ridge least-squares re-fit of the output projections) and `--method recon` (its per-layer
OBS selection under a budget), on the tiny decoders of every family."""
from __future__ import annotations

import copy

import pytest
import torch

from _tiny_models import padded_batch, tiny_model
from synprune.arch import adapters, attention_handles, ffn_handles
from synprune.errors import SynpruneError
from synprune.repair import Repair, fold, make_repair, repaired
from synprune.repair.refit import layerwise, obs_drop, recon_choose, ridge_fit, spd_inverse, spd_solve
from synprune.methods.recon import ReconOptions
from synprune.selection.budget import Budget, CostModel
from synprune.selection.budget import total_parameters
from synprune.selection.layerplan import LayerPlan, plan_for_budget

DECODERS = sorted(f for f, a in adapters().items() if a.causal)
HEADS = [(0, 1), (1, 0), (1, 3), (2, 2)]
NEURONS = [(l, i) for l in range(3) for i in range(l, 37, 3)]


def calibration(n: int = 8) -> list[dict]:
    return [padded_batch(s, batch=4, length=16) for s in range(n)]


def logits_error(model, heads, neurons, repair, probe) -> float:
    keep = probe["attention_mask"].bool()
    with torch.no_grad():
        dense = model(**probe).logits
        with repaired(model, heads, neurons, repair):
            out = model(**probe).logits
    return float(((out - dense)[keep] ** 2).mean())


@pytest.mark.parametrize("family", DECODERS)
def test_refit_lowers_every_sublayers_error_stays_finite_and_exports_as_masked(family):
    model = tiny_model(family, "lm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rep = make_repair("refit", model, calibration(), HEADS, NEURONS)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model is left as it was
    errors = [e for e in rep.weights.errors if "after" in e]
    assert errors and all(e["after"] <= e["before"] + 1e-12 for e in errors)
    assert any(e["after"] < 0.99 * e["before"] for e in errors)
    for store in (rep.weights.attn, rep.weights.ffn):
        assert all(bool(torch.isfinite(A).all()) for _, A in store.values())
    # folded into the weights and sliced, the model computes what the repaired masked model computes
    from synprune.model.remove import remove_units

    probe = padded_batch(99, batch=3, length=12)
    keep = probe["attention_mask"].bool()
    with torch.no_grad(), repaired(model, HEADS, NEURONS, rep):
        masked = model(**probe).logits
    small = copy.deepcopy(model)
    fold(small, rep)
    remove_units(small, HEADS, NEURONS)
    with torch.no_grad():
        exported = small(**probe).logits
    assert float((exported - masked)[keep].abs().max()) < 1e-4


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_refit_brings_the_pruned_model_closer_to_dense_than_no_repair(family):
    model = tiny_model(family, "lm")
    rep = make_repair("refit", model, calibration(16), HEADS, NEURONS)
    probe = padded_batch(99, batch=3, length=12)
    assert logits_error(model, HEADS, NEURONS, rep, probe) < logits_error(model, HEADS, NEURONS, None, probe)


@pytest.mark.parametrize("family", DECODERS)
def test_drift_cancelling_brings_the_calibration_logits_closer_to_dense_and_is_off_under_sandwich_norms(family):
    """With drift on, each re-fit also undoes the residual stream's error carried up from the layers below: the
    pruned model's logits on the calibration batches end closer to the dense model's. Families that normalise
    each sublayer's output (Gemma 2/3) cannot carry that correction: drift is switched off there, and says so."""
    from synprune.arch import get_adapter
    from synprune.repair.refit import RefitOptions

    model = tiny_model(family, "lm")
    batches = calibration(16)
    plain = make_repair("refit", model, batches, HEADS, NEURONS)
    _, _, refit = layerwise(model, batches, HEADS, NEURONS, options=RefitOptions(drift=True))
    notes = [s for s in refit.skipped if s.startswith("drift")]
    if get_adapter(model).sublayer_output_norm:
        assert notes and "off" in notes[0]
        return
    assert not notes
    drifted = Repair("refit", weights=refit)
    err = lambda rep: sum(logits_error(model, HEADS, NEURONS, rep, b) for b in batches)  # noqa: E731
    assert err(drifted) < err(plain)


def test_ridge_fit_recovers_exact_weights_and_falls_back_to_the_original_ones():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g, dtype=torch.float64)
    W_true = torch.randn(4, 6, generator=g, dtype=torch.float64)
    W_old = torch.randn(4, 6, generator=g, dtype=torch.float64)
    H, C = X.t() @ X, X.t() @ (X @ W_true.t())
    assert torch.allclose(ridge_fit(H, C, W_old, 1e-10), W_true, atol=1e-6)
    assert torch.allclose(ridge_fit(H, C, W_old, 1e8), W_old, atol=1e-5)


def test_spd_solve_and_inverse_agree_with_the_general_ones_and_fall_back_where_cholesky_fails():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(50, 5, generator=g, dtype=torch.float64)
    B = torch.randn(5, 3, generator=g, dtype=torch.float64)
    M = X.t() @ X + 0.1 * torch.eye(5, dtype=torch.float64)
    assert torch.allclose(spd_solve(M, B), torch.linalg.solve(M, B), atol=1e-10)
    assert torch.allclose(spd_inverse(M), torch.linalg.inv(M), atol=1e-10)
    indefinite = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64))  # no Cholesky factor
    assert torch.allclose(spd_solve(indefinite, B[:3]), torch.linalg.solve(indefinite, B[:3]))
    assert torch.allclose(spd_inverse(indefinite), torch.linalg.inv(indefinite))


def test_obs_drops_a_redundant_column_first_and_a_useless_group_before_a_useful_one():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(300, 4, generator=g, dtype=torch.float64)
    X = torch.cat([base, base[:, :1] + 1e-3 * torch.randn(300, 1, generator=g, dtype=torch.float64)], 1)  # col 4 ~ col 0
    W = torch.randn(3, 5, generator=g, dtype=torch.float64)
    H, C = X.t() @ X, X.t() @ (X @ W.t())
    first = obs_drop(H, C, W, [[i] for i in range(5)], 1, 1e-8)
    assert first[0] in (0, 4)
    # groups of two columns: the group whose weights are zero goes first
    W2 = W.clone()
    W2[:, 2:4] = 0
    H4, C4 = H[:4, :4], (X[:, :4]).t() @ (X[:, :4] @ W2[:, :4].t())
    assert obs_drop(H4, C4, W2[:, :4], [[0, 1], [2, 3]], 1, 1e-8) == [1]


@pytest.mark.parametrize("family", DECODERS)
def test_the_layerwise_walk_follows_its_plan_and_never_empties_a_layer(family):
    model = tiny_model(family, "lm")
    plan = LayerPlan([4, 2, 1], [5, 10, 0])
    heads, neurons, refit = layerwise(model, calibration(), plan=plan)
    per_layer = [sum(1 for l, _ in heads if l == layer) for layer in range(3)]
    assert per_layer == [3, 2, 1]  # layer 0 asked for all 4 heads: it keeps one
    assert [sum(1 for l, _ in neurons if l == layer) for layer in range(3)] == [5, 10, 0]
    assert not refit.skipped or all("held-out" in s for s in refit.skipped)


@pytest.mark.parametrize("keep", [0.9, 0.8, 0.7])
@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "phi3"])
def test_a_params_budget_plan_keeps_that_share_of_all_parameters_within_one_percent(family, keep):
    model = tiny_model(family, "lm")
    model.config.vocab_size  # noqa: B018 (embedding counted, never pruned)
    plan = plan_for_budget(model, Budget("params", keep), head_ratio=0.5)
    cost = CostModel.from_model(model)
    total = total_parameters(model)
    cut = plan.n_heads * cost.query_head_cost("params") + plan.n_neurons * cost.neuron_cost("params")
    assert (total - cut) / total <= keep + 1e-9
    assert (total - cut) / total >= keep - 0.01
    assert all(h < cost.n_heads for h in plan.heads)


def test_a_plan_that_would_cut_more_than_the_body_is_refused():
    model = tiny_model("llama", "lm")
    with pytest.raises(SynpruneError):
        plan_for_budget(model, Budget("params", 0.01))


def test_recon_gives_an_emptied_layer_a_head_back_and_pays_with_neurons():
    model = tiny_model("llama", "lm")
    heads = [(0, h) for h in range(4)] + [(1, 0)]
    scores = torch.arange(12, dtype=torch.float64).reshape(3, 4).numpy()
    got_heads, got_neurons, _ = recon_choose(model, calibration(), heads, [(0, 1), (2, 5)], ReconOptions(), scores)
    assert sorted(got_heads) == [(0, 0), (0, 1), (0, 2), (1, 0)]  # head (0, 3) scored highest: it stays
    assert sum(1 for l, _ in got_neurons if l == 0) > 1


def test_a_refit_repair_is_not_written_whole_into_result_json_and_export_from_it_is_refused():
    model = tiny_model("llama", "lm")
    rep = make_repair("refit", model, calibration(4), HEADS, NEURONS)
    record = rep.to_json()
    assert record["weights"] is None and record["kind"] == "refit"
    with pytest.raises(SynpruneError, match="--export"):
        Repair.from_json(record)


def test_recon_needs_a_cost_budget():
    from synprune.config import PruneConfig

    with pytest.raises(SynpruneError, match="budget"):
        PruneConfig(method="recon").resolved()
    with pytest.raises(SynpruneError, match="refit"):
        PruneConfig(method="recon", budget="params:0.9", repair="ls").resolved()


def test_recon_in_the_pipeline_meets_a_params_budget_within_one_percent_and_keeps_a_head_everywhere():
    from _tiny_lm import tiny_lm
    from synprune.run.prune import prune

    tm = tiny_lm(layers=3)
    result = prune(tm, task="ewt", method="recon", budget="params:0.995", calib_size=16, eval_size=10)
    budget = result.details["budget"]
    assert budget["met"] and 0.985 <= budget["params_kept"] <= 0.995 + 1e-9
    assert all(sum(1 for l, _ in result.pruned_heads if l == layer) < 4 for layer in range(3))
    assert result.details["repair"]["kind"] == "refit" and result.pruned_neurons
