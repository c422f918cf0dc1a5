"""One suite over every registered family (encoders and causal LMs): masking equals physical removal for query
heads, key/value groups and neurons, with padding and (decoders) with a KV cache; parameters fall by exactly
the removed slices; export and reload give the same model; adding a family needs only its adapter module."""
from __future__ import annotations

import copy

import pytest
import torch

from _tiny_models import ALL_FAMILIES, DECODERS, PRUNED, n_params, padded_batch, tiny_model
from synprune.arch import adapters, attention_handles, ffn_handles, get_adapter, head_grid, kv_grid
from synprune.selection.budget import CostModel
from synprune.export.checkpoint import export_pruned
from synprune.model.pruned import load_pruned
from synprune.model.masking import UnitMask
from synprune.model.remove import remove_units

# every neuron of layer 2, every third of layer 0
NEURONS = [(0, i) for i in range(0, 37, 3)] + [(2, i) for i in range(37)]


def build(family: str, seed: int = 0, attn: str = "eager") -> torch.nn.Module:
    return tiny_model(family, "lm" if get_adapter_of(family).causal else "base", seed=seed, attn=attn)


def get_adapter_of(family: str):
    return adapters()[family]


def norm_params_in_removed_blocks(model: torch.nn.Module, pruned: list[tuple[int, int]]) -> int:
    """Per-head-dimension q/k norms (Qwen3, Gemma 3) go with a whole attention block; the cost model does not
    count norms, so they are added here from the dense model's modules."""
    n_heads = head_grid(model)[1]
    whole = {l for l in {l for l, _ in pruned} if sum(1 for m, _ in pruned if m == l) == n_heads}
    total = 0
    for h in attention_handles(model):
        if h.layer in whole:
            total += sum(p.numel() for name, p in h.module.named_parameters() if "norm" in name)
    return total


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_masked_equals_sliced_heads_and_neurons(family):
    model = build(family)
    batch = padded_batch()
    with torch.no_grad():
        dense = model(**batch)[0]
        with UnitMask.pruning(model, PRUNED, NEURONS):
            ref = model(**batch)[0]
    small = copy.deepcopy(model)
    state = remove_units(small, PRUNED, NEURONS)
    with torch.no_grad():
        out = small(**batch)[0]
    assert (dense - ref).abs().max() > 1e-3  # the pruning changes the output, so equality below means something
    assert (out - ref).abs().max() < 1e-5
    # the removed slices, priced by the cost model from the config alone, are exactly the parameters that went
    expected = CostModel.from_model(model).saved(PRUNED, "params", neurons=NEURONS)
    assert n_params(model) - n_params(small) == expected + norm_params_in_removed_blocks(model, PRUNED)
    assert state["kept_heads"] == [[0, 2], [], [0, 1, 3]]
    assert state["removed_layers"] == [1]
    assert state["counts"]["neurons"] == 37 * 3 - len(NEURONS)
    assert state["kept_neurons"][1] is None and state["kept_neurons"][2] == []


