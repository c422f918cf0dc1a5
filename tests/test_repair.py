"""Kwon et al.'s search and rearrangement, the least-squares and bias repairs, and folding repairs into exports."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from _tiny_models import padded_batch, tiny_model
from synprune.arch import attention_handles, ffn_handles, get_adapter
from synprune.errors import SynpruneError
from synprune.export.checkpoint import export_pruned
from synprune.model.pruned import load_pruned
from synprune.repair import Repair, make_repair, repaired
from synprune.model.activations import Tap, pooled_rows
from synprune.repair.ls import LSOptions, _fit, least_squares
from synprune.selection.search import greedy_set, rearrange, search

HEADS = [(0, 1), (1, 0), (1, 2), (2, 3)]  # no layer loses every head
NEURONS = [(0, i) for i in range(0, 37, 3)] + [(2, i) for i in range(20)]


def _brute_force(hi, ni, ch, cn, budget):
    units = [("h", i, v) for i, v in enumerate(hi.ravel())] + [("n", i, v) for i, v in enumerate(ni.ravel())]
    best = -1.0
    for r in range(len(units) + 1):
        for keep in itertools.combinations(units, r):
            cost = sum(ch if u[0] == "h" else cn for u in keep)
            if cost <= budget + 1e-12:
                best = max(best, sum(u[2] for u in keep))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_search_finds_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    hi, ni = rng.random((2, 2)), rng.random((2, 3))
    for budget in (0.0, 2.5, 7.0, 9.0, 17.0):
        res = search(hi, ni, 3.0, 1.0, budget)
        kept_h = hi.size - len(res.heads)
        kept_n = ni.size - len(res.neurons)
        assert kept_h * 3.0 + kept_n * 1.0 <= budget + 1e-12
        value = hi.sum() - sum(hi[u] for u in res.heads) + ni.sum() - sum(ni[u] for u in res.neurons)
        assert value == pytest.approx(_brute_force(hi, ni, 3.0, 1.0, budget))
        assert value == pytest.approx(res.kept_importance)


def test_search_beats_the_greedy_ratio_rule_on_a_hand_made_case():
    """One head (cost 10, importance 9), ten neurons (cost 1, importance 0.95 each). Budget 10: the ten
    neurons (9.5) beat the head (9). Budget 11: the head and one neuron (9.95) beat the ten neurons (9.5),
    although the neurons are better per unit of cost (0.95 > 0.9), so a greedy ratio rule would miss it."""
    hi = np.array([[9.0]])
    ni = np.full((1, 10), 0.95)
    res = search(hi, ni, 10.0, 1.0, 10.0)
    assert res.heads == [(0, 0)] and res.neurons == [] and res.kept_importance == pytest.approx(9.5)
    res = search(hi, ni, 10.0, 1.0, 11.0)
    assert res.heads == [] and len(res.neurons) == 9 and res.kept_importance == pytest.approx(9.95)


def test_rearrangement_prunes_units_whose_gradients_cancel():
    # per-batch gradients (units x batches): a and b each matter alone, but pruning both changes nothing
    g = np.array([[2.0, 0.0], [-2.0, 0.0], [1.0, 1.0], [3.0, 3.0]])
    assert greedy_set(g, 2) == [0, 1]
    grads = g.T[:, None, :]  # (batches, layers=1, units)
    assert rearrange([(0, 2), (0, 0)], grads) == [(0, 0), (0, 1)]


def _scaled_teacher(model, heads, neurons, hs, ns):
    """A copy of `model` whose kept units' outputs are multiplied by hs / ns and whose pruned units are gone:
    the masked model with scales hs / ns computes it exactly."""
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for h in attention_handles(teacher):
            s = hs[h.layer].clone()
            s[[q for l, q in heads if l == h.layer]] = 0
            h.out_proj.weight.mul_(s.repeat_interleave(h.head_dim)[None, :])
        for f in ffn_handles(teacher):
            s = ns[f.layer].clone()
            s[[n for l, n in neurons if l == f.layer]] = 0
            f.down.weight.mul_(s[None, :])
    return teacher


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_least_squares_recovers_known_scales_exactly(family):
    """In float64, so that float32 rounding of the teacher's scaled weights does not blur 'exactly'."""
    model = tiny_model(family, "lm" if get_adapter(tiny_model(family)).causal else "base").double()
    g = torch.Generator().manual_seed(3)
    hs = 0.5 + torch.rand(3, 4, generator=g, dtype=torch.float64)
    ns = 0.5 + torch.rand(3, 37, generator=g, dtype=torch.float64)
    teacher = _scaled_teacher(model, HEADS, NEURONS, hs, ns)
    inputs = [padded_batch(seed=s, batch=4, length=12) for s in range(3)]
    rep = least_squares(model, inputs, HEADS, NEURONS, teacher=teacher,
                        options=LSOptions(damp=0.0, first_attention=True, holdout=0))
    kept_h = torch.ones(3, 4, dtype=torch.bool)
    for u in HEADS:
        kept_h[u] = False
    kept_n = torch.ones(3, 37, dtype=torch.bool)
    for u in NEURONS:
        kept_n[u] = False
    assert torch.allclose(rep.head_scales[kept_h], hs[kept_h], atol=1e-6)
    assert torch.allclose(rep.neuron_scales[kept_n], ns[kept_n], atol=1e-6)
    assert (rep.head_scales[~kept_h] == 0).all() and (rep.neuron_scales[~kept_n] == 0).all()
    with torch.no_grad(), repaired(model, HEADS, NEURONS, rep):
        out = model(**inputs[0])[0]
    assert torch.allclose(out, teacher(**inputs[0])[0], atol=1e-4)


