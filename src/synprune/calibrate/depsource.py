"""`--dependencies-from`: the dataset SAP's dependency ranking and weights come from, when it is not the
calibration data of the model being pruned (the paper's first open check: is the ranking general syntax,
or task-specific signal?).

A source is a GLUE task name (its seeded calibration sample of train, same size and seed as the run, parsed
by the run's parser), a CoNLL-U file (gold trees of a seeded sample of its sentences) or a .txt file (one
sentence per line, parsed). Only the label counts travel: attention is still read on the pruned model's own
calibration data, and arcs whose label the source never saw carry no weight.
"""
from __future__ import annotations

from pathlib import Path

from synprune.errors import SynpruneError
from synprune.syntax.parse import Parse
from synprune.data.tasks import ALIASES, GLUE

FILE_KINDS = (".conllu", ".txt")


def check_source(spec: str) -> str:
    """Validate a source before any work: a GLUE task name or an existing .conllu/.txt file."""
    if ALIASES.get(spec.lower(), spec.lower()) in GLUE:
        return spec
    path = Path(spec)
    if path.suffix.lower() in FILE_KINDS:
        if not path.is_file():
            raise SynpruneError(f"--dependencies-from {spec}: file not found; pass an existing .conllu or .txt file")
        return spec
    raise SynpruneError(f"--dependencies-from {spec!r}: use a GLUE task ({', '.join(GLUE)}), "
                        f"a CoNLL-U file (.conllu, gold trees) or a text file (.txt, one sentence per line)")


def source_parses(spec: str, calib_size: int, seed: int, parser: str, glue_dir: str | Path | None = None) -> tuple[list[Parse], dict]:
    """The parses whose label counts give the ranking, and their provenance for result.json."""
    from synprune.syntax.parse import parse_texts

    check_source(spec)
    suffix = Path(spec).suffix.lower()
    if suffix == ".conllu":
        from synprune.syntax.conllu import read_conllu

        bank = read_conllu(spec).sample(calib_size, seed)
        return list(bank.parses), {"source": spec, **bank.info()}
    if suffix == ".txt":
        import random

        from synprune.io import sha256_file

        lines = [t.strip() for t in Path(spec).read_text(encoding="utf-8").splitlines() if t.strip()]
        if not lines:
            raise SynpruneError(f"--dependencies-from {spec}: the file holds no sentences (one per line)")
        if len(lines) > calib_size:
            lines = [lines[i] for i in sorted(random.Random(seed).sample(range(len(lines)), calib_size))]
        parses, info = parse_texts(lines, parser)
        return parses, {"source": spec, "sha256": sha256_file(spec), "sentences": len(lines), **info}
    from synprune.data.tasks import load_task, make_split

    data = load_task(spec, glue_dir)
    sample = make_split(data, calib_size, seed).calibration
    texts = [e.text_a for e in sample] + [e.text_b for e in sample if e.text_b is not None]
    parses, info = parse_texts(texts, parser)
    return parses, {"source": data.name, "data_sha256": data.hashes, "examples": len(sample), "sentences": len(texts), **info}
