"""Controlled attention: give chosen heads synthetic syntactic attention maps, with everything else fixed.

The SAP paper's third open check asks whether SAP's ranking responds to syntactic alignment when nothing
else about the attention changes. `controlled_attention` makes that experiment possible on a real model:
while it is active, each chosen head's attention row of a word that has a syntactic head is, with
probability p, replaced by a one-hot row on the first sub-token of that head word (so the word-level
attention dependent -> head is exactly 1); otherwise the row keeps the model's own attention
(`otherwise="original"`) or attends to the previous token (`otherwise="previous"`, a positional head).
The head's output is recomputed from the new map and its own values, so gradients, later layers and every
method see the manipulated head. Weights, inputs and every other head's computation are untouched.

Which rows are replaced is drawn once per word (a seeded uniform u per word: replaced iff u < p), so the
set of syntactic rows grows with p and runs at different p are coupled. Inputs are recognised by their
token ids, so every forward pass over the calibration texts (attention scans, gradient passes) sees the
same synthetic rows; other inputs run unchanged.
"""
from __future__ import annotations

import contextlib
import random
import sys
from typing import Collection, Iterator, Sequence

import numpy as np
import torch

from synprune.syntax import align as A
from synprune.arch import attention_handles
from synprune.calibrate.attention import CalibItem
from synprune.errors import SynpruneError

Head = tuple[int, int]
OTHERWISE = ("original", "previous")
Key = tuple[int, ...]


def syntactic_targets(tokenizer, items: Sequence[CalibItem], max_length: int = 128, seed: int = 0,
                      relations: Collection[str] | None = None) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """For each item, keyed by its token ids: the token each token's word's syntactic head starts at (-1: none,
    e.g. the root, special tokens, or a word whose relation is not in `relations` when given) and the word's
    uniform draw u (shared by the word's sub-tokens)."""
    rng = random.Random(seed)
    out: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
    for item in items:
        pair = item.text_b is not None
        enc = tokenizer([item.text_a], [item.text_b] if pair else None, truncation=True, max_length=max_length,
                        return_offsets_mapping=True, return_special_tokens_mask=True)
        al = A.align_batch(enc, [item.text_a], [item.parse_a.words], [item.text_b] if pair else None,
                           [item.parse_b.words] if pair else None)[0]
        word_head: list[int] = []
        for parse in (item.parse_a, item.parse_b):
            if parse is None:
                continue
            base = len(word_head)
            word_head += [-1 if (h < 0 or h == i or d == "ROOT" or (relations is not None and d not in relations)) else h + base
                          for i, (h, d) in enumerate(zip(parse.heads, parse.deps))]
        t2w = np.asarray(al.token_to_word)
        first = np.full(al.n_words, -1, dtype=np.int64)
        for t in range(len(t2w) - 1, -1, -1):
            if t2w[t] >= 0:
                first[t2w[t]] = t
        u_word = np.array([rng.random() for _ in range(al.n_words)])
        head_tok = np.full(len(t2w), -1, dtype=np.int64)
        u = np.ones(len(t2w))
        for t, w in enumerate(t2w):
            if w >= 0 and word_head[w] >= 0:
                head_tok[t] = first[word_head[w]]
                u[t] = u_word[w]
        out[tuple(int(i) for i in enc["input_ids"][0])] = (head_tok, u)
    return out


class _State:
    """The current batch's synthetic rows: head token per row and whether the row is replaced."""

    def __init__(self) -> None:
        self.head_tok: torch.Tensor | None = None  # (B, T) long, -1 = not replaced
        self.real: torch.Tensor | None = None  # (B, T) bool, real tokens of known inputs
        self.calls = 0


