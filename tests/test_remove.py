"""Physical removal equals masking, on tiny random models of every supported family, with padding."""
from __future__ import annotations

import copy

import pytest
import torch

from _tiny_models import FAMILIES, PRUNED, n_params, padded_batch, tiny_model
from synprune.arch import attention_handles
from synprune.errors import SynpruneError
from synprune.export.checkpoint import export_pruned
from synprune.model.pruned import load_pruned
from synprune.model.masking import HeadMask
from synprune.model.remove import remove_heads

HIDDEN, HEAD_DIM = 32, 8


def expected_drop(pruned: list[tuple[int, int]], n_heads: int = 4) -> int:
    """Parameters removed, counted by hand: q, k, v rows with biases and out-projection columns per head,
    plus the out-projection bias of a layer that lost every head."""
    per_head = 3 * (HIDDEN * HEAD_DIM + HEAD_DIM) + HIDDEN * HEAD_DIM
    layers = {l for l, _ in pruned}
    whole = [l for l in layers if sum(1 for m, _ in pruned if m == l) == n_heads]
    return len(set(pruned)) * per_head + len(whole) * HIDDEN


def masked_output(model, pruned, batch):
    with torch.no_grad(), HeadMask.pruning(model, pruned):
        return model(**batch)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_removal_matches_mask_and_counts(family):
    model = tiny_model(family)
    batch = padded_batch()
    ref = masked_output(model, PRUNED, batch)
    with torch.no_grad():
        dense = model(**batch)[0]
    small = copy.deepcopy(model)
    state = remove_heads(small, PRUNED)
    with torch.no_grad():
        out = small(**batch)[0]
    assert (out - ref).abs().max() < 1e-5
    assert (dense - ref).abs().max() > 1e-2  # the pruning changes something, so the comparison means something
    assert n_params(model) - n_params(small) == expected_drop(PRUNED) == 7 * 1048 + 32
    assert (state["kept_heads"], state["removed_layers"]) == ([[0, 2], [], [0, 1, 3]], [1])
    assert state["kept_kv_groups"] == state["kept_heads"]  # one key/value head per query head
    assert state["counts"] == {"heads": 5, "kv_groups": 5, "neurons": 3 * 37}
    handles = attention_handles(small)
    assert [h.layer for h in handles] == [0, 2]
    assert [h.num_heads for h in handles] == [2, 3]
    assert [h.query.weight.shape[0] for h in handles] == [16, 24]
    assert [h.out_proj.weight.shape[1] for h in handles] == [16, 24]
    removed_block = getattr(small.base_model, "encoder", None) or small.base_model.transformer
    assert not any(isinstance(m, torch.nn.Linear) for m in removed_block.layer[1].attention.modules())


@pytest.mark.parametrize("family", ["bert", "mpnet", "distilbert"])
def test_two_steps_equal_one_and_mask_after_slicing(family):
    """Indices stay the original ones after slicing, so a later removal (or a mask) hits the right heads."""
    model = tiny_model(family)
    batch = padded_batch(seed=3)
    first, second = [(0, 1), (2, 2)], [(0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    ref = masked_output(model, PRUNED, batch)
    small = copy.deepcopy(model)
    remove_heads(small, first)
    assert (masked_output(small, second, batch) - ref).abs().max() < 1e-5
    state = remove_heads(small, second + first)  # already removed heads are ignored
    assert state["kept_heads"] == [[0, 2], [], [0, 1, 3]]
    with torch.no_grad():
        assert (small(**batch)[0] - ref).abs().max() < 1e-5
    assert n_params(model) - n_params(small) == expected_drop(PRUNED)


def test_sdpa_attention_too():
    model = tiny_model("bert", attn="sdpa")
    batch = padded_batch()
    small = copy.deepcopy(model)
    remove_heads(small, PRUNED)
    with torch.no_grad():
        assert (small(**batch)[0] - masked_output(model, PRUNED, batch)).abs().max() < 1e-5


def test_mpnet_keeps_the_shared_bias_table_whole():
    model = tiny_model("mpnet")
    remove_heads(model, PRUNED)
    assert model.encoder.relative_attention_bias.weight.shape == (32, 4)
    assert model.encoder.layer[0].attention.attn.synprune_kept_heads == [0, 2]


def test_fully_masked_layer_ignores_its_output_bias():
    """Masking a whole layer must equal removing its block, out-projection bias included."""
    model = tiny_model("bert")
    batch = padded_batch()
    whole = [(1, h) for h in range(4)]
    before = masked_output(model, whole, batch)
    with torch.no_grad():
        model.encoder.layer[1].attention.output.dense.bias.add_(torch.linspace(-3, 3, HIDDEN))  # not a constant: LayerNorm would cancel that
    assert (masked_output(model, whole, batch) - before).abs().max() == 0
    partly = [(1, 0), (1, 1)]
    b1 = masked_output(model, partly, batch)
    with torch.no_grad():
        model.encoder.layer[1].attention.output.dense.bias.add_(torch.linspace(-3, 3, HIDDEN))  # not a constant: LayerNorm would cancel that
    assert (masked_output(model, partly, batch) - b1).abs().max() > 1e-3  # a layer with heads keeps its bias


@pytest.mark.parametrize("family,head", [(f, "base") for f in FAMILIES] + [("bert", "cls"), ("distilbert", "cls"),
                                                                        ("roberta", "mlm")])
def test_export_reload_matches_mask(tmp_path, family, head):
    model = tiny_model(family, head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = padded_batch(seed=5)
    ref = masked_output(model, PRUNED, batch)
    out = export_pruned(model, None, PRUNED, tmp_path / "m")
    loaded, tokenizer = load_pruned(out, attn_implementation="eager")
    assert tokenizer is None
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert (loaded(**batch)[0] - ref).abs().max() < 1e-5
    assert n_params(model) - n_params(loaded) == expected_drop(PRUNED)
    after = model.state_dict()  # the given model was not touched: same tensors, same shapes, same values
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_bad_heads_are_one_line_errors():
    model = tiny_model("bert")
    for bad in ([(3, 0)], [(0, 4)], [(0,)], [("a", 1)]):
        with pytest.raises(SynpruneError) as e:
            remove_heads(model, bad)
        assert "\n" not in str(e.value)
