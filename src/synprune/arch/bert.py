"""BERT and the families that share its modules: RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA."""
from __future__ import annotations

from typing import Any

from torch import nn

from . import register
from .base import AttentionHandles, FFNHandles
from .encoders import EncoderAdapter, ResidualLayerNormAttention

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37, vocab_size=100,
            max_position_embeddings=64)


class BertLike(EncoderAdapter):
    heads_attrs = ("num_attention_heads",)
    head_size_attrs = ("all_head_size",)

    def __init__(self, family: str, model_types: tuple[str, ...], config_class: str, **tiny_extra: Any):
        self.family, self.model_types = family, model_types
        self._config_class, self._tiny_extra = config_class, tiny_extra

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.encoder.layer)

    def attention(self, i: int, layer: nn.Module) -> AttentionHandles:
        sa = layer.attention.self
        n = int(getattr(sa, "synprune_n_heads", sa.num_attention_heads))  # unpruned count, recorded on slicing
        return AttentionHandles(i, sa, sa.query, sa.key, sa.value, layer.attention.output.dense,
                                sa.attention_head_size, n, n, layer, "attention")

    def ffn(self, i: int, layer: nn.Module) -> FFNHandles:
        return FFNHandles.of(i, layer.intermediate, (layer.intermediate.dense,), layer.output.dense)

    def empty_attention(self, h: AttentionHandles) -> nn.Module:
        return ResidualLayerNormAttention(h.block_parent.attention.output.LayerNorm)

    def tiny_config(self) -> Any:
        import transformers

        return getattr(transformers, self._config_class)(**TINY, **self._tiny_extra)


register(BertLike("bert", ("bert",), "BertConfig"))
register(BertLike("roberta", ("roberta", "camembert"), "RobertaConfig", pad_token_id=1))
register(BertLike("xlm-roberta", ("xlm-roberta",), "XLMRobertaConfig", pad_token_id=1))
register(BertLike("electra", ("electra",), "ElectraConfig", embedding_size=24))