def test_least_squares_with_bias_recovers_known_scales_and_bias_vectors_exactly():
    model = tiny_model("bert").double()
    g = torch.Generator().manual_seed(5)
    hs = 0.5 + torch.rand(3, 4, generator=g, dtype=torch.float64)
    ns = 0.5 + torch.rand(3, 37, generator=g, dtype=torch.float64)
    teacher = _scaled_teacher(model, HEADS, NEURONS, hs, ns)
    shift = {}
    with torch.no_grad():
        for h in attention_handles(teacher):
            shift["attn", h.layer] = torch.randn(h.out_proj.bias.shape, generator=g, dtype=torch.float64)
            h.out_proj.bias.add_(shift["attn", h.layer])
        for f in ffn_handles(teacher):
            shift["ffn", f.layer] = torch.randn(f.down.bias.shape, generator=g, dtype=torch.float64)
            f.down.bias.add_(shift["ffn", f.layer])
    inputs = [padded_batch(seed=s, batch=4, length=12) for s in range(3)]
    rep = least_squares(model, inputs, HEADS, NEURONS, teacher=teacher,
                        options=LSOptions(damp=0.0, first_attention=True, holdout=0, bias=True))
    kept = rep.neuron_scales != 0
    assert torch.allclose(rep.neuron_scales[kept], ns[kept], atol=1e-6)
    kept = rep.head_scales != 0
    assert torch.allclose(rep.head_scales[kept], hs[kept], atol=1e-6)
    for l in range(3):
        assert torch.allclose(rep.attn_bias[l], shift["attn", l], atol=1e-6)
        assert torch.allclose(rep.ffn_bias[l], shift["ffn", l], atol=1e-6)


def test_least_squares_repair_brings_a_pruned_model_closer_to_dense():
    model = tiny_model("bert")
    inputs = [padded_batch(seed=s, batch=4, length=12) for s in range(3)]
    with torch.no_grad():
        dense = model(**inputs[0])[0]
        with repaired(model, HEADS, NEURONS):
            plain = model(**inputs[0])[0]
        for kind in ("ls", "bias", "ls+bias"):
            rep = make_repair(kind, model, inputs, HEADS, NEURONS)
            with repaired(model, HEADS, NEURONS, rep):
                fixed = model(**inputs[0])[0]
            assert (fixed - dense).pow(2).mean() < (plain - dense).pow(2).mean(), kind


