"""Exports that load without synprune: uniform layouts as standard checkpoints (plain from_pretrained), adaptive
ones through the shipped synprune_modeling.py (trust_remote_code=True), sentence-transformers without remote
code; and the uniform layout's search."""
import itertools
import json

import numpy as np
import pytest
import torch

from _isolated import outputs_without_synprune
from _tiny_models import ALL_FAMILIES, DECODERS, PRUNED, padded_batch, tiny_model
from synprune.arch import adapters
from synprune.errors import SynpruneError
from synprune.export.checkpoint import export_pruned
from synprune.model.pruned import load_pruned
from synprune.selection.budget import CostModel
from synprune.selection.uniform import uniform_search

UNEVEN_NEURONS = [(l, n) for l in range(3) for n in range(0, 37, l + 2)]  # a different count in every layer


def _uniform_units(family: str):
    """Heads 1 and 3 of every layer (one per key/value group with GQA) where the family's config can say so,
    and the same 10 neurons of every layer."""
    heads = [(l, h) for l in range(3) for h in (1, 3)] if adapters()[family].head_dim_in_config else []
    return heads, [(l, n) for l in range(3) for n in range(10)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Every family exported twice (uniform, adaptive), with the pruned model's own outputs on a padded batch."""
    root = tmp_path_factory.mktemp("exports")
    x = padded_batch()
    out = []
    for family in ALL_FAMILIES:
        model = tiny_model(family, "lm" if family in DECODERS else "base")
        for layout, (heads, neurons) in (("uniform", _uniform_units(family)), ("adaptive", (PRUNED, UNEVEN_NEURONS))):
            folder = export_pruned(model, None, heads, root / f"{family}-{layout}", neurons=neurons)
            info = json.loads((folder / "synprune_pruning.json").read_text())
            small, _ = load_pruned(folder)
            with torch.no_grad():
                reference = small(**x)[0]
            out.append(dict(family=family, layout=layout, dir=folder, info=info, reference=reference))
    results = outputs_without_synprune([{"dir": f["dir"], "auto": f["info"]["auto_class"],
                                         "remote": f["layout"] == "adaptive", "inputs": x} for f in out])
    return [dict(f, loaded=r) for f, r in zip(out, results)]


def test_every_family_loads_without_synprune_with_equal_outputs(folders):
    """Uniform: the family's own class from a standard config, no shipped code; adaptive: the shipped class with
    trust_remote_code. Both in a Python that cannot import synprune, both giving the pruned model's outputs."""
    assert {f["family"] for f in folders} == set(ALL_FAMILIES)
    for f in folders:
        got = f["loaded"]
        assert "error" not in got, (f["family"], f["layout"], got.get("error"))
        assert got["synprune_loaded"] is False
        assert torch.allclose(got["out"], f["reference"], atol=1e-5), (f["family"], f["layout"])
        shipped = (f["dir"] / "synprune_modeling.py").exists()
        if f["layout"] == "uniform":
            assert f["info"]["standard"] and not shipped and got["class"] == f["info"]["model_class"]
        else:
            assert not f["info"]["standard"] and shipped and got["class"] == "PrunedModel"


def test_a_standard_config_names_the_pruned_sizes(folders):
    for f in folders:
        if f["layout"] != "uniform":
            continue
        cfg = json.loads((f["dir"] / "config.json").read_text())
        adapter = adapters()[f["family"]]
        assert cfg[adapter.intermediate_config_attr] == 27 and "synprune_recipe" not in cfg and "auto_map" not in cfg
        if adapter.head_dim_in_config:  # 2 of 4 heads, one in each of the 2 key/value groups; head size kept
            assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (2, 2, 8)


def test_uniform_heads_in_an_encoder_fall_back_to_the_adaptive_folder(tmp_path):
    """A BERT config cannot say 'fewer heads of the same size': such a folder ships the loading code instead."""
    model = tiny_model("bert")
    folder = export_pruned(model, None, [(l, 0) for l in range(3)], tmp_path / "b")
    assert not json.loads((folder / "synprune_pruning.json").read_text())["standard"]
    assert (folder / "synprune_modeling.py").exists()
    with pytest.raises(SynpruneError, match="head size"):
        adapters()["bert"].standard_config(model.config, 3, 3, 37)


def _brute_force(hi, ni, cost, kind, budget):
    """The best uniform allocation by trying every (groups, heads per group, neurons)."""
    L, H = hi.shape
    G, gs, N = cost.kv, cost.group_size, ni.shape[1]
    best = -np.inf
    for g, m, n in itertools.product(range(1, G + 1), range(1, gs + 1), range(1, N + 1)):
        kept_cost = cost.total(kind) - cost.saved(
            [(l, h) for l in range(L) for h in range(H) if not (h // gs < g and h % gs < m)], kind,
            neurons=[(l, i) for l in range(L) for i in range(n, N)])
        if kept_cost > budget * (1 + 1e-12):
            continue
        groups = np.sort(-np.sort(-hi.reshape(L, G, gs), axis=2)[:, :, :m].sum(2), axis=1)[:, ::-1][:, :g].sum()
        best = max(best, groups + np.sort(ni, axis=1)[:, ::-1][:, :n].sum())
    return best


@pytest.mark.parametrize("n_heads,n_kv", [(4, 2), (6, 3), (4, 4), (3, 1)])
def test_uniform_search_finds_the_best_equal_allocation_within_the_budget(n_heads, n_kv):
    rng = np.random.default_rng(n_heads * 10 + n_kv)
    cost = CostModel(n_layers=3, n_heads=n_heads, hidden=16, head_dim=4, intermediate=9, n_kv=n_kv, n_up=2,
                     qkv_bias=False, out_bias=False, up_bias=False, down_bias=False)
    hi, ni = rng.random((3, n_heads)) * 3, rng.random((3, 9))
    for keep in (0.9, 0.6, 0.35):
        budget = keep * cost.total("params")
        c = uniform_search(hi, ni, cost, "params", budget)
        assert c.kept_importance == pytest.approx(_brute_force(hi, ni, cost, "params", budget))
        assert cost.total("params") - cost.saved(c.pruned_heads, "params", neurons=c.pruned_neurons) <= budget + 1e-9
        gs = n_heads // n_kv
        for layer in range(3):  # every layer alike: g whole groups of m heads each, n neurons
            kept = [h for h in range(n_heads) if (layer, h) not in c.pruned_heads]
            per_group = {g: sum(1 for h in kept if h // gs == g) for g in {h // gs for h in kept}}
            assert len(per_group) == c.groups and set(per_group.values()) == {c.heads_per_group}
            assert 9 - sum(1 for l, _ in c.pruned_neurons if l == layer) == c.neurons


def test_uniform_search_with_whole_groups_keeps_every_head_of_a_kept_group():
    cost = CostModel(n_layers=2, n_heads=6, hidden=24, head_dim=4, intermediate=10, n_kv=2)
    hi = np.array([[5, 0, 0, 4, 3, 0], [5, 0, 0, 4, 3, 0.0]])
    free = uniform_search(hi, None, cost, None, None, heads_target=2)  # one head in each group: 5 + 4 > 4 + 3
    assert (free.groups, free.heads_per_group) == (2, 1)
    assert free.pruned_heads == [(l, h) for l in range(2) for h in (1, 2, 4, 5)]
    whole = uniform_search(hi, None, cost, None, None, heads_target=3, whole_groups=True)  # group 1: 7 > 5
    assert (whole.groups, whole.heads_per_group) == (1, 3)
    assert whole.pruned_heads == [(l, h) for l in range(2) for h in (0, 1, 2)]


def test_uniform_search_with_fixed_heads_prunes_neurons_only():
    cost = CostModel(n_layers=2, n_heads=4, hidden=16, head_dim=4, intermediate=20)
    c = uniform_search(np.ones((2, 4)), np.random.default_rng(0).random((2, 20)), cost, "params",
                       0.8 * cost.total("params"), heads_fixed=True)
    assert c.pruned_heads == [] and 0 < c.neurons < 20
    with pytest.raises(SynpruneError, match="all heads"):
        uniform_search(np.ones((2, 4)), np.ones((2, 20)), cost, "params", 0.3 * cost.total("params"), heads_fixed=True)


TEXTS = [f"The {w} number {i} walked slowly across the wide yard." for i, w in enumerate(["dog", "cat", "man", "kid"] * 2)]


def test_uniform_layout_through_prune_meets_the_budget_and_exports_a_standard_llama(tmp_path):
    from _tiny_lm import tiny_lm
    from synprune.run.prune import prune

    f = tmp_path / "t.txt"
    f.write_text("\n".join(TEXTS * 3), encoding="utf-8")
    res = prune(tiny_lm(layers=3), None, str(f), method="magnitude", calib_size=8, batch_size=4, units="heads,neurons",
                budget="flops:0.6", layout="uniform", export=tmp_path / "small", out=tmp_path / "run")
    b = res.details["budget"]  # (flops: the tiny model's 49k-token embedding is 99% of its parameters)
    assert b["met"] and b["flops_kept"] <= 0.6 + 1e-9 and b["units"]["layout"] == "uniform"
    u = b["units"]["uniform"]
    assert len(res.pruned_heads) == 3 * (4 - u["heads_per_layer"]) and len(res.pruned_neurons) == 3 * (37 - u["neurons_per_layer"])
    assert json.loads((tmp_path / "run" / "result.json").read_text())["config"]["layout"] == "uniform"
    info = json.loads((tmp_path / "small" / "synprune_pruning.json").read_text())
    assert info["standard"] and len(set(info["heads_per_layer"])) == 1
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert plain.config.num_attention_heads == u["heads_per_layer"] and plain.config.intermediate_size == u["neurons_per_layer"]


def test_uniform_layout_refusals(glue_dir):
    from conftest import tiny_model as tiny_task_model
    from synprune.config import PruneConfig
    from synprune.run.prune import prune

    with pytest.raises(SynpruneError, match="all its heads"):
        prune(tiny_task_model("bert"), task="stsb", glue_dir=glue_dir, calib_size=6, method="magnitude", sparsity=0.5,
              layout="uniform")
    with pytest.raises(SynpruneError, match="CF"):
        PruneConfig(layout="uniform", cf=True).validate()
    with pytest.raises(SynpruneError, match="--layout"):
        PruneConfig(layout="even").validate()


@pytest.mark.integration
def test_sentence_transformers_loads_a_uniform_minilm_without_remote_code(tmp_path):
    """The bundled MiniLM with the same 512 neurons of each layer pruned: SentenceTransformer(DIR) with no remote
    code embeds like the masked model (mean pooling, normalised)."""
    st = pytest.importorskip("sentence_transformers")
    from transformers import AutoModel, AutoTokenizer

    from synprune.model.load import bundled_model_path
    from synprune.model.masking import UnitMask

    src = bundled_model_path()
    model = AutoModel.from_pretrained(src).eval()
    neurons = [(l, n) for l in range(6) for n in range(0, 1536, 3)]
    folder = export_pruned(model, AutoTokenizer.from_pretrained(src), [], tmp_path / "minilm", neurons=neurons)
    modules = json.loads((folder / "modules.json").read_text())
    assert "synprune" not in json.dumps(modules) and not (folder / "synprune_modeling.py").exists()
    texts = ["A man is playing a guitar.", "The weather is cold today, and it will snow tonight."]
    emb = st.SentenceTransformer(str(folder), device="cpu", trust_remote_code=False).encode(texts, convert_to_tensor=True)
    tok = AutoTokenizer.from_pretrained(src)
    enc = tok(texts, padding=True, return_tensors="pt")
    mask = torch.ones(6, 1536)
    for l, n in neurons:
        mask[l, n] = 0
    with torch.no_grad(), UnitMask(model, torch.ones(6, 12), mask):
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    cos = torch.nn.functional.cosine_similarity(emb.cpu(), expected)
    assert bool((cos >= 1 - 1e-5).all()), cos
