"""Align parser words with sub-word tokens, and pool sub-token attention into word-level attention.

SAP scores heads on dependency arcs between *words* (spaCy tokens), while the model attends over
*sub-word tokens*. The bridge is the fast tokenizer's character offsets: a sub-token belongs to the
word whose character span holds the sub-token's first non-space character (SPEC section 2). Looking
at the first non-space character, rather than the offset's start, makes the rule independent of
whether a tokenizer folds the leading space into the token's offsets (byte-level BPE with
`trim_offsets=False`, or a Metaspace prefix).

Word-level attention follows Clark et al. (2019): a word's row is the mean of its sub-tokens' rows
and the attention to a word is the sum over its sub-tokens' columns, i.e. W = R @ A @ C^T.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from synprune.errors import SynpruneError

Span = tuple[int, int]

# Every code point for which `str.isspace()` is true lies below U+3001 (checked in the tests), so this
# small table lets whole texts be tested at once with numpy instead of a Python loop per character.
_WHITESPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)


@dataclass(frozen=True)
class Alignment:
    """Sub-token to word map of one encoded example.

    Words of text A are numbered 0..nA-1 and words of text B nA..nA+nB-1. `dropped` lists the words
    no sub-token maps to: cut off by truncation, or made only of characters the tokenizer discards
    (e.g. zero-width or control characters for BERT). Callers must drop dependency pairs that touch
    them, since their word-level attention is zero.
    """

    token_to_word: np.ndarray  # (n_tokens,) int64, -1 = special token, padding, whitespace or no word
    n_words: int
    dropped: tuple[int, ...]


def _codepoints(text: str) -> np.ndarray:
    # Offsets of HF fast tokenizers count Python characters (code points), so index by code point.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _next_nonspace(text: str) -> np.ndarray:
    """nxt[i] = first index >= i whose character is not whitespace (len(text) if none); length n+1."""
    n = len(text)
    idx = np.arange(n + 1, dtype=np.int64)
    if n:
        idx[:n][np.isin(_codepoints(text), _WHITESPACE)] = n
    return np.minimum.accumulate(idx[::-1])[::-1]


def _spans_array(words: Sequence[Span], text: str, which: str) -> np.ndarray:
    """Validate word spans: inside the text, start <= end, sorted and non-overlapping."""
    spans = np.asarray(words, dtype=np.int64).reshape(-1, 2) if len(words) else np.zeros((0, 2), np.int64)
    if not len(spans):
        return spans
    starts, ends = spans[:, 0], spans[:, 1]
    if (starts < 0).any() or (ends > len(text)).any() or (ends < starts).any():
        raise SynpruneError(
            f"a word span of {which} lies outside its text (length {len(text)}); pass (start, end) character offsets into that same text"
        )
    if (starts[1:] < ends[:-1]).any():
        raise SynpruneError(f"word spans of {which} overlap or are out of order; pass spans sorted by position, as spaCy yields them")
    return spans


def _assign(text: str, spans: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Word index (within this text) of each token in `offsets`, -1 where none."""
    if not len(offsets):
        return np.zeros(0, dtype=np.int64)
    starts, ends = offsets[:, 0], offsets[:, 1]
    if (starts < 0).any() or (ends > len(text)).any():
        raise SynpruneError("token offsets run past the text; pass exactly the texts that were given to the tokenizer")
    first = _next_nonspace(text)[np.minimum(starts, len(text))]
    has_char = first < ends
    out = np.full(len(offsets), -1, dtype=np.int64)
    if not len(spans):
        return out
    k = np.searchsorted(spans[:, 0], first, side="right") - 1
    inside = has_char & (k >= 0) & (first < spans[np.maximum(k, 0), 1])
    out[inside] = k[inside]
    return out


def align(
    offsets: Any,
    sequence_ids: Sequence[int | None],
    special_mask: Any | None,
    text_a: str,
    words_a: Sequence[Span],
    text_b: str | None = None,
    words_b: Sequence[Span] | None = None,
) -> Alignment:
    """Map one encoded example's tokens to words.

    `offsets` is (n_tokens, 2) character offsets from a fast tokenizer, `sequence_ids` says per token
    whether its offsets refer to text A (0), text B (1) or nothing (None: special tokens, padding),
    and `special_mask` (optional) flags special tokens. `words_*` are (start, end) character spans.
    """
    if (text_b is None) != (words_b is None):
        raise SynpruneError("give both text_b and words_b for a text pair, or neither for a single text")
    off = np.asarray(offsets, dtype=np.int64)
    if off.size == 0:  # an empty sequence (no special tokens, empty text) has no (n, 2) shape to infer
        off = off.reshape(0, 2)
    if off.ndim != 2 or off.shape[1] != 2:
        raise SynpruneError(
            f"token offsets must have shape (n_tokens, 2), got {off.shape}; tokenize a list of texts with return_offsets_mapping=True"
        )
    n = len(off)
    seq = np.array([-1 if s is None else int(s) for s in sequence_ids], dtype=np.int64)
    if len(seq) != n:
        raise SynpruneError(f"{len(seq)} sequence ids for {n} tokens; pass the sequence ids of the same encoding")
    usable = seq >= 0
    if special_mask is not None:
        special = np.asarray(special_mask).astype(bool).reshape(-1)
        if len(special) != n:
            raise SynpruneError(f"special-token mask has {len(special)} entries for {n} tokens; pass the mask of the same encoding")
        usable &= ~special
    if text_b is None and (usable & (seq == 1)).any():
        raise SynpruneError("the encoding holds a text pair but only one text was given; pass text_b and words_b too")
    spans_a = _spans_array(words_a, text_a, "text A")
    parts = [(0, text_a, spans_a, 0)]
    n_words = len(spans_a)
    if text_b is not None:
        spans_b = _spans_array(words_b, text_b, "text B")  # type: ignore[arg-type]
        parts.append((1, text_b, spans_b, n_words))
        n_words += len(spans_b)
    token_to_word = np.full(n, -1, dtype=np.int64)
    for seq_id, text, spans, base in parts:
        sel = np.flatnonzero(usable & (seq == seq_id))
        local = _assign(text, spans, off[sel])
        token_to_word[sel] = np.where(local >= 0, local + base, -1)
    counts = np.bincount(token_to_word[token_to_word >= 0], minlength=n_words)
    dropped = tuple(int(w) for w in np.flatnonzero(counts == 0))
    return Alignment(token_to_word=token_to_word, n_words=n_words, dropped=dropped)


