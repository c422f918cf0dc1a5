"""The delimited-file readers (custom CSV/TSV files and the GLUE reader) on generated files: fields of any length
(past the csv module's default limit of 131,072 characters), any quoting, encodings, empty and header-only files,
ragged rows. Whatever the file, the outcome is data or a one-line SynpruneError, never a traceback."""
from __future__ import annotations

import csv
import io
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synprune.data.tasks import GLUE, load_file, load_glue
from synprune.errors import SynpruneError

CSV_LIMIT = 131_072  # the csv module's default field_size_limit
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])

# Text that stresses the readers: delimiters, quotes, line breaks, non-ASCII; no surrogates (not encodable).
CHARS = st.characters(blacklist_categories=("Cs",))
SHORT = st.text(CHARS, max_size=30)
LONG = st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", " word", '"', ",", "\t"]),
                 st.sampled_from([CSV_LIMIT // 5, CSV_LIMIT + 1, 2 * CSV_LIMIT]))
FIELD = st.one_of(SHORT, SHORT, SHORT, LONG)
QUOTING = st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])


def _written(rows, delimiter: str, quoting: int) -> str:
    buf = io.StringIO(newline="")
    csv.writer(buf, delimiter=delimiter, quoting=quoting).writerows(rows)  # "\r\n": fields with either are quoted
    return buf.getvalue()


def _one_line(e: SynpruneError) -> str:
    message = str(e)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


@SETTINGS
@given(texts=st.lists(FIELD, min_size=1, max_size=4), labels=st.data(), suffix=st.sampled_from([".csv", ".tsv"]),
       quoting=QUOTING, bom=st.booleans())
def test_well_formed_files_read_back_exactly(tmp_path_factory, texts, labels, suffix, quoting, bom):
    """A file the csv module writes (any field length, any quoting, with or without a BOM) reads back as written."""
    ys = labels.draw(st.lists(st.integers(0, 2), min_size=len(texts), max_size=len(texts)))
    path = tmp_path_factory.mktemp("csv") / f"data{suffix}"
    text = _written([["text", "label"], *([t, y] for t, y in zip(texts, ys))], "\t" if suffix == ".tsv" else ",", quoting)
    path.write_bytes(text.encode("utf-8-sig" if bom else "utf-8"))
    data = load_file(path, "text", label_col="label")
    assert [e.text_a for e in data.splits["all"]] == texts
    assert [e.label for e in data.splits["all"]] == ys


def test_a_field_past_the_csv_modules_limit_is_read_and_cut_as_a_long_row(tmp_path):
    """The class of the bug: the csv module's own limit stopped the reader before the row-cutting could run."""
    from synprune.data.truncation import cut_to_kept

    from conftest import tiny_model

    long_text = "word " * (CSV_LIMIT // 4)
    for suffix, sep in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"long{suffix}"
        path.write_text(f"text{sep}label\n{long_text}{sep}1\nshort{sep}0\n", encoding="utf-8")
        data = load_file(path, "text", label_col="label")
        assert [len(e.text_a) for e in data.splits["all"]] == [len(long_text), 5]
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    for split in ("train", "dev"):
        (glue / f"{split}.tsv").write_text(f"sentence\tlabel\n{long_text}\t1\nshort\t0\n", encoding="utf-8")
    sst2 = load_glue("sst2", tmp_path / "glue")
    assert len(sst2.splits["dev"][0].text_a) == len(long_text)
    cut = cut_to_kept(tiny_model("bert").tokenizer, [e.text_a for e in data.splits["all"]], None, 16, together=False)
    assert cut.rows_cut == 1 and len(cut.texts_a[0]) < 100


# Files that were not written by a csv module: random fields joined by a delimiter, stray quotes, ragged rows,
# optional header, possibly empty, in one of several encodings.
RAW_FIELD = st.one_of(st.text(st.sampled_from(list(string.ascii_letters + ' "\'\\,;\té\n\r')), max_size=12), LONG)
ROW = st.lists(RAW_FIELD, min_size=0, max_size=5)
ENCODING = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16"])


def _raw_file(header: list[str] | None, rows: list[list[str]], sep: str) -> str:
    lines = ([sep.join(header)] if header is not None else []) + [sep.join(r) for r in rows]
    return "\n".join(lines) + ("\n" if lines else "")


def _check_outcome(load, raw: bytes) -> None:
    try:
        load()
    except SynpruneError as e:
        message = _one_line(e)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            assert "is not UTF-8" in message, message


@SETTINGS
@given(header=st.one_of(st.none(), st.just(["text", "label"]), st.lists(RAW_FIELD, max_size=4)),
       rows=st.lists(ROW, max_size=6), suffix=st.sampled_from([".csv", ".tsv"]), encoding=ENCODING,
       label=st.sampled_from(["label", None]))
def test_any_custom_file_gives_data_or_one_line_error(tmp_path_factory, header, rows, suffix, encoding, label):
    path = tmp_path_factory.mktemp("raw") / f"data{suffix}"
    raw = _raw_file(header, rows, "\t" if suffix == ".tsv" else ",").encode(encoding, errors="replace")
    path.write_bytes(raw)
    _check_outcome(lambda: load_file(path, "text", label_col=label), raw)


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]


@SETTINGS
@given(task=st.sampled_from(["stsb", "cola", "sst2", "rte"]), header=st.booleans(), rows=st.lists(ROW, max_size=6),
       good=st.lists(st.tuples(SHORT, SHORT), max_size=3), encoding=ENCODING)
def test_any_glue_file_gives_data_or_one_line_error(tmp_path_factory, task, header, rows, good, encoding):
    spec = GLUE[task]
    names = {"stsb": STSB_HEADER, "sst2": ["sentence", "label"], "rte": ["index", "sentence1", "sentence2", "label"],
             "cola": []}[task]
    label = {"stsb": "3.2", "sst2": "1", "rte": "entailment", "cola": "1"}[task]
    clean = [[a.replace("\t", " ").replace("\n", " ").replace("\r", " ") for a in pair] for pair in good]
    well_formed = {"stsb": [["0", "main", "x", "2012", "0", "n", "n", a, b, label] for a, b in clean],
                   "sst2": [[a, label] for a, _ in clean], "rte": [["0", a, b, label] for a, b in clean],
                   "cola": [["src", label, "", a] for a, _ in clean]}[task]
    folder = tmp_path_factory.mktemp("glue")
    (folder / spec.folder).mkdir()
    raw = _raw_file(names if header and names else None, well_formed + rows, "\t").encode(encoding, errors="replace")
    for name in (spec.train, *spec.dev):
        (folder / spec.folder / name).write_bytes(raw)
    _check_outcome(lambda: load_glue(task, folder), raw)


@pytest.mark.parametrize("content", ["", "text,label\n", "text,label\n\n\n"])
def test_empty_and_header_only_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "data.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SynpruneError, match="has no rows") as e:
        load_file(path, "text", label_col="label")
    _one_line(e.value)
