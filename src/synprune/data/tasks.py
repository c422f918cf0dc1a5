"""Tasks: GLUE from a local `glue_data` folder (or the hub), any CSV/TSV/JSONL file, or language modelling
(`ewt`: Universal Dependencies English EWT text; any .txt file, one text per line).

A task is its examples per split plus what it is scored with; everything downstream (parsing, attention
statistics, evaluation) sees only `Example`s, so new data sources plug in here.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from synprune.errors import SynpruneError
from synprune.io import sha256_file
from synprune.progress import log


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None = None
    label: float | int | None = None


@dataclass(frozen=True)
class TaskSpec:
    """Where a GLUE task's columns are and how it is scored (metrics in the order reported; first is main)."""

    name: str
    folder: str
    train: str | None
    dev: tuple[str, ...]
    text_a: str | int
    text_b: str | int | None
    label: str | int
    num_labels: int  # 1 = regression
    metrics: tuple[str, ...]
    header: bool = True
    label_map: dict[str, int] | None = None
    hub_name: str | None = None


_NLI2 = {"entailment": 0, "not_entailment": 1}
GLUE: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("cola", "CoLA", "train.tsv", ("dev.tsv",), 3, None, 1, 2, ("matthews",), header=False),
        TaskSpec("sst2", "SST-2", "train.tsv", ("dev.tsv",), "sentence", None, "label", 2, ("accuracy",)),
        TaskSpec("mrpc", "MRPC", "train.tsv", ("dev.tsv",), "#1 String", "#2 String", "Quality", 2, ("f1", "accuracy")),
        TaskSpec("stsb", "STS-B", "train.tsv", ("dev.tsv",), "sentence1", "sentence2", "score", 1, ("spearman", "pearson")),
        TaskSpec("qqp", "QQP", "train.tsv", ("dev.tsv",), "question1", "question2", "is_duplicate", 2, ("accuracy", "f1")),
        TaskSpec("mnli", "MNLI", "train.tsv", ("dev_matched.tsv", "dev_mismatched.tsv"), "sentence1", "sentence2",
                 "gold_label", 3, ("accuracy",), label_map={"entailment": 0, "neutral": 1, "contradiction": 2}),
        TaskSpec("qnli", "QNLI", "train.tsv", ("dev.tsv",), "question", "sentence", "label", 2, ("accuracy",), label_map=_NLI2),
        TaskSpec("rte", "RTE", "train.tsv", ("dev.tsv",), "sentence1", "sentence2", "label", 2, ("accuracy",), label_map=_NLI2),
        TaskSpec("wnli", "WNLI", "train.tsv", ("dev.tsv",), "sentence1", "sentence2", "label", 2, ("accuracy",)),
    )
}
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "sts": "stsb"}


@dataclass
class TaskData:
    """A loaded task: splits of examples, label space, metrics and provenance (file hashes)."""

    name: str
    splits: dict[str, list[Example]]
    num_labels: int
    metrics: tuple[str, ...]
    source: str
    hashes: dict[str, str] = field(default_factory=dict)
    eval_splits: tuple[str, ...] = ("dev",)
    label_names: tuple[str, ...] | None = None  # names of label ids 0..n-1 when the data named its labels
    skipped: dict[str, int] = field(default_factory=dict)  # file -> rows left out (too few columns)
    label_map: dict[str, int] | None = None  # the name -> id map the labels were scored with (set by align_labels)
    calib_split: str = "train"  # where the calibration sample is drawn from (when present)
    lm: bool = False  # language modelling: plain texts scored by perplexity, no labels needed

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        return any(e.text_b is not None for s in self.splits.values() for e in s[:10])

    @property
    def has_labels(self) -> bool:
        return all(e.label is not None for s in self.splits.values() for e in s)

    @property
    def can_evaluate(self) -> bool:
        """Language modelling scores plain text; every other task needs a label on each example."""
        return self.lm or self.has_labels


def default_glue_dir() -> Path | None:
    """--glue-dir, else SYNPRUNE_GLUE_DIR, else ../shared/data/glue beside the checkout or the working dir."""
    if env := os.environ.get("SYNPRUNE_GLUE_DIR"):
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    for base in (repo_root, Path.cwd()):
        cand = base.parent / "shared" / "data" / "glue"
        if cand.is_dir():
            return cand
    return None