def _rows(x: Any, i: int) -> Any:
    row = x[i]
    return row.detach().cpu().numpy() if isinstance(row, torch.Tensor) else row


def align_batch(
    encoding: Any,
    texts_a: Sequence[str],
    words_a: Sequence[Sequence[Span]],
    texts_b: Sequence[str] | None = None,
    words_b: Sequence[Sequence[Span]] | None = None,
) -> list[Alignment]:
    """Align every example of a batch from `tokenizer(texts_a[, texts_b], return_offsets_mapping=True,
    return_special_tokens_mask=True, padding=True, truncation=True)` (a fast tokenizer, list inputs)."""
    if getattr(encoding, "encodings", None) is None:
        raise SynpruneError("word alignment needs a fast tokenizer's encoding; load the tokenizer with use_fast=True")
    if "offset_mapping" not in encoding:
        raise SynpruneError("the encoding has no character offsets; call the tokenizer with return_offsets_mapping=True")
    if isinstance(texts_a, str) or (texts_b is not None and isinstance(texts_b, str)):
        raise SynpruneError("pass lists of texts to align_batch, not a single string")
    if (texts_b is None) != (words_b is None):
        raise SynpruneError("give both texts_b and words_b for text pairs, or neither for single texts")
    n = len(encoding.encodings)
    sizes = [len(texts_a), len(words_a)] + ([len(texts_b), len(words_b)] if texts_b is not None else [])  # type: ignore[arg-type]
    if any(s != n for s in sizes):
        raise SynpruneError(
            f"the encoding has {n} examples but texts/words have {sizes}; pass the same texts that were tokenized (no overflowing tokens)"
        )
    special = encoding.get("special_tokens_mask")
    out = []
    for i in range(n):
        out.append(
            align(
                _rows(encoding["offset_mapping"], i),
                encoding.sequence_ids(i),
                None if special is None else _rows(special, i),
                texts_a[i],
                words_a[i],
                None if texts_b is None else texts_b[i],
                None if words_b is None else words_b[i],
            )
        )
    return out


def pooling_matrices(
    alignments: Sequence[Alignment], n_tokens: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched pooling matrices R and C, each (B, max_words, n_tokens), of `dtype`.

    C[b, w, t] = 1 if token t belongs to word w; R is C with each row divided by its count, so that
    R @ A averages a word's sub-token rows and A @ C^T sums its sub-token columns. Rows of dropped
    words, and of word slots past an example's n_words, are all zero.
    """
    B = len(alignments)
    max_words = max((a.n_words for a in alignments), default=0)
    b_idx, w_idx, t_idx = [], [], []
    for b, a in enumerate(alignments):
        t2w = np.asarray(a.token_to_word)
        if len(t2w) > n_tokens:
            raise ValueError(f"alignment {b} has {len(t2w)} tokens, more than n_tokens={n_tokens}")
        tok = np.flatnonzero(t2w >= 0)
        b_idx.append(np.full(len(tok), b))
        w_idx.append(t2w[tok])
        t_idx.append(tok)
    C = torch.zeros(B, max_words, n_tokens, dtype=torch.float64)  # 1/count rounded once, in the final dtype
    if B:
        C[torch.from_numpy(np.concatenate(b_idx)), torch.from_numpy(np.concatenate(w_idx)), torch.from_numpy(np.concatenate(t_idx))] = 1.0
    R = C / C.sum(-1, keepdim=True).clamp(min=1.0)
    return R.to(dtype), C.to(dtype)


def word_attention(attn: torch.Tensor, R: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Word-level attention W = R @ A @ C^T for attn (B, L, H, T, T) or (B, H, T, T).

    Returns (..., max_words, max_words) in attn's dtype and device (build R and C in that dtype to
    avoid rounding 1/count twice). Rows and columns of dropped words
    (and of padding word slots) are zero, so callers must drop pairs involving them.
    """
    if attn.dim() not in (4, 5):
        raise ValueError(f"attn must be (B, L, H, T, T) or (B, H, T, T), got shape {tuple(attn.shape)}")
    B, T = attn.shape[0], attn.shape[-1]
    if R.shape != C.shape or R.dim() != 3 or R.shape[0] != B or R.shape[2] != T or attn.shape[-2] != T:
        raise ValueError(f"pooling matrices {tuple(R.shape)}/{tuple(C.shape)} do not fit attention {tuple(attn.shape)}")
    view = (B,) + (1,) * (attn.dim() - 3) + tuple(R.shape[1:])
    r = R.to(device=attn.device, dtype=attn.dtype).reshape(view)
    c = C.to(device=attn.device, dtype=attn.dtype).reshape(view)
    return r @ attn @ c.transpose(-1, -2)
