"""Tiny tokenizers trained in memory (no downloads, a vocabulary of a few hundred), for fast GGUF round trips:
a byte-level BPE (GPT-2 / SmolLM2 / Qwen style) and a BPE with byte fallback (sentencepiece style)."""
from __future__ import annotations

import functools

TEXT = ["The quick brown fox jumps over the lazy dog. " * 3, "Pruning removes attention heads and neurons from a model.",
        "llama.cpp runs GGUF files; transformers reads them back! 12345 67890",
        "Ünïcödé text: naïve café, 東京, emoji 🙂."] * 20
SAMPLES = ["Hello world, naïve café 12345!", "東京 🙂 <|im_end|> ß", "The quick brown fox", "pruned heads\nand neurons\t"]


@functools.cache
def byte_level_tokenizer(vocab: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   chat_template="{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")


@functools.cache
def byte_fallback_tokenizer(vocab: int = 400):
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=vocab + 256, special_tokens=specials,
                                                      show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def llama_cpp_config(family: str, tokenizer):
    """The family's tiny config (tests/_tiny_models) as llama.cpp's architecture has it: the tokenizer's
    vocabulary, no biases in Llama, no sliding window in Mistral."""
    from _tiny_models import tiny_config

    cfg = tiny_config(family)
    cfg.vocab_size = len(tokenizer)
    if family == "llama":
        cfg.attention_bias = cfg.mlp_bias = False
    if family == "mistral":
        cfg.sliding_window = None
    return cfg
