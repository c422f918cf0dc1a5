"""Dependency-label statistics and SAP's weights (SPEC section 1).

The top-k labels by frequency get weights k..1 (most frequent largest); the other T-k labels get
1..T-k in rank order, so the rarest label weighs most: over-attending to a rare relation costs most.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

from synprune.syntax.parse import Parse

PUNCT = "punct"


def arcs(parse: Parse, keep_punct: bool = False) -> Iterator[tuple[int, int, str]]:
    """(head word, dependent word, label) for every arc except ROOT (and punct unless kept)."""
    for dep_word, (head_word, label) in enumerate(zip(parse.heads, parse.deps)):
        if label == "ROOT" or head_word < 0 or head_word == dep_word:
            continue
        if label == PUNCT and not keep_punct:
            continue
        yield head_word, dep_word, label


def label_counts(parses: Iterable[Parse], keep_punct: bool = False) -> Counter:
    return Counter(label for p in parses for _, _, label in arcs(p, keep_punct))


@dataclass(frozen=True)
class DependencyRanking:
    """Labels by count (ties by name), with SAP weights and whether each is in the top-k."""

    labels: tuple[str, ...]
    counts: tuple[int, ...]
    weights: tuple[int, ...]
    k: int

    @classmethod
    def from_counts(cls, counts: Counter, k: int) -> "DependencyRanking":
        if k < 1:
            raise ValueError("k must be at least 1")
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        top = min(k, len(ranked))
        weights = [k - i for i in range(top)] + [i + 1 for i in range(len(ranked) - top)]
        return cls(tuple(l for l, _ in ranked), tuple(c for _, c in ranked), tuple(weights), k)

    @property
    def index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def is_top(self, i: int) -> bool:
        return i < self.k

    def to_json(self) -> list[dict]:
        return [{"label": l, "count": c, "weight": w, "top_k": self.is_top(i)}
                for i, (l, c, w) in enumerate(zip(self.labels, self.counts, self.weights))]
