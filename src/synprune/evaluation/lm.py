"""Scoring causal language models: perplexity on text, and zero-shot classification by label-word likelihood.

Perplexity is token-weighted: exp(total negative log-likelihood / predicted tokens) over a whole split, each
text read after the beginning-of-text token (`models.with_bos`), so its first word is predicted too.

Zero-shot classification (Brown et al. 2020 style): each example is written into the task's prompt, and the
predicted label is the one whose label word (e.g. " positive") the model finds most likely after it, summing
the log-probabilities of the word's tokens. Its training signal (for gradient methods) is the cross-entropy
over those label scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from synprune.devices import input_device
from synprune.errors import SynpruneError

LM_BATCH = 8  # texts per forward pass: the logits are batch x tokens x vocabulary floats


@dataclass(frozen=True)
class Prompt:
    """How a causal LM reads a classification task: `template` with {a} (and {b}), one label word per label."""

    template: str
    words: tuple[str, ...]

    def text(self, a: str, b: str | None = None) -> str:
        return self.template.format(a=a.strip(), b=(b or "").strip())


PROMPTS: dict[str, Prompt] = {
    "sst2": Prompt("Review: {a}\nSentiment (positive or negative):", (" negative", " positive")),
}


def prompt_for(task: str, num_labels: int) -> Prompt:
    """The zero-shot prompt of a classification task, or a clear refusal."""
    if task not in PROMPTS:
        raise SynpruneError(f"a causal LM is scored zero-shot only on {', '.join(PROMPTS)} or on text (perplexity: "
                            f"task ewt or a .txt file); task {task} has no prompt")
    prompt = PROMPTS[task]
    if len(prompt.words) != num_labels:
        raise SynpruneError(f"the {task} prompt has {len(prompt.words)} label words but the task has {num_labels} labels")
    return prompt


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed negative log-likelihood of every real next token, number of such tokens), differentiable."""
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return nll, (targets != -100).sum()


def choice_inputs(tok, texts: Sequence[str], words: Sequence[str]) -> list[dict[str, torch.Tensor]]:
    """Per label word: the prompts followed by that word, right-padded, with `word_mask` on the word's tokens."""
    prompts = tok(list(texts))["input_ids"]
    out = []
    for word in words:
        w = tok(word, add_special_tokens=False)["input_ids"]
        if not w:
            raise SynpruneError(f"label word {word!r} tokenizes to nothing")
        seqs = [p + w for p in prompts]
        width = max(map(len, seqs))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        word_mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
            word_mask[i, len(s) - len(w):len(s)] = True
        out.append({"input_ids": ids, "attention_mask": mask, "word_mask": word_mask})
    return out


def choice_scores(model: torch.nn.Module, choices: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """(batch, labels): summed log-probability of each label word after the prompt, differentiable."""
    device = input_device(model)
    scores = []
    for c in choices:
        ids, mask, word = (c[k].to(device) for k in ("input_ids", "attention_mask", "word_mask"))
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        scores.append((logp * word[:, 1:]).sum(-1))
    return torch.stack(scores, -1)


def lm_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    device = input_device(model)
    return model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).logits


def perplexity(nll: float, tokens: int) -> float:
    if tokens == 0:
        raise SynpruneError("no tokens to score: the evaluation texts are empty")
    return float(torch.exp(torch.tensor(nll / tokens, dtype=torch.float64)))
