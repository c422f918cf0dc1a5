"""Cut calibration texts to the part the model reads, before they are parsed and aligned.

With `--max-length` the tokenizer keeps the first tokens of a row and drops the rest. Words past that point
would still be parsed by spaCy and get a row and a column in the word-level attention: a row of 200,000
characters would cost a parse of the whole text and a (words x words) matrix per head that no sub-token fills.
Cutting each text just after its last kept token (at the end of that word) makes every later step cost what the
kept tokens cost, and the number of rows cut is recorded in the run record.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

# How far past the last kept token a cut may extend to reach the end of its word (a word longer than this is
# cut inside: its first sub-tokens are all the model reads of it anyway).
_WORD_SLACK = 64


@dataclass(frozen=True)
class Cut:
    texts_a: list[str]
    texts_b: list[str | None]
    rows_cut: int  # inputs (a text, or a pair read together) the model reads only in part
    chars_dropped: int


def _cut_at(text: str, end: int) -> str:
    """`text` up to character `end`, extended to the end of the word `end` falls in."""
    if not text[end:].strip():
        return text
    stop = end
    limit = min(len(text), end + _WORD_SLACK)
    while stop < limit and not text[stop].isspace():
        stop += 1
    return text[:stop]


def _kept_end(offsets: Sequence[Sequence[int]], seq_ids: Sequence[int | None], which: int) -> int:
    ends = [int(e) for (s, e), q in zip(offsets, seq_ids) if q == which and e > s]
    return max(ends, default=0)


def cut_to_kept(tokenizer: Any, texts_a: Sequence[str], texts_b: Sequence[str | None] | None, max_length: int,
                together: bool, batch_size: int = 256) -> Cut:
    """Each text cut after the tokens `tokenizer(..., truncation=True, max_length=max_length)` keeps.

    `together`: a pair is read as one input (a classifier); else each text is encoded alone (an embedding model).
    """
    texts_b = list(texts_b) if texts_b is not None else [None] * len(texts_a)
    out_a, out_b = list(texts_a), list(texts_b)
    rows = 0
    paired = together and all(t is not None for t in texts_b) and len(texts_b) > 0
    for start in range(0, len(out_a), batch_size):
        chunk = range(start, min(len(out_a), start + batch_size))
        if paired:
            enc = tokenizer([out_a[i] for i in chunk], [out_b[i] for i in chunk], truncation=True,
                            max_length=max_length, return_offsets_mapping=True)
            for j, i in enumerate(chunk):
                off, seq = enc["offset_mapping"][j], enc.sequence_ids(j)
                a, b = _cut_at(out_a[i], _kept_end(off, seq, 0)), _cut_at(out_b[i], _kept_end(off, seq, 1))
                rows += a != out_a[i] or b != out_b[i]
                out_a[i], out_b[i] = a, b
            continue
        cut_rows = [False] * len(chunk)
        for side in (out_a, out_b):
            present = [i for i in chunk if side[i] is not None]
            if not present:
                continue
            enc = tokenizer([side[i] for i in present], truncation=True, max_length=max_length,
                            return_offsets_mapping=True)
            for j, i in enumerate(present):
                cut = _cut_at(side[i], _kept_end(enc["offset_mapping"][j], enc.sequence_ids(j), 0))
                cut_rows[i - start] |= cut != side[i]
                side[i] = cut
        rows += sum(cut_rows)
    dropped = sum(len(x) - len(y) for x, y in zip(texts_a, out_a)) + sum(
        len(x or "") - len(y or "") for x, y in zip(texts_b, out_b))
    return Cut(out_a, out_b, int(rows), int(dropped))