@pytest.mark.parametrize("family", DECODERS)
def test_gqa_groups_go_with_their_last_query_head(family):
    model = build(family)
    if kv_grid(model)[1] == head_grid(model)[1]:
        pytest.skip("multi-head attention: one key/value head per query head")
    small = copy.deepcopy(model)
    state = remove_units(small, PRUNED)
    # 4 query heads in 2 groups (heads 0,1 -> group 0; 2,3 -> group 1): layer 0 keeps heads 0 and 2 -> both
    # groups; layer 2 keeps 0, 1, 3 -> both groups; pruning 2 and 3 of layer 0 as well empties group 1
    assert state["kept_kv_groups"] == [[0, 1], [], [0, 1]]
    state = remove_units(small, [(0, 2)])
    assert state["kept_kv_groups"][0] == [0] and state["kept_heads"][0] == [0]
    h = attention_handles(small)[0]
    assert h.num_heads == 1 and h.head_dim in h.out_proj.weight.shape  # one head's output columns
    if h.fused:  # [q | k | v] rows of one head and one group
        assert 3 * h.head_dim in h.q.weight.shape
    else:
        assert h.k.weight.shape[0] == h.v.weight.shape[0] == h.head_dim  # one group's k and v rows
    with torch.no_grad(), UnitMask.pruning(model, PRUNED + [(0, 2)]):
        ref = model(**padded_batch())[0]
    with torch.no_grad():
        assert (small(**padded_batch())[0] - ref).abs().max() < 1e-5


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_kv_cache_decoding_matches_masked_model(family, attn):
    """Greedy decoding token by token with a KV cache: the sliced model (uneven groups, a removed block in
    layer 1) gives the masked model's logits at every step."""
    try:
        model = build(family, attn=attn)
    except ValueError:
        pytest.skip(f"{family} has no {attn} attention in this transformers")
    small = copy.deepcopy(model)
    remove_units(small, PRUNED, NEURONS)
    ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), UnitMask.pruning(model, PRUNED, NEURONS):
        ref = model.generate(ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
    with torch.no_grad():
        got = small.generate(ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
    assert torch.equal(got.sequences, ref.sequences)
    for a, b in zip(got.logits, ref.logits):
        assert (a - b).abs().max() < 1e-4


def test_removed_first_block_keeps_cache_length():
    """transformers reads the cache length from layer 0: with layer 0's attention removed, positions must still
    advance (a wrong length would change the rotary positions of every later token)."""
    model = build("llama")
    first = [(0, h) for h in range(4)]
    small = copy.deepcopy(model)
    remove_units(small, first)
    ids = torch.randint(5, 100, (1, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = small(ids).logits[:, -1]
        prefix = small(ids[:, :-1], use_cache=True)
        step = small(ids[:, -1:], cache=prefix.past_key_values).logits[:, -1]
    assert (full - step).abs().max() < 1e-5


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_export_and_reload(family, tmp_path):
    model = build(family)
    batch = padded_batch()
    out = export_pruned(model, None, PRUNED, tmp_path / "small", neurons=NEURONS)
    loaded, _ = load_pruned(out)
    assert type(loaded) is type(model)
    with torch.no_grad(), UnitMask.pruning(model, PRUNED, NEURONS):
        ref = model(**batch)[0]
    with torch.no_grad():
        assert (loaded(**batch)[0] - ref).abs().max() < 1e-5
    assert [h.num_heads for h in attention_handles(loaded)] == [2, 3]
    assert [len(f.kept) for f in ffn_handles(loaded)] == [37 - 13, 37, 0]
    if get_adapter(model).causal:
        text = loaded.generate(batch["input_ids"][:1, :4], max_new_tokens=3, min_new_tokens=3, do_sample=False,
                                pad_token_id=0)
        assert text.shape == (1, 7)


def test_cost_model_by_hand_for_a_gqa_decoder():
    """Llama tiny (d=32, dh=8, 4 query heads in 2 groups, 37 neurons, biases on): a query head is q rows
    32*8 + 8 bias and o columns 8*32 = 520 parameters; a group k and v rows 2*(32*8 + 8) = 528; a neuron
    gate, up rows with biases and a down column 3*32 + 2 = 98."""
    c = CostModel.from_model(adapters()["llama"].tiny_config())
    assert (c.query_head_cost("params"), c.kv_group_cost("params"), c.neuron_cost("params")) == (520, 528, 98)
    # pruning heads 0 and 1 empties group 0: 2 heads + 1 group
    assert c.saved([(0, 0), (0, 1)], "params") == 2 * 520 + 528
    assert c.saved([(0, 0), (0, 2)], "params") == 2 * 520
    # at n = 10 tokens a query head costs 2*10*32*8 + 2*100*8 MACs, a group 2*10*32*8
    assert (c.query_head_cost("flops", 10), c.kv_group_cost("flops", 10)) == (6720, 5120)


def test_every_family_declares_what_it_is():
    for name, a in adapters().items():
        cfg = a.tiny_config()
        assert get_adapter(cfg) is a, name
        assert a.task_kinds == (("lm",) if a.causal else ("embedding", "classifier"))


def test_kv_group_units_select_whole_groups():
    from synprune.arch import removed_kv_groups
    from synprune.selection.select import group_order, select

    # 2 layers x 4 heads in groups of 2; group (0, 1) = heads 2, 3 has mean position 1.5, group (1, 0) 2.5
    order = [(0, 2), (1, 0), (0, 3), (1, 1), (0, 0), (1, 3), (0, 1), (1, 2)]
    grouped = group_order(order, 2)
    assert grouped[:4] == [(0, 2), (0, 3), (1, 0), (1, 1)]
    chosen = select(grouped, (2, 4), 4).pruned
    assert chosen == [(0, 2), (0, 3), (1, 0), (1, 1)]
    model = build("llama")
    assert removed_kv_groups(model, chosen) == [[0, 1], [1, 0]]
    assert removed_kv_groups(model, [(0, 2), (1, 1)]) == []  # no group lost all its heads


def test_kv_groups_with_cf_is_refused():
    from synprune.config import PruneConfig
    from synprune.errors import SynpruneError

    with pytest.raises(SynpruneError, match="kv-groups"):
        PruneConfig(units="kv-groups", cf=True).validate()
    with pytest.raises(SynpruneError, match="--units"):
        PruneConfig(units="groups").validate()


@pytest.mark.integration
def test_real_smollm2_sliced_equals_masked_and_generates(smollm2, tmp_path):
    """SmolLM2-135M (Llama, 30 layers x 9 query heads in 3 key/value groups): uneven groups, an emptied layer
    and halved neurons; the exported model reloads as the same class and decodes the same tokens."""
    model, tok = smollm2
    heads = [(0, 1), (0, 4), (1, 0), (1, 1), (1, 2), (3, 8)] + [(5, h) for h in range(9)]
    neurons = [(2, i) for i in range(0, 1536, 2)]
    enc = tok(["The cat sat on the mat because", "Hello"], return_tensors="pt", padding=True)
    prompt = enc["input_ids"][:1]
    with torch.no_grad(), UnitMask.pruning(model, heads, neurons):
        ref = model(**enc).logits
        ref_tokens = model.generate(prompt, max_new_tokens=6, do_sample=False)
    out = export_pruned(model, tok, heads, tmp_path / "small", neurons=neurons)
    small, small_tok = load_pruned(out)
    assert type(small) is type(model)
    with torch.no_grad():
        assert (small(**enc).logits - ref).abs().max() < 1e-3 * (1 + ref.abs().max())
        assert small.generate(prompt, max_new_tokens=6, do_sample=False).tolist() == ref_tokens.tolist()
    assert removed_kv(small) == [(1, 0), (5, 0), (5, 1), (5, 2)]  # heads 0-2 of layer 1 = group 0; layer 5 whole
    assert small_tok is not None


def removed_kv(model) -> list[tuple[int, int]]:
    from synprune.model.remove import pruning_state

    state = pruning_state(model)
    return [(l, g) for l, kept in enumerate(state["kept_kv_groups"]) for g in range(3) if g not in kept]