def _batch_rows(targets: dict[Key, tuple[np.ndarray, np.ndarray]], input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                p: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = input_ids.shape
    head_tok = torch.full((B, T), -1, dtype=torch.long)
    real = torch.zeros((B, T), dtype=torch.bool)
    mask = attention_mask.bool() if attention_mask is not None else torch.ones((B, T), dtype=torch.bool)
    for b in range(B):
        pos = torch.nonzero(mask[b]).flatten()
        hit = targets.get(tuple(int(i) for i in input_ids[b, pos].tolist()))
        if hit is None:
            continue
        ht, u = hit
        chosen = torch.as_tensor((u < p) & (ht >= 0))
        head_tok[b, pos] = torch.where(chosen, torch.as_tensor(ht), torch.tensor(-1))
        real[b, pos] = True
    return head_tok, real


def synthetic_rows(weights: torch.Tensor, head_tok: torch.Tensor, real: torch.Tensor, otherwise: str) -> torch.Tensor:
    """New (B, T, T) attention of one head from its own (B, T, T) rows: one-hot on head_tok where >= 0,
    else the original row or (otherwise='previous') a one-hot on the previous real token, for real rows."""
    B, T, _ = weights.shape
    new = weights.clone()
    if otherwise == "previous":
        prev = torch.clamp(torch.arange(T) - 1, min=0).expand(B, T)
        rows = real & (head_tok < 0)
        new[rows] = torch.nn.functional.one_hot(prev[rows], T).to(weights.dtype)
    rows = head_tok >= 0
    new[rows] = torch.nn.functional.one_hot(head_tok[rows], T).to(weights.dtype)
    return new


@contextlib.contextmanager
def controlled_attention(model: torch.nn.Module, targets: dict[Key, tuple[np.ndarray, np.ndarray]], heads: Sequence[Head],
                         p: float, otherwise: str = "original") -> Iterator[_State]:
    """While active, `heads` of `model` attend syntactically with probability p on the inputs in `targets`."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if not 0 <= p <= 1:
        raise SynpruneError(f"p = {p} is not a probability; use a value in [0, 1]")
    if otherwise not in OTHERWISE:
        raise SynpruneError(f"otherwise={otherwise!r}: use one of {', '.join(OTHERWISE)}")
    layer_of = {id(h.module): h.layer for h in attention_handles(model)}
    chosen: dict[int, list[int]] = {}
    for layer, head in heads:
        chosen.setdefault(layer, []).append(head)
    state = _State()

    def pre_hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            state.head_tok = state.real = None
            return
        state.head_tok, state.real = _batch_rows(targets, ids.cpu(), kwargs.get("attention_mask"), p)

    def attention(module, query, key, value, attention_mask, **kw):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        out, weights = eager(module, query, key, value, attention_mask, **kw)
        hs = chosen.get(layer_of.get(id(module), -1))
        if not hs or state.head_tok is None:
            return out, weights
        state.calls += 1
        if value.shape[1] != weights.shape[1]:  # grouped key/value heads: one value head serves several queries
            value = value.repeat_interleave(weights.shape[1] // value.shape[1], dim=1)
        device = weights.device
        head_tok, real = state.head_tok.to(device), state.real.to(device)
        weights = weights.clone()
        out = out.clone()
        for h in hs:
            new = synthetic_rows(weights[:, h], head_tok, real, otherwise)
            weights[:, h] = new
            out[:, :, h] = new @ value[:, h]
        return out, weights

    had = "eager" in ALL_ATTENTION_FUNCTIONS._local_mapping
    previous_fn = ALL_ATTENTION_FUNCTIONS._local_mapping.get("eager")
    previous_impl = getattr(model.config, "_attn_implementation", "eager")
    if previous_impl != "eager":
        model.set_attn_implementation("eager")
    ALL_ATTENTION_FUNCTIONS["eager"] = attention
    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()
        if had:
            ALL_ATTENTION_FUNCTIONS["eager"] = previous_fn
        else:
            del ALL_ATTENTION_FUNCTIONS["eager"]
        if previous_impl != "eager":
            model.set_attn_implementation(previous_impl)