def test_pooled_rows_are_each_sequences_first_and_last_real_token():
    keep = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)  # right, left, no padding
    assert pooled_rows(keep, (3, 4), "first").tolist() == [0, 1, 0]
    assert pooled_rows(keep, (3, 4), "last").tolist() == [2, 3, 3]
    x = torch.arange(24.0).reshape(3, 4, 2)
    tap = Tap({}, None, pooled="last")
    tap.keep = keep
    assert tap.tokens(x).tolist() == [x[0, 2].tolist(), x[1, 3].tolist(), x[2, 3].tolist()]


def _moments(xtx, xty):
    return {"xtx": xtx, "xty": xty, "sx": torch.zeros(2, dtype=torch.float64), "sy": torch.zeros(2, dtype=torch.float64),
            "n": 4}


def test_a_solve_that_does_not_lower_held_out_error_is_rejected():
    """W = I and X^T X = I make G = I and r = diag(X^T Y). Fitted without the held-out part, m = 2 makes the
    fit part exact, but the held-out part wants 1 (its error at 2 is higher than unrepaired): rejected. When
    the held-out part agrees, the refit on all is used."""
    eye = torch.eye(2, dtype=torch.float64)
    now, opts = torch.ones(2, dtype=torch.float64), LSOptions(damp=0.0)
    stats = {"fit": _moments(eye, 2 * eye), "check": _moments(eye, eye)}
    assert "held-out" in _fit(stats, eye, 1, now, opts, True)
    stats["check"] = _moments(eye, 2 * eye)
    m, beta = _fit(stats, eye, 1, now, opts, True)
    assert torch.allclose(m, torch.full((2,), 2.0, dtype=torch.float64)) and beta is None
    stats = {"fit": _moments(eye, 20 * eye), "check": _moments(eye, 20 * eye)}
    assert "limit" in _fit(stats, eye, 1, now, opts, True)


def test_a_rejected_sublayer_keeps_its_scales_and_later_ones_are_still_repaired(monkeypatch):
    """Layer 1's attention solve (the second: layer 0's attention is not tuned) is made to return an ill-posed
    scale; the teacher's layer-1 heads are unscaled, so leaving them at 1 is right and every later sublayer
    must still recover its known scales exactly."""
    from synprune.repair import ls

    model = tiny_model("bert").double()
    g = torch.Generator().manual_seed(0)
    hs = 0.5 + torch.rand(3, 4, generator=g, dtype=torch.float64)
    hs[:2] = 1.0
    ns = 0.5 + torch.rand(3, 37, generator=g, dtype=torch.float64)
    teacher = _scaled_teacher(model, HEADS, NEURONS, hs, ns)
    inputs = [padded_batch(seed=s, batch=4, length=12) for s in range(3)]
    calls = []
    real = ls.solve

    def first_fails(G, r, damp):
        calls.append(G.shape[0])
        return torch.full_like(r, 50.0) if len(calls) == 2 else real(G, r, damp)

    monkeypatch.setattr(ls, "solve", first_fails)
    rep = least_squares(model, inputs, HEADS, NEURONS, teacher=teacher, options=LSOptions(damp=0.0, holdout=0))
    assert rep.skipped == ["layer 1 attn: a scale of 50 (limit 10)"]
    assert rep.head_scales[1, 3] == 1 and rep.head_scales[0, 0] == 1  # rejected; layer 0's attention untuned
    assert torch.allclose(rep.head_scales[2, :3], hs[2, :3], atol=1e-6)
    kept = rep.neuron_scales != 0
    assert torch.allclose(rep.neuron_scales[kept], ns[kept], atol=1e-6)


