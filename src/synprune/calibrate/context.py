"""The calibration context shared by every method: parses, attention statistics and tokenized batches
are computed once, on first use, and reused by every method and budget of a run or sweep."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from synprune.calibrate.attention import CalibItem, Collector, ScanInput, calibration_items, scan, scan_batches
from synprune.syntax.dependencies import DependencyRanking, label_counts
from synprune.evaluation.evaluate import Prepared, prepare, task_metrics
from synprune.model.load import TaskModel, as_task_model, max_positions
from synprune.syntax.parse import Parse, parse_texts
from synprune.progress import bar, log
from synprune.data.tasks import Example, Split, TaskData, align_labels, load_task, make_split
from synprune.data.truncation import Cut, cut_to_kept


class DataOptions(Protocol):
    """What the calibration reads of a run's options (`synprune.config.PruneConfig`, which methods read further)."""

    calib_size: int
    seed: int
    parser: str
    batch_size: int
    max_length: int


class Calibration:
    def __init__(self, tm: TaskModel, examples: Sequence[Example], config: DataOptions,
                 metric_names: Sequence[str] = (), parses: tuple[list[Parse], list[Parse | None]] | None = None,
                 glue_dir: str | Path | None = None):
        self.tm = tm
        self.glue_dir = glue_dir  # where a GLUE `--dependencies-from` source is read
        self.examples = list(examples)
        self.config = config  # data options (parser, batch size, max length); method options come per call
        self.metric_names = tuple(metric_names)  # how CF scores the calibration split
        self.timings: dict[str, float] = {}
        self._nested: list[float] = []  # per open `timed` block: time taken by the blocks nested in it
        # called between Candidate Filtering's passes; a sweep sets it to share the cores with its evaluation worker
        self.pace: Callable[[], None] = lambda: None
        self.parse_info: dict = {}
        self._memo: dict[Any, Any] = {}
        # memo key -> new collector (one reading arcs with punctuation) that a later method will read: the first
        # scan collects it too (a sweep fills this from `methods.SCANS`)
        self.planned_scans: dict[str, Callable[["Calibration"], Any]] = {}
        if parses is not None:
            self.__dict__["parses"] = parses
            self.parse_info = {"parser": "given", "cached": True}

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time spent in the block to `stage`, less what stages nested in it took (those count as
        themselves): stages never overlap, so they add up to the time spent in any of them."""
        t0 = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            spent = time.perf_counter() - t0
            self.timings[stage] = self.timings.get(stage, 0.0) + spent - self._nested.pop()
            if self._nested:
                self._nested[-1] += spent

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @cached_property
    def texts(self) -> Cut:
        """The calibration texts as the model reads them: cut after the last token --max-length keeps, so that
        parsing and word-level attention cost what the kept tokens cost (given gold parses stay whole)."""
        texts_a, texts_b = [e.text_a for e in self.examples], [e.text_b for e in self.examples]
        if "parses" in self.__dict__:
            return Cut(texts_a, texts_b, 0, 0)
        cut = cut_to_kept(self.tm.tokenizer, texts_a, texts_b, self.config.max_length, together=self.tm.kind != "embedding")
        if cut.rows_cut:
            log(f"{cut.rows_cut} calibration rows are longer than --max-length {self.config.max_length}: "
                f"only their first tokens are parsed and scored ({cut.chars_dropped:,} characters left out)")
        return cut

    @cached_property
    def parses(self) -> tuple[list[Parse], list[Parse | None]]:
        cut = self.texts
        texts = cut.texts_a + [t for t in cut.texts_b if t is not None]
        with self.timed("parse"), bar("parsing", len(set(texts))) as advance:
            parsed, self.parse_info = parse_texts(texts, self.config.parser, on_progress=advance)
        n = len(self.examples)
        it = iter(parsed[n:])
        return parsed[:n], [next(it) if t is not None else None for t in cut.texts_b]

    @cached_property
    def items(self) -> list[CalibItem]:
        pa, pb = self.parses
        cut = self.texts
        has_b = any(t is not None for t in cut.texts_b)
        return calibration_items(self.tm, cut.texts_a, pa, cut.texts_b if has_b else None, pb if has_b else None)

    def dependency_ranking(self, k: int, keep_punct: bool, source: str | None = None) -> DependencyRanking:
        """Labels by frequency in the calibration parses, or in another dataset's (`--dependencies-from`)."""
        counts = self.memo(("label-counts", keep_punct, source),
                           lambda: label_counts([p for p in self.ranking_parses(source) if p is not None], keep_punct))
        return DependencyRanking.from_counts(counts, k)

    def ranking_parses(self, source: str | None = None) -> list[Parse | None]:
        if source is None:
            return self.parses[0] + self.parses[1]
        return self.dependency_source(source)[0]

    def dependency_source(self, source: str) -> tuple[list[Parse], dict]:
        """Parses of a `--dependencies-from` source (same sample size, seed and parser as the run) and their provenance."""
        from synprune.calibrate.depsource import source_parses

        c = self.config
        return self.memo(("dependency-source", source), lambda: source_parses(source, c.calib_size, c.seed, c.parser, self.glue_dir))

    def run_scan(self, collectors: Sequence[Collector], keep_punct: bool = False, description: str = "attention",
                 ranking: DependencyRanking | None = None) -> Sequence[Collector]:
        """Run `collectors` over the calibration items; arcs carry label ids of `ranking` (default: the calibration's)."""
        index = (ranking or self.dependency_ranking(1, keep_punct)).index
        batches = self.scan_inputs
        with self.timed("attention"):
            scan(self.tm, self.items, collectors, index, keep_punct, self.config.batch_size, self.config.max_length,
                 description, batches)
        return collectors

    @cached_property
    def scan_inputs(self) -> list[ScanInput]:
        """The calibration items tokenized with offsets and aligned to their words, once for every scan."""
        items = self.items
        with self.timed("tokenize"):
            return scan_batches(self.tm, items, self.config.batch_size, self.config.max_length)

    def threshold(self, kind: str, keep_punct: bool = False) -> torch.Tensor:
        return self.attention_summary()[0].threshold(kind)

    def attention_summary(self) -> tuple[Any, Any]:
        """SAP's mean attention (its thresholds) and the rows' entropy and maximum (`entropy`, `confidence`):
        neither looks at arcs, and collecting both costs little next to the model's pass, so one scan makes them,
        and the collectors in `planned_scans` too (sapx's arc table in a sweep: one pass instead of two)."""
        from synprune.calibrate.summary import AttentionStats, MeanAttention

        def compute() -> tuple[Any, Any]:
            grid = self.tm.grid
            planned = {key: make(self) for key, make in self.planned_scans.items() if key not in self._memo}
            what = "attention threshold, entropy and confidence" + "".join(f", {key}" for key in planned)
            collectors = [MeanAttention(grid), AttentionStats(grid), *planned.values()]
            self.run_scan(collectors, keep_punct=bool(planned), description=what)  # only planned ones read arcs
            self._memo.update(planned)
            return collectors[0], collectors[1]

        return self.memo("attention-summary", compute)

    def mean_length(self) -> float:
        """Mean number of tokens per model input, for FLOPs budgets."""
        tokens = sum(int(b.inputs["attention_mask"].sum()) for b in self.prepared.batches)
        return tokens / max(1, self.prepared.n)

    @cached_property
    def prepared(self) -> Prepared:
        """The calibration examples tokenized for scoring (CF, gradients)."""
        with self.timed("tokenize"):
            return prepare(self.tm, self.examples, batch_size=self.config.batch_size, max_length=self.config.max_length)


