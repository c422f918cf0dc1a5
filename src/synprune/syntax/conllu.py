"""Gold dependency trees from CoNLL-U files (Universal Dependencies), as `(text, Parse)` pairs.

SAP normally learns its dependency statistics from spaCy's parses; reading gold trees lets a user run
SAP on treebank sentences and measure how much the parser's errors move the result.

Reading rules:
- The text is the `# text =` line; without one it is rebuilt from the surface tokens and SpaceAfter=No.
- Syntactic words are the integer-ID lines; empty nodes (`8.1`) are skipped. A multiword token (`1-2 don't`)
  only gives the surface that its words (`do`, `n't`) are located in.
- Each word's character span is found by locating its FORM in the text, left to right. A word whose FORM
  cannot be found (a multiword token `its` = `it` + `s` is fine; parts that do not spell their surface are
  not) gets an empty span: no sub-token maps to it, so its arcs are dropped, like those of truncated words.
- HEAD 0 is the root: heads[i] = i and the label is `ROOT`, as spaCy writes it.
- Labels are UD's universal relations: subtypes are stripped (`obl:tmod` -> `obl`, `nsubj:pass` -> `nsubj`)
  unless `subtypes=True`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from synprune.errors import SynpruneError
from synprune.io import sha256_file
from synprune.syntax.parse import Parse


@dataclass(frozen=True)
class Treebank:
    """Sentences of a CoNLL-U file with their gold trees, and where they came from."""

    texts: list[str]
    parses: list[Parse]
    source: str
    sha256: str
    unplaced_words: int  # words whose FORM was not found in the text (given an empty span)

    def info(self) -> dict:
        """Provenance for result.json (recorded where spaCy runs record their parser and cache key)."""
        return {"parser": f"gold:{Path(self.source).name}", "source": self.source, "sha256": self.sha256,
                "sentences": len(self.texts), "unplaced_words": self.unplaced_words, "cached": True}

    def sample(self, n: int, seed: int = 0) -> "Treebank":
        """A seeded sample of n sentences in file order (all of them when n >= the file's size)."""
        if n >= len(self.texts):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self.texts)), n))
        return Treebank([self.texts[i] for i in idx], [self.parses[i] for i in idx], self.source, self.sha256,
                        self.unplaced_words)


@dataclass
class _Surface:
    """A surface token: a plain word, or a multiword token with its syntactic words."""

    form: str
    space_after: bool
    words: list[tuple[str, int, str]] = field(default_factory=list)  # (form, head 1-based, deprel)


def _blocks(lines: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number of the block's first line, lines) of each sentence."""
    block: list[str] = []
    start = 1
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if line.strip():
            if not block:
                start = n
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def _read_block(block: list[str], where: str) -> tuple[str | None, list[_Surface]]:
    text: str | None = None
    surfaces: list[_Surface] = []
    covered_until = 0  # last word id of the current multiword token
    for line in block:
        if line.startswith("#"):
            key, eq, value = line[1:].partition("=")
            if key.strip() == "text" and eq:
                text = value.strip()
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise SynpruneError(f"{where}: a token line has {len(cols)} tab-separated columns, not 10; pass a CoNLL-U file")
        tid, form, head, deprel, misc = cols[0], cols[1], cols[6], cols[7], cols[9]
        space = "SpaceAfter=No" not in misc.split("|")
        if "." in tid:
            continue  # empty node: enhanced graphs only
        try:
            if "-" in tid:
                covered_until = int(tid.split("-")[1])
                surfaces.append(_Surface(form, space))
                continue
            wid, hid = int(tid), int(head)
        except ValueError:
            raise SynpruneError(f"{where}: id {tid!r} or head {head!r} is not a number; pass a CoNLL-U file") from None
        if wid > covered_until:
            surfaces.append(_Surface(form, space))
        surfaces[-1].words.append((form, hid, deprel))
    return text, surfaces


def _locate(text: str, form: str, start: int) -> int:
    """Where `form` begins at or after `start` (skipping whitespace first), or -1."""
    pos = start
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if text.startswith(form, pos):
        return pos
    return text.find(form, start)


def _spans(text: str, surfaces: list[_Surface]) -> tuple[list[tuple[int, int]], int]:
    """Character span of every syntactic word, and how many could not be placed (empty spans)."""
    spans: list[tuple[int, int]] = []
    unplaced = 0
    cursor = 0
    for s in surfaces:
        at = _locate(text, s.form, cursor) if s.form and s.form != "_" else -1
        if at < 0:
            spans += [(cursor, cursor)] * len(s.words)
            unplaced += len(s.words)
            continue
        end = at + len(s.form)
        if len(s.words) == 1:
            spans.append((at, end))
        else:  # the parts of a multiword token, matched inside its surface without regard to case
            inner, low = at, text[at:end].lower()
            for i, (form, _, _) in enumerate(s.words):
                part = form.lower()
                if part and low.startswith(part, inner - at):
                    spans.append((inner, inner + len(part)))
                    inner += len(part)
                elif i == len(s.words) - 1 and inner < end:
                    spans.append((inner, end))  # the last part takes what is left (e.g. a typo'd clitic)
                    inner = end
                else:
                    spans.append((inner, inner))
                    unplaced += 1
        cursor = end
    return spans, unplaced


def _rebuilt_text(surfaces: list[_Surface]) -> str:
    return "".join(s.form + (" " if s.space_after else "") for s in surfaces).rstrip()


def _to_parse(surfaces: list[_Surface], spans: list[tuple[int, int]], subtypes: bool, where: str) -> Parse:
    words = [w for s in surfaces for w in s.words]
    heads, deps = [], []
    for i, (_, head, deprel) in enumerate(words):
        if head == 0:
            heads.append(i)
            deps.append("ROOT")
            continue
        if not 1 <= head <= len(words):
            raise SynpruneError(f"{where}: word {i + 1} has head {head}, outside the sentence's {len(words)} words")
        heads.append(head - 1)
        deps.append(deprel if subtypes else deprel.split(":")[0])
    return Parse(tuple(spans), tuple(heads), tuple(deps))


def read_conllu(path: str | Path, subtypes: bool = False) -> Treebank:
    """Every sentence of a CoNLL-U file as text and gold tree (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise SynpruneError(f"CoNLL-U file {path} not found; pass --parses FILE.conllu")
    texts, parses, unplaced = [], [], 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SynpruneError(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); CoNLL-U files are UTF-8") from None
    for start, block in _blocks(lines):
        where = f"{path}:{start}"
        text, surfaces = _read_block(block, where)
        if not surfaces:
            continue
        text = text if text is not None else _rebuilt_text(surfaces)
        spans, missed = _spans(text, surfaces)
        texts.append(text)
        parses.append(_to_parse(surfaces, spans, subtypes, where))
        unplaced += missed
    if not texts:
        raise SynpruneError(f"{path} holds no sentences; pass a CoNLL-U file (blank-line separated token lines)")
    return Treebank(texts, parses, str(path), sha256_file(path), unplaced)
