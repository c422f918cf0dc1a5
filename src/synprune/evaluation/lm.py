"""Scoring causal language models: perplexity on text, and zero-shot classification by label-word likelihood.

Perplexity is token-weighted: exp(total negative log-likelihood / predicted tokens). Two kinds, both reported
for language-modelling tasks (`ewt`, a .txt file):
- `perplexity` (per sentence): each text of the split read alone after the beginning-of-text token
  (`model.load.with_bos`), so its first word is predicted too;
- `window_perplexity` (token windows, how WikiText-2 figures are made): the split's texts joined with newlines,
  tokenized once and cut into non-overlapping windows of `Windowing.size` tokens, each window the start token
  followed by `size - 1` text tokens, so every text token is predicted exactly once, from the text before it in
  its window; at most the first `Windowing.limit` windows. `window_perplexity(model, tokenizer, text)` is the
  same figure for any model and text.

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
WINDOW_TOKENS = 1024  # tokens per forward pass of windows (4 windows of 256)
SENTENCE, WINDOW = "perplexity", "window_perplexity"  # the two metric names
KINDS = {SENTENCE: "per sentence: each text alone after the start token, token-weighted",
         WINDOW: "token windows: the texts joined with newlines, cut into non-overlapping windows of N tokens, "
                 "the start token first in each, token-weighted"}


@dataclass(frozen=True)
class Windowing:
    """Token-window perplexity's windows: `size` tokens each (the start token and size - 1 text tokens), at
    most the first `limit` of them (None: all)."""

    size: int = 256
    limit: int | None = None

    def __post_init__(self):
        if self.size < 2:
            raise SynpruneError(f"--ppl-window {self.size}: a window needs at least 2 tokens (the start token and one to predict)")
        if self.limit is not None and self.limit < 1:
            raise SynpruneError(f"--eval-windows {self.limit} must be at least 1 (or left out for every window)")

    def describe(self) -> str:
        return f"windows of {self.size} tokens, start token first" + (f", first {self.limit}" if self.limit else "")

    def to_json(self) -> dict:
        return {"size": self.size, "limit": self.limit}


def fit_window(size: int, max_positions: int | None) -> int:
    """The window size a model can read: `size`, or the model's position limit if smaller."""
    return min(size, max_positions) if max_positions else size


def start_id(tok) -> int:
    """The start token a (`with_bos`) tokenizer puts before every text."""
    ids = tok("a")["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    if len(ids) <= len(plain):
        raise SynpruneError("the tokenizer adds no start token; wrap it with synprune.model.load.with_bos")
    return ids[0]


def cut_windows(ids: Sequence[int], start: int, windowing: Windowing) -> list[list[int]]:
    """`ids` cut into consecutive, non-overlapping windows of size - 1 tokens (the last may be shorter), each
    after `start`; the first `windowing.limit` of them."""
    step = windowing.size - 1
    n = -(-len(ids) // step)
    if windowing.limit is not None:
        n = min(n, windowing.limit)
    return [[start, *ids[i * step:(i + 1) * step]] for i in range(n)]


def text_windows(tok, texts: Sequence[str], windowing: Windowing) -> list[list[int]]:
    """The windows of `texts` joined with newlines (one tokenization of the whole text)."""
    joined = "\n".join(t.strip() for t in texts if t.strip())
    ids = tok(joined, add_special_tokens=False, verbose=False)["input_ids"]
    if not ids:
        raise SynpruneError("no tokens to score: the evaluation texts are empty")
    return cut_windows(ids, start_id(tok), windowing)


def window_batches(windows: Sequence[Sequence[int]], pad: int) -> list[dict[str, torch.Tensor]]:
    """Windows in batches of about WINDOW_TOKENS tokens, right-padded (only the last window can be shorter)."""
    per = max(1, WINDOW_TOKENS // max(map(len, windows)))
    out = []
    for s in range(0, len(windows), per):
        chunk = windows[s:s + per]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, w in enumerate(chunk):
            ids[i, :len(w)] = torch.tensor(w)
            mask[i, :len(w)] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@torch.no_grad()
def window_perplexity(model: torch.nn.Module, tokenizer, text: str | Sequence[str], window: int = 256,
                      max_windows: int | None = None) -> dict:
    """Token-window perplexity of any causal LM on `text` (a string, or texts joined with newlines):
    non-overlapping windows of `window` tokens (fewer if the model's positions are fewer), the start token
    first in each (`with_bos`'s: the document separator where the vocabulary has one), at most `max_windows`.
    Returns {"perplexity", "nll", "tokens", "windows", "window"}; the same figure as `--task ewt`'s
    `window_perplexity` for the same texts and options."""
    from synprune.model.load import with_bos

    tok = with_bos(tokenizer)
    size = fit_window(window, getattr(getattr(model, "config", None), "max_position_embeddings", None))
    windowing = Windowing(size, max_windows)
    windows = text_windows(tok, [text] if isinstance(text, str) else list(text), windowing)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    nll, tokens = 0.0, 0
    for inputs in window_batches(windows, pad):
        value, n = token_nll(lm_logits(model, inputs), *(inputs[k].to(next(model.parameters()).device)
                                                          for k in ("input_ids", "attention_mask")))
        nll, tokens = nll + float(value), tokens + int(n)
    return {"perplexity": perplexity(nll, tokens), "nll": nll, "tokens": tokens, "windows": len(windows), "window": size}


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