def _read_text(path: Path) -> str:
    """A data file's text; a file that is not UTF-8 is a one-line error naming the file and the bad byte."""
    try:  # line breaks kept as written: one inside a quoted field is part of its text
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SynpruneError(f"{path} is not UTF-8 ({e.reason}: byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                            "convert it, e.g. `iconv -f latin1 -t utf-8`") from None


def _allow_long_fields() -> None:
    """Let the csv module read a field of any length (its default limit is 131,072 characters): as high as this
    platform's C long allows. Long texts are then cut to what the model reads, as every long row is."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long narrower than Python's sys.maxsize (Windows)
            limit //= 2


def delimited_rows(text: str, path: Path, delimiter: str, quoting: int = csv.QUOTE_MINIMAL,
                   header: bool = False) -> list:
    """The rows of a CSV/TSV file's text, fields of any length (every delimited reader comes through here): lists,
    or dicts keyed by the first row when `header`. A row the csv module cannot read is a one-line error naming it."""
    _allow_long_fields()
    buf = io.StringIO(text, newline="")
    reader = (csv.DictReader(buf, delimiter=delimiter, quoting=quoting) if header
              else csv.reader(buf, delimiter=delimiter, quoting=quoting))
    try:
        return list(reader)
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise SynpruneError(f"{path} line {reader.line_num} cannot be read as {kind} ({e}); "
                            "fix that line's quoting") from None


def _read_tsv(path: Path, spec: TaskSpec) -> tuple[list[Example], int]:
    """The examples of a GLUE file and how many rows were left out for having too few columns."""
    rows = delimited_rows(_read_text(path), path, "\t", quoting=csv.QUOTE_NONE)
    if not rows:
        raise SynpruneError(f"{path} is empty; point --glue-dir at a complete GLUE folder")
    header: dict[str, int] = {}
    if spec.header:
        header = {name: i for i, name in enumerate(rows[0])}
        rows = rows[1:]

    def col(key: str | int | None) -> int | None:
        if key is None or isinstance(key, int):
            return key
        if key not in header:
            raise SynpruneError(f"{path} has no column {key!r} (columns: {', '.join(header)}); is it a GLUE {spec.name} file?")
        return header[key]

    ia, ib, il = col(spec.text_a), col(spec.text_b), col(spec.label)
    out = []
    short = 0
    need = max(i for i in (ia, ib, il) if i is not None)
    for row in rows:
        if not row:
            continue
        if len(row) <= need:
            short += 1
            continue
        out.append(Example(row[ia], row[ib] if ib is not None else None, _label(row[il], spec, path)))
    return out, short


def _label(raw: str, spec: TaskSpec, path: Path) -> float | int | None:
    """A label value; "" and "-" mean unlabelled. Anything else unreadable is an error, not a silent None
    (which would later surface as a confusing "evaluation needs labels")."""
    raw = raw.strip()
    if raw in ("", "-"):
        return None
    if spec.label_map is not None:
        if raw not in spec.label_map:
            raise SynpruneError(f"{path}: unknown {spec.name} label {raw!r} (expected {', '.join(spec.label_map)})")
        return spec.label_map[raw]
    try:
        return float(raw) if spec.num_labels == 1 else int(raw)
    except ValueError:
        raise SynpruneError(f"{path}: {spec.name} label {raw!r} is not a number; is it a GLUE {spec.name} file?") from None


def load_glue(name: str, glue_dir: str | Path | None = None) -> TaskData:
    spec = GLUE[name]
    root = Path(glue_dir) if glue_dir is not None else default_glue_dir()
    if root is None:
        return _load_glue_hub(spec)
    if not root.is_dir():
        raise SynpruneError(f"GLUE folder {root} does not exist; pass --glue-dir DIR or set SYNPRUNE_GLUE_DIR to a glue_data folder")
    folder = root / spec.folder
    if not folder.is_dir():
        raise SynpruneError(f"{folder} not found: the GLUE folder {root} has no {spec.folder}/; pass --glue-dir to one that does")
    splits: dict[str, list[Example]] = {}
    hashes: dict[str, str] = {}
    skipped: dict[str, int] = {}
    files = ([("train", spec.train)] if spec.train else []) + [
        ("dev" if i == 0 else Path(f).stem, f) for i, f in enumerate(spec.dev)
    ]
    for split, fname in files:
        path = folder / fname
        if path.is_file():
            splits[split], short = _read_tsv(path, spec)
            hashes[f"{spec.folder}/{fname}"] = sha256_file(path)
            if short:
                skipped[f"{spec.folder}/{fname}"] = short
                log(f"{path}: left out {short} rows with fewer columns than GLUE {spec.name} needs")
    if "dev" not in splits:
        raise SynpruneError(f"{folder / spec.dev[0]} not found; GLUE task {name} needs its dev split there")
    evals = tuple(s for s in ["dev", *(Path(f).stem for f in spec.dev[1:])] if s in splits)
    names = tuple(spec.label_map) if spec.label_map else None
    return TaskData(name, splits, spec.num_labels, spec.metrics, str(folder), hashes, evals, names, skipped)


def _load_glue_hub(spec: TaskSpec) -> TaskData:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise SynpruneError(
            f"no local GLUE folder found for {spec.name}; pass --glue-dir DIR, set SYNPRUNE_GLUE_DIR, "
            "or `pip install synprune[hub]` to read GLUE from the Hugging Face hub"
        ) from None
    try:
        ds = datasets.load_dataset("nyu-mll/glue", spec.name)
    except Exception as e:  # network errors come in many types
        raise SynpruneError(f"could not load GLUE {spec.name} from the hub ({type(e).__name__}); pass --glue-dir DIR") from None
    keys = {"cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
            "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
            "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2")}
    ka, kb = keys[spec.name]
    names = {"train": "train", "validation": "dev", "validation_matched": "dev", "validation_mismatched": "dev_mismatched"}
    splits = {
        names[s]: [Example(r[ka], r[kb] if kb else None, r["label"]) for r in ds[s]] for s in ds if s in names
    }
    return TaskData(spec.name, splits, spec.num_labels, spec.metrics, "hub:nyu-mll/glue",
                    {}, tuple(s for s in ("dev", "dev_mismatched") if s in splits))


def load_file(path: str | Path, text_col: str, text_pair_col: str | None = None, label_col: str | None = None) -> TaskData:
    """A CSV, TSV or JSONL file with a text column, optional second text and label columns."""
    path = Path(path)
    if not path.is_file():
        raise SynpruneError(f"data file {path} not found")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".tsv"):
        raise SynpruneError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    text = _read_text(path)
    if suffix == ".jsonl":
        rows, lines = _jsonl_rows(text, path)
    else:
        rows = delimited_rows(text, path, "\t" if suffix == ".tsv" else ",", header=True)
        lines = list(range(2, len(rows) + 2))  # the header is line 1 (approximate with quoted line breaks)
    if not rows:
        raise SynpruneError(f"{path} has no rows")
    columns = [c for c in rows[0] if c is not None]  # None: a ragged row's fields beyond the header's
    for name in (text_col, text_pair_col, label_col):
        if name is not None and name not in columns:
            shown = ", ".join(c if c.isprintable() else repr(c) for c in columns)
            raise SynpruneError(f"{path} has no column {name!r} (columns: {shown}); fix --text-col/--text-pair-col/--label-col")
    for row, line in zip(rows, lines):
        for name in (text_col, text_pair_col):
            if name is not None and (name not in row or row[name] is None):
                raise SynpruneError(f"{path} line {line}: no {name!r} value; every row needs the text column(s)")
    raw = [r.get(label_col) for r in rows] if label_col else [None] * len(rows)
    labels, num_labels, names = _infer_labels(raw, path)
    examples = [
        Example(str(r[text_col] or ""), str(r[text_pair_col] or "") if text_pair_col else None, y)
        for r, y in zip(rows, labels)
    ]
    metrics = ("spearman", "pearson") if num_labels == 1 else ("accuracy", "f1") if num_labels == 2 else ("accuracy",)
    return TaskData(path.stem, {"all": examples}, num_labels, metrics, str(path), {path.name: sha256_file(path)}, ("all",),
                    names)


def _jsonl_rows(text: str, path: Path) -> tuple[list[dict], list[int]]:
    """The objects of a JSON Lines file and their line numbers; a bad line is an error naming it."""
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SynpruneError(f"{path} line {n} is not valid JSON ({e.msg}, column {e.colno}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise SynpruneError(f"{path} line {n} is a JSON {type(row).__name__}, not an object; write one "
                                "{\"column\": value, ...} object per line")
        rows.append(row)
        lines.append(n)
    return rows, lines


def _infer_labels(raw: Sequence, path: Path) -> tuple[list, int, tuple[str, ...] | None]:
    """Label ids, the number of labels (1: regression, 0: none) and, for named labels, the name of each id
    (sorted here; `align_labels` re-maps them to the model's own label ids when it has named labels)."""
    if all(v is None for v in raw):
        return list(raw), 0, None
    if any(v is None or str(v).strip() == "" for v in raw):
        raise SynpruneError(f"{path}: some rows have an empty label; fill them or drop --label-col")
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        names = sorted({str(v) for v in raw})
        index = {n: i for i, n in enumerate(names)}
        return [index[str(v)] for v in raw], max(2, len(names)), tuple(names)
    if not all(math.isfinite(v) for v in values):
        raise SynpruneError(f"{path}: a label is not a finite number (nan or inf); fix the label column")
    if all(v.is_integer() for v in values) and len(set(values)) <= 20:
        if min(values) < 0:
            raise SynpruneError(f"{path}: class labels must be 0, 1, ...; found {int(min(values))}")
        return [int(v) for v in values], max(2, int(max(values)) + 1), None
    return values, 1, None


def model_label_names(config) -> dict[str, int] | None:
    """A model's own label2id when it names its labels (not transformers' default LABEL_0, LABEL_1, ...)."""
    label2id = getattr(config, "label2id", None) or {}
    if not label2id or all(str(k).upper() == f"LABEL_{v}" for k, v in label2id.items()):
        return None
    return {str(k): int(v) for k, v in label2id.items()}


def align_labels(data: TaskData, config) -> TaskData:
    """Score named labels with the model's own ids: a model fine-tuned with contradiction=0 must not be scored
    with the data's alphabetical (or GLUE) order. A data label the model does not know is an error."""
    if data.label_names is None:
        return data
    own = model_label_names(config)
    if own is None:
        return dataclasses.replace(data, label_map={n: i for i, n in enumerate(data.label_names)})
    by_name = {k.lower(): v for k, v in own.items()}
    unknown = [n for n in data.label_names if n.lower() not in by_name]
    if unknown:
        raise SynpruneError(f"the data's label(s) {', '.join(map(repr, unknown))} are not among the model's labels "
                            f"({', '.join(own)}); use a model fine-tuned on these labels")
    new_id = [by_name[n.lower()] for n in data.label_names]
    splits = {s: [dataclasses.replace(e, label=None if e.label is None else new_id[int(e.label)]) for e in ex]
              for s, ex in data.splits.items()}
    return dataclasses.replace(data, splits=splits, num_labels=max(len(own), max(new_id) + 1),
                               label_map={n: by_name[n.lower()] for n in data.label_names})


LM_METRICS = ("perplexity", "window_perplexity")  # per sentence (the main one), token windows (evaluation.lm)
EWT = "ewt"
EWT_FILES = {"dev": "en_ewt-ud-dev.conllu", "test": "en_ewt-ud-test.conllu"}


def default_ud_dir() -> Path | None:
    """$SYNPRUNE_UD_DIR, else ../shared/data/ud/en_ewt beside the checkout or the working dir."""
    if env := os.environ.get("SYNPRUNE_UD_DIR"):
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    for base in (repo_root, Path.cwd()):
        cand = base.parent / "shared" / "data" / "ud" / "en_ewt"
        if cand.is_dir():
            return cand
    return None


def load_ewt(ud_dir: str | Path | None = None) -> TaskData:
    """Language modelling on UD English EWT: calibration from dev (whose gold trees `--parses` can give),
    perplexity on test."""
    from synprune.syntax.conllu import read_conllu

    root = Path(ud_dir) if ud_dir is not None else default_ud_dir()
    if root is None or not all((root / f).is_file() for f in EWT_FILES.values()):
        raise SynpruneError(f"task ewt needs {' and '.join(EWT_FILES.values())} in {root or 'a UD English EWT folder'}; "
                            "set SYNPRUNE_UD_DIR to the folder that holds them")
    splits, hashes = {}, {}
    for split, name in EWT_FILES.items():
        bank = read_conllu(root / name)
        splits[split] = [Example(t) for t in bank.texts]
        hashes[name] = bank.sha256
    return TaskData(EWT, splits, 0, LM_METRICS, str(root), hashes, ("test",), calib_split="dev", lm=True)


def load_text_file(path: str | Path) -> TaskData:
    """Language modelling on a text file, one text per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise SynpruneError(f"text file {path} not found")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise SynpruneError(f"{path} is not UTF-8 text; pass a UTF-8 .txt file with one text per line") from None
    texts = [t for t in lines if t]
    if len(texts) < 2:
        raise SynpruneError(f"{path} has {len(texts)} non-empty lines; language modelling needs at least 2 (one text per line)")
    return TaskData(path.stem, {"all": [Example(t) for t in texts]}, 0, LM_METRICS, str(path),
                    {path.name: sha256_file(path)}, ("all",), lm=True)


def load_task(task: str, glue_dir: str | Path | None = None, text_col: str | None = None,
              text_pair_col: str | None = None, label_col: str | None = None) -> TaskData:
    """A GLUE task name, or a path to a CSV/TSV/JSONL file (then `text_col` is required)."""
    key = ALIASES.get(task.lower(), task.lower())
    if key in GLUE:
        return load_glue(key, glue_dir)
    if key == EWT:
        return load_ewt()
    if Path(task).suffix.lower() == ".txt":
        return load_text_file(task)
    if Path(task).suffix.lower() in (".csv", ".tsv", ".jsonl"):
        if text_col is None:
            raise SynpruneError(f"{task} is a data file: name its text column with --text-col")
        return load_file(task, text_col, text_pair_col, label_col)
    raise SynpruneError(f"unknown task {task!r}: use one of {', '.join(GLUE)}, ewt, a .csv/.tsv/.jsonl file or a .txt file")


@dataclass(frozen=True)
class Split:
    """The calibration sample and the evaluation examples, which never overlap."""

    calibration: list[Example]
    evaluation: dict[str, list[Example]]
    note: str


def make_split(data: TaskData, calib_size: int = 512, seed: int = 0, eval_size: int | None = None) -> Split:
    """Calibration: a seeded sample of the calibration split (train; dev for `ewt`); evaluation: the eval
    split(s). Without a calibration split, a seeded half of the first eval split calibrates and the other
    half evaluates. `eval_size` caps each evaluation split at a seeded sample of that many examples."""
    rng = random.Random(seed)
    source = data.calib_split
    if source in data.splits and data.splits[source] and source not in data.eval_splits:
        pool = data.splits[source]
        idx = sorted(rng.sample(range(len(pool)), min(calib_size, len(pool))))
        calibration = [pool[i] for i in idx]
        evaluation = {s: data.splits[s] for s in data.eval_splits}
        note = f"calibration: {len(idx)} seeded examples of {source}; evaluation: {', '.join(data.eval_splits)}"
    else:
        name = data.eval_splits[0]
        pool = data.splits[name]
        if len(pool) < 2:
            raise SynpruneError(f"task {data.name} has {len(pool)} examples; need at least 2 to calibrate and evaluate")
        order = list(range(len(pool)))
        rng.shuffle(order)
        half = len(pool) // 2
        calib_idx = sorted(order[:half][:calib_size])
        eval_idx = sorted(order[half:])
        calibration = [pool[i] for i in calib_idx]
        evaluation = {name: [pool[i] for i in eval_idx]}
        note = (f"no {source} split: a seeded half of {name} ({len(calib_idx)} examples) calibrates, "
                f"the other half ({len(eval_idx)}) evaluates")
    if eval_size is not None:
        evaluation = {s: cap(ex, eval_size, seed) for s, ex in evaluation.items()}
        note += f"; evaluation capped at {eval_size} seeded examples per split (--eval-size)"
    return Split(calibration, evaluation, note)


def cap(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A seeded sample of n examples in their original order (all of them when there are n or fewer)."""
    if n >= len(examples):
        return examples
    idx = sorted(random.Random(f"eval-{seed}").sample(range(len(examples)), n))
    return [examples[i] for i in idx]