def gold_calibration(tm: TaskModel, path: str | Path, config: DataOptions, metric_names: Sequence[str] = ()) -> Calibration:
    """A `Calibration` over a seeded sample (`config.calib_size`, `config.seed`) of a CoNLL-U file's sentences
    with their gold trees in place of spaCy's. The sentences carry no labels, so CF cannot score them."""
    from synprune.syntax.conllu import read_conllu

    bank = read_conllu(path).sample(config.calib_size, config.seed)
    examples = [Example(t) for t in bank.texts]
    ctx = Calibration(tm, examples, config, metric_names, parses=(bank.parses, [None] * len(examples)))
    ctx.parse_info = {**bank.info(), "sampled": len(examples)}
    return ctx


def model_data(tm: TaskModel, data: TaskData) -> TaskData:
    """The task's labels in the model's own label ids (classifiers with named labels)."""
    return align_labels(data, tm.model.config) if tm.kind == "classifier" else data


@dataclass
class Opened:
    """What a run, a sweep or `explain` works on."""

    tm: TaskModel
    ctx: Calibration
    data: TaskData | None = None  # None: explained on a treebank alone
    split: Split | None = None
    metric_names: tuple[str, ...] = ()


def open_context(model: Any, task: str | TaskData | None, config, *, tokenizer: Any = None,
                 glue_dir: str | Path | None = None, text_col: str | None = None, text_pair_col: str | None = None,
                 label_col: str | None = None, parses_file: str | Path | None = None, scored: bool = True,
                 check: Callable[[TaskData], None] | None = None, device_map: str | dict | None = None,
                 max_memory: dict | None = None) -> Opened:
    """The one way in: load the task (unless given) and hand it to `check` (refusals that need no model), load the
    model (folder, hub id, .gguf, object with `tokenizer`, TaskModel or None for the bundled MiniLM), refuse a
    --max-length it cannot embed, put the task's labels in the model's ids and bind its metrics (`scored`;
    explain scores nothing), draw the seeded split and open the calibration context on its calibration sample,
    or on a seeded sample of `parses_file`'s sentences with their gold trees (`task` None: no task at all)."""
    data = None
    if task is not None:
        data = task if isinstance(task, TaskData) else load_task(task, glue_dir, text_col, text_pair_col, label_col)
        if check is not None:
            check(data)
    tm = as_task_model(model, tokenizer, device_map, max_memory)  # placed over devices by a device map, if any
    config.check_model(max_positions(tm.model))
    split, metric_names = None, ()
    if data is not None:
        if scored:
            data = model_data(tm, data)
            metric_names = task_metrics(tm, data)
        split = make_split(data, config.calib_size, config.seed, config.eval_size)
    if parses_file is None:
        ctx = Calibration(tm, split.calibration, config, metric_names, glue_dir=glue_dir)
    else:
        ctx = gold_calibration(tm, parses_file, config, metric_names)
        if split is not None:
            split = Split(ctx.examples, split.evaluation, f"calibration: {len(ctx.examples)} seeded sentences of "
                          f"{parses_file} with gold trees; evaluation: {', '.join(split.evaluation)}")
    return Opened(tm, ctx, data, split, tuple(metric_names))
