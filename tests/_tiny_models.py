"""Tiny random models of every supported family, built from configs (no downloads), for fast tests."""
from __future__ import annotations

import torch
import transformers as tf

from synprune.arch import adapters

# Tiny tensors: one thread avoids thread-pool overhead that dominates (~10 ms per op) on a shared 2-core box.
torch.set_num_threads(1)

SIZES = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37, vocab_size=100,
             max_position_embeddings=64)

FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet"]  # encoders
DECODERS = [name for name, a in adapters().items() if a.causal]
ALL_FAMILIES = FAMILIES + DECODERS

# A mix that covers a partly pruned layer, a layer pruned whole, a single head, and an untouched layer order.
# With 4 query heads in 2 key/value groups, layer 0 keeps one head per group (even) and layer 2 keeps two heads
# of group 0 and one of group 1 (uneven).
PRUNED = [(0, 1), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 2)]


def tiny_config(family: str) -> tf.PretrainedConfig:
    """The family adapter's own tiny config (3 layers, hidden 32, 4 query heads, 37 neurons)."""
    return adapters()[family].tiny_config()


def tiny_model(family: str, head: str = "base", seed: int = 0, attn: str = "eager") -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = tiny_config(family)
    auto = {"base": tf.AutoModel, "cls": tf.AutoModelForSequenceClassification, "mlm": tf.AutoModelForMaskedLM,
            "lm": tf.AutoModelForCausalLM}[head]
    model = auto.from_config(cfg, attn_implementation=attn)
    # Random biases too: zero-initialised biases would hide a dropped or misplaced bias.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.eval()


def padded_batch(seed: int = 1, batch: int = 3, length: int = 11) -> dict[str, torch.Tensor]:
    """Random ids with right padding of different lengths (some attention_mask zeros)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(1, batch):
        mask[i, length - 3 * i:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    return {"input_ids": ids, "attention_mask": mask}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def task_model(family: str, kind: str | None = None, seed: int = 0):
    """A tiny random `TaskModel` of any registered family with a real tokenizer (the vocabulary resized to it):
    an encoder with the bundled MiniLM tokenizer (`kind` "embedding", the default, or "classifier" with 3
    labels), a causal LM with SmolLM2's (`kind` "lm")."""
    from transformers import AutoTokenizer

    from synprune.model.load import TaskModel, bundled_model_path, with_bos

    adapter = adapters()[family]
    kind = kind or adapter.task_kinds[0]
    if adapter.causal:
        from _tiny_lm import smollm2_tokenizer

        tok = with_bos(smollm2_tokenizer())
    else:
        tok = AutoTokenizer.from_pretrained(bundled_model_path())
    cfg = tiny_config(family)
    cfg.vocab_size = len(tok)
    if kind == "classifier":
        cfg.num_labels = 3
    torch.manual_seed(seed)
    auto = {"embedding": tf.AutoModel, "classifier": tf.AutoModelForSequenceClassification, "lm": tf.AutoModelForCausalLM}[kind]
    model = auto.from_config(cfg, attn_implementation="eager").eval()
    return TaskModel(model, tok, kind, f"tiny-{family}", "", None)
