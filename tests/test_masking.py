import pytest
import torch

from synprune.arch import attention_handles, get_adapter, head_grid
from synprune.errors import SynpruneError
from synprune.model.masking import HeadMask

from conftest import FAMILIES, tiny_model


def _inputs():
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 2178, 6251, 2182, 2003, 2936, 102, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.mark.parametrize("family", FAMILIES)
def test_masking_nothing_changes_nothing_and_a_head_changes_output(family):
    tm = tiny_model(family)
    x = _inputs()
    with torch.no_grad():
        ref = tm.model(**x).last_hidden_state
        with HeadMask(tm.model):
            same = tm.model(**x).last_hidden_state
        with HeadMask.pruning(tm.model, [(1, 2)]):
            changed = tm.model(**x).last_hidden_state
        after = tm.model(**x).last_hidden_state
    assert torch.equal(ref, same)
    assert (ref - changed).abs().max() > 1e-4
    assert torch.equal(ref, after), "hooks must be removed on exit"


@pytest.mark.parametrize("family", FAMILIES)
def test_masking_a_head_equals_zeroing_its_value_rows(family):
    """Masking head h must be the same as zeroing h's slice of the value projection (its output is then 0)."""
    tm = tiny_model(family)
    x = _inputs()
    h = attention_handles(tm.model)[2]
    with torch.no_grad():
        with HeadMask.pruning(tm.model, [(2, 1)]):
            masked = tm.model(**x).last_hidden_state
        sl = slice(h.head_dim, 2 * h.head_dim)
        h.value.weight[sl] = 0
        h.value.bias[sl] = 0
        zeroed = tm.model(**x).last_hidden_state
    assert torch.allclose(masked, zeroed, atol=1e-6)


def test_mask_is_differentiable():
    tm = tiny_model("bert")
    mask = torch.ones(head_grid(tm.model), requires_grad=True)
    with HeadMask(tm.model, mask):
        tm.model(**_inputs()).last_hidden_state.pow(2).sum().backward()
    assert mask.grad is not None and mask.grad.shape == (3, 4) and mask.grad.abs().sum() > 0


def test_unknown_architecture_is_a_clear_error():
    from transformers import OPTConfig, OPTModel

    model = OPTModel(OPTConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=8, ffn_dim=16, word_embed_proj_dim=8, vocab_size=10))
    with pytest.raises(SynpruneError, match="no synprune adapter"):
        get_adapter(model)
