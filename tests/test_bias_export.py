"""A bias repair on a family whose projections have no biases (Llama, Qwen3, Gemma) exports as an ordinary
checkpoint of that family: zero biases are switched on in the config, and the reloaded model gives the repaired
model's outputs."""
from __future__ import annotations

import pytest
import torch

from _tiny_models import padded_batch
from synprune.arch import adapters, attention_handles
from synprune.errors import SynpruneError
from synprune.export.checkpoint import export_pruned
from synprune.model.pruned import load_pruned
from synprune.repair import Repair, repaired

HEADS = [(0, 1), (1, 0), (1, 1), (1, 2), (1, 3), (2, 3)]  # layer 1 loses its whole block
NEURONS = [(0, i) for i in range(0, 37, 4)]


def bias_free_lm(family: str) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = adapters()[family].tiny_config()
    cfg.attention_bias = False
    if hasattr(cfg, "mlp_bias"):
        cfg.mlp_bias = False
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


@pytest.mark.parametrize("family,ffn", [("llama", True), ("qwen3", False), ("gemma", False), ("gemma2", False)])
def test_bias_repair_exports_where_the_config_can_switch_biases_on(family, ffn, tmp_path):
    model = bias_free_lm(family)
    assert all(h.out_proj.bias is None for h in attention_handles(model))
    g = torch.Generator().manual_seed(3)
    rep = Repair("bias", attn_bias={l: torch.randn(32, generator=g) for l in (0, 2)},
                 ffn_bias={0: torch.randn(32, generator=g)} if ffn else {})
    probe = padded_batch(seed=9)
    with torch.no_grad(), repaired(model, HEADS, NEURONS if ffn else [], rep):
        masked = model(**probe).logits
    with torch.no_grad():
        plain = model(**probe).logits
    assert not torch.allclose(masked, plain, atol=1e-3)  # the repair changes the outputs, so the check below can fail

    out = export_pruned(model, None, HEADS, tmp_path / "small", neurons=NEURONS if ffn else [], repair=rep)
    small, _ = load_pruned(out)
    assert type(small) is type(model) and small.config.attention_bias
    with torch.no_grad():
        got = small(**probe).logits
    assert torch.allclose(got, masked, atol=1e-5)
    assert model.config.attention_bias is False  # the user's model is untouched (export works on a copy)


def test_ffn_bias_refused_where_the_family_cannot_switch_it_on(tmp_path):
    model = bias_free_lm("gemma")
    rep = Repair("bias", ffn_bias={0: torch.ones(32)})
    with pytest.raises(SynpruneError, match="repair ls"):
        export_pruned(model, None, HEADS, tmp_path / "x", neurons=NEURONS, repair=rep)
    assert not (tmp_path / "x").exists()