def test_bias_compensation_matches_mean_contributions_on_a_constant_input():
    """With one example repeated, the mean of each pruned unit's input is its input: the compensated masked
    model then reproduces the dense one exactly on that example (whatever is pruned, short of whole blocks)."""
    model = tiny_model("bert")
    one = {k: v[:1].repeat(4, 1) for k, v in padded_batch(seed=5, batch=1, length=1).items()}
    rep = make_repair("bias", model, [one], HEADS, NEURONS)
    with torch.no_grad(), repaired(model, HEADS, NEURONS, rep):
        out = model(**one)[0]
    assert torch.allclose(out, model(**one)[0], atol=1e-5)


@pytest.mark.parametrize("labels,warned", [(2, True), (1, False)])
def test_bias_repair_on_a_classifier_points_to_ls(labels, warned, capsys, monkeypatch):
    """A classification head gets the measured warning; a regression head (STS-B, where bias helped) does not."""
    from synprune import progress

    monkeypatch.setitem(progress._state, "quiet", False)
    model = tiny_model("bert", "cls")
    model.config.num_labels = labels
    capsys.readouterr()
    make_repair("bias", model, [padded_batch(seed=2)], HEADS, NEURONS, pooled="first")
    assert ("--repair ls" in capsys.readouterr().err) == warned


def test_bias_compensation_at_the_pooled_token_reproduces_that_token():
    """Units pruned in the last layer only, one example repeated: compensated with the first token's means, the
    model's last hidden state at that token is the dense one exactly; with the all-token means (the default)
    it is not."""
    from synprune.repair.bias import bias_compensation

    model = tiny_model("bert")
    last = len(get_adapter(model).layers(model)) - 1
    one = {k: v[:1].repeat(4, 1) for k, v in padded_batch(seed=5, batch=1, length=9).items()}
    heads, neurons = [(last, 0), (last, 2)], [(last, i) for i in range(0, 36, 2)]
    with torch.no_grad():
        dense = model(**one)[0][:, 0]
    got = {}
    for name, layers in (("pooled", [last]), ("all tokens", [])):
        rep = bias_compensation(model, [one], heads, neurons, pooled="first", pooled_layers=layers)
        with torch.no_grad(), repaired(model, heads, neurons, rep):
            got[name] = model(**one)[0][:, 0]
    assert torch.allclose(got["pooled"], dense, atol=1e-5)
    assert not torch.allclose(got["all tokens"], dense, atol=1e-3)


@pytest.mark.parametrize("family,kind", [("bert", "ls"), ("bert", "bias"), ("bert", "ls+bias"), ("llama", "ls"), ("gpt2", "bias")])
def test_repaired_and_exported_equals_repaired_and_masked(family, kind, tmp_path):
    model = tiny_model(family, "lm" if get_adapter(tiny_model(family)).causal else "base")
    inputs = [padded_batch(seed=s, batch=4, length=12) for s in range(2)]
    heads = HEADS + [(1, 1), (1, 3)]  # layer 1 loses its whole block
    rep = make_repair(kind, model, inputs, heads, NEURONS)
    probe = padded_batch(seed=9)
    with torch.no_grad(), repaired(model, heads, NEURONS, rep):
        masked = model(**probe)[0]
    out = export_pruned(model, None, heads, tmp_path / "small", neurons=NEURONS, repair=rep)
    small, _ = load_pruned(out)
    with torch.no_grad():
        got = small(**probe)[0]
    assert torch.allclose(got, masked, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_bias_repair_refused_where_the_family_has_no_bias(tmp_path):
    model = tiny_model("mistral", "lm")
    rep = Repair("bias", ffn_bias={0: torch.ones(32)})
    with pytest.raises(SynpruneError, match="repair ls"):
        export_pruned(model, None, HEADS, tmp_path / "x", neurons=NEURONS, repair=rep)
    assert not (tmp_path / "x").exists()
