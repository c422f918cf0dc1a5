"""Fine-tune an encoder with a fresh classification (or regression) head on a GLUE task.

Pruning needs a *task model*: the bundled MiniLM is a sentence-embedding model, so for every task but
STS-B it has to be fine-tuned first. This module does that with a plain torch loop (AdamW, linear
warmup and decay, dynamic padding, length-grouped batches) sized to finish on a laptop CPU, resumes
from its last checkpoint after an interruption, and caches finished models so that `task_model()`
can name them by what they were built from.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from synprune import __version__
from synprune.errors import SynpruneError
from synprune.io import atomic_write_json, cache_dir, sha256_bytes, sha256_dir
from synprune.data.tasks import Example, TaskData, load_task

CHECKPOINT_DIR = ".checkpoint"
CHECKPOINT_FILE = "state.pt"
RECORD_FILE = "finetune.json"


@dataclass(frozen=True)
class FinetuneOptions:
    """Everything that changes the trained weights (and so is part of the cache key and the checkpoint check)."""

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 128
    train_size: int | None = None  # seeded subsample of train; None = all of it
    warmup: float = 0.1  # fraction of all steps
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        """Refuse values that would crash later or silently train nothing."""
        if self.epochs < 1:
            raise SynpruneError(f"--epochs must be at least 1, not {self.epochs}")
        if not self.lr > 0:
            raise SynpruneError(f"--lr must be positive, not {self.lr}")
        if self.batch_size < 1:
            raise SynpruneError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.max_length < 8:
            raise SynpruneError(f"--max-length must be at least 8, not {self.max_length}")
        if self.train_size is not None and self.train_size < 1:
            raise SynpruneError(f"--train-size must be at least 1, not {self.train_size}")
        if not 0 <= self.warmup < 1:
            raise SynpruneError(f"--warmup is a fraction of the steps in [0, 1), not {self.warmup}")


# Per-task defaults, measured on 2 CPU cores (docs/task-models.md): SST-2 on a 20,000-example subsample for
# 2 epochs reaches 88.5% dev accuracy in about 10 minutes; the small tasks get more epochs because they
# have few steps per epoch (CoLA did not gain from 6 epochs, MRPC was as good with 3 at lr 5e-5).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sst2": {"train_size": 20000, "epochs": 2},
    "qqp": {"train_size": 20000, "epochs": 2},
    "mnli": {"train_size": 20000, "epochs": 2},
    "qnli": {"train_size": 20000, "epochs": 2},
    "cola": {"epochs": 3},
    "mrpc": {"epochs": 5},
    "stsb": {"epochs": 5},
    "rte": {"epochs": 5},
    "wnli": {"epochs": 3},
}


def default_options(task: str, **overrides: Any) -> FinetuneOptions:
    """The options a plain `synprune finetune --task T` uses, with any explicitly given ones on top."""
    unknown = set(overrides) - {f.name for f in fields(FinetuneOptions)}
    if unknown:
        raise SynpruneError(f"unknown fine-tuning option(s): {', '.join(sorted(unknown))}")
    base = dict(TASK_DEFAULTS.get(task, {}))
    base.update({k: v for k, v in overrides.items() if v is not None})  # None = "not given": keep the default
    if base.get("train_size") == 0:
        base["train_size"] = None  # 0 = the whole train split
    opts = FinetuneOptions(**base)
    opts.validate()
    return opts


# --------------------------------------------------------------------------------------------- data


@dataclass
class _Encoded:
    """The training set tokenized once, unpadded; batches are padded to their own longest sequence."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None  # None for models without segment ids (RoBERTa, DistilBERT)
    labels: list[float]
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def _encode(tokenizer: Any, examples: Sequence[Example], max_length: int) -> _Encoded:
    pair = [e.text_b or "" for e in examples] if examples and examples[0].text_b is not None else None
    enc = tokenizer([e.text_a for e in examples], pair, truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    tt = enc["token_type_ids"] if "token_type_ids" in enc else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _Encoded(ids, tt, [float(e.label) if e.label is not None else 0.0 for e in examples], pad)


def _collate(data: _Encoded, idx: Sequence[int], regression: bool) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to the longest sequence of this batch, not to max_length."""
    n = max(len(data.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), n), data.pad_id, dtype=torch.long)
    tt = torch.zeros((len(idx), n), dtype=torch.long)
    mask = torch.zeros((len(idx), n), dtype=torch.long)
    for row, i in enumerate(idx):
        k = len(data.input_ids[i])
        ids[row, :k] = torch.tensor(data.input_ids[i])
        if data.token_type_ids is not None:
            tt[row, :k] = torch.tensor(data.token_type_ids[i])
        mask[row, :k] = 1
    y = torch.tensor([data.labels[i] for i in idx], dtype=torch.float32 if regression else torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": y}
    if data.token_type_ids is not None:
        batch["token_type_ids"] = tt
    return batch


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group: int = 50) -> list[list[int]]:
    """Length-grouped batches, a pure function of (seed, epoch) so that a resumed run sees the same order.

    Shuffle, cut into chunks of `group` batches, sort each chunk by length (similar lengths share a batch,
    so little padding), then shuffle the batches so that lengths are not visited in order.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
        batches.extend(part[j:j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def training_examples(data: TaskData, opts: FinetuneOptions) -> list[Example]:
    """Labelled train examples, subsampled (seeded) to `train_size` when that is smaller."""
    train = [e for e in data.splits.get("train", []) if e.label is not None]
    if not train:
        raise SynpruneError(
            f"task {data.name} has no labelled train split in {data.source}; fine-tuning needs its train.tsv"
        )
    if opts.train_size is not None and opts.train_size < len(train):
        idx = sorted(random.Random(opts.seed).sample(range(len(train)), opts.train_size))
        train = [train[i] for i in idx]
    return train


# ------------------------------------------------------------------------------------------ helpers


def pick_device(device: str | None = None) -> torch.device:
    """A GPU when there is one (the same command runs on a laptop and on a GPU box)."""
    if device:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise SynpruneError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SynpruneError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """Checkpoint written to a temp file then renamed: a kill mid-save leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return f


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _fingerprint(base_hash: str, task: str, opts: FinetuneOptions, data_hashes: dict[str, str]) -> dict[str, Any]:
    """What a checkpoint or a finished folder was built from; resuming requires an exact match."""
    return {"base_sha256": base_hash, "task": task, "options": asdict(opts), "data": dict(sorted(data_hashes.items()))}


def _data_hashes(data: TaskData) -> dict[str, str]:
    return dict(data.hashes) if data.hashes else {"source": data.source}


def estimate_seconds(n_params: int, n_tokens: int, device: torch.device) -> float:
    """Rough wall time of training: 6 FLOPs per parameter per token at a fixed fraction of this machine's matmul
    speed (best of a few short timings). Only a first guess: on a CPU shared with other jobs, real runs took from
    0.5x to 2x of it, so `finetune` also reports a measured estimate after its first 20 steps."""
    n = 512
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(6):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    flops = 2 * n**3 / max(1e-9, best)
    efficiency = 0.25 if device.type == "cpu" else 0.05
    return 6.0 * n_params * n_tokens / (flops * efficiency)


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _Progress:
    """A rich progress bar (steps, loss, ETA) when wanted; silent otherwise."""

    def __init__(self, enabled: bool, total: int, done: int, description: str):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
        self.bar.start()
        self.task = self.bar.add_task(description, total=total, completed=done, loss="-")

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _QuietHF:
    """Silence transformers' own bars and warnings ("newly initialized classifier weights" is the point here)."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self.verbosity, self.bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self.verbosity)
        if self.bars:
            hf_logging.enable_progress_bar()


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(msg, highlight=False, markup=False)


# --------------------------------------------------------------------------------------------- core


def _build_model(base_path: str, num_labels: int, seed: int) -> torch.nn.Module:
    """The base encoder with a new head; seeded so that the head's initialisation is reproducible."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    kw: dict[str, Any] = {"num_labels": num_labels, "attn_implementation": "eager", "ignore_mismatched_sizes": True}
    if num_labels == 1:
        kw["problem_type"] = "regression"
    else:
        kw["problem_type"] = "single_label_classification"
    try:
        with _QuietHF():
            return AutoModelForSequenceClassification.from_pretrained(base_path, **kw)
    except (OSError, ValueError) as e:
        raise SynpruneError(f"could not build a classifier on {base_path}: {str(e).splitlines()[0]}") from None


def finetune(
    out: str | Path,
    task: str | TaskData = "sst2",
    base: str | Path | None = None,
    options: FinetuneOptions | None = None,
    glue_dir: str | Path | None = None,
    device: str | None = None,
    checkpoint_every: int = 200,
    fresh: bool = False,
    threads: int | None = None,
    progress: bool = True,
    quiet: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune `base` (default: the bundled MiniLM) on `task`'s train split, evaluate on dev, save to `out`.

    `out` becomes a standard Hugging Face folder (config, weights, tokenizer) plus `finetune.json`. While it
    trains, `out/.checkpoint/state.pt` holds model, optimizer, scheduler, step and RNG state (rewritten
    atomically every `checkpoint_every` steps and at each epoch end); calling again with the same arguments
    resumes from it. A checkpoint or finished folder built from different options, base or data is an
    error unless `fresh=True`, which discards it. `threads` (CPU) defaults to every core this process may
    use. `on_step(step, loss)` is called after every step.
    Returns the `finetune.json` record.
    """
    from synprune.model.load import _resolve

    t_start, cpu_start = time.time(), time.process_time()
    out = Path(out)
    data = task if isinstance(task, TaskData) else load_task(task, glue_dir)
    if data.num_labels < 1:
        raise SynpruneError(f"task {data.name} has no labels; fine-tuning needs a labelled train split")
    opts = options or default_options(data.name)
    opts.validate()
    if checkpoint_every < 1:
        raise SynpruneError(f"--checkpoint-every must be at least 1, not {checkpoint_every}")
    base_name, base_path, local = _resolve(base)
    if local and out.resolve() == Path(base_path).resolve():
        raise SynpruneError(f"--out {out} is the base model's own folder; fine-tuning would overwrite it, pass another --out")
    base_hash = sha256_dir(base_path) if local else f"hub:{base_path}"
    fp = _fingerprint(base_hash, data.name, opts, _data_hashes(data))
    done = _finished_or_cleared(out, fp, fresh, quiet)
    if done is not None:
        return done

    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(threads or _cpu_threads())
    ckpt_path = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    state = _read_checkpoint(ckpt_path, fp)
    tokenizer = _load_tokenizer(base_path, base_name)
    train = training_examples(data, opts)
    encoded = _encode(tokenizer, train, opts.max_length)
    lengths = [len(x) for x in encoded.input_ids]
    regression = data.num_labels == 1
    run = _Training.start(_build_model(base_path, data.num_labels, opts.seed).to(dev), opts, len(encoded))
    if state is not None:
        run.resume(state, dev)
        _say(f"resuming {data.name} fine-tuning from step {run.step}/{run.total} ({ckpt_path})", quiet)
    else:
        torch.manual_seed(opts.seed)
    del state

    estimate = estimate_seconds(_encoder_params(run.model.config), sum(lengths) * opts.epochs, dev) if not quiet else None
    _say(f"fine-tuning {base_name} on {data.name}: {len(train)} examples x {opts.epochs} epoch(s) = {run.total} steps "
         f"on {dev}" + (f", roughly {_fmt_duration(estimate * (run.total - run.step) / run.total)}" if estimate else ""), quiet)
    train_seconds = _train(run, encoded, lengths, regression, opts, dev,
                           lambda t_train: _atomic_torch_save(run.checkpoint(fp, dev, (t_start, cpu_start, t_train)), ckpt_path),
                           checkpoint_every, _Progress(progress and not quiet, run.total, run.step, f"{data.name} fine-tune"),
                           quiet, on_step)

    # Save as a standard Hugging Face folder, then reload it the way the pruning commands will.
    run.model.eval()
    run.model.config.problem_type = "regression" if regression else "single_label_classification"
    with _QuietHF():
        run.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        metrics, eval_seconds = evaluate_folder(out, data, opts.max_length, dev)
    main_metric = data.metrics[0]
    record = {
        "task": data.name,
        "base": {"name": base_name, "path": base_path, "sha256": base_hash},
        "metric": main_metric,
        "score": metrics[data.eval_splits[0]][main_metric],
        "metrics": metrics,
        "epochs": opts.epochs,
        "seed": opts.seed,
        "options": asdict(opts),
        "train_examples": len(train),
        "train_available": len([e for e in data.splits["train"] if e.label is not None]),
        "steps": run.total,
        "history": run.history,
        "resumed_at_steps": run.resumed,
        "device": str(dev),
        "estimated_train_seconds": round(estimate, 1) if estimate else None,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "time": {"train_seconds": round(train_seconds + run.train_before, 1), "eval_seconds": round(eval_seconds, 1),
                 "total_seconds": round(run.elapsed_before + time.time() - t_start, 1),
                 # CPU seconds of all threads: on a machine shared with other jobs, wall time alone misleads
                 "cpu_seconds": round(run.cpu_before + time.process_time() - cpu_start, 1),
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "data": {"source": data.source, "hashes": _data_hashes(data)},
        "versions": _versions(),
        "fingerprint": fp,
    }
    atomic_write_json(out / RECORD_FILE, record)  # written last: its presence marks a finished folder
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    shown = ", ".join(f"{s} {k} {v:.2f}" for s, m in metrics.items() for k, v in m.items())
    _say(f"{data.name}: {shown} ({_fmt_duration(record['time']['total_seconds'])}); saved to {out}", quiet)
    return record


def _finished_or_cleared(out: Path, fp: dict[str, Any], fresh: bool, quiet: bool) -> dict[str, Any] | None:
    """The record of `out` when it is already fine-tuned with these options; refuse a folder that is neither an
    earlier fine-tuning nor empty, or one fine-tuned otherwise; with `fresh`, clear an earlier fine-tuning first."""
    record_path = out / RECORD_FILE
    if not fresh and not record_path.is_file() and not (out / CHECKPOINT_DIR).is_dir():
        from synprune.io import refuse_to_replace

        refuse_to_replace(out, False, "--out", "--fresh")  # a user's folder, not an earlier fine-tuning
    if fresh:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        record_path.unlink(missing_ok=True)
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("fingerprint") == fp:
            _say(f"{out} is already fine-tuned with these options; nothing to do", quiet)
            return record
        raise SynpruneError(
            f"{out} already holds a model fine-tuned with different options, base or data; "
            f"pass another --out, or --fresh to retrain into it"
        )
    return None


def _read_checkpoint(ckpt_path: Path, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The interrupted run's state to resume from, or None; a checkpoint of other options is refused."""
    if not ckpt_path.is_file():
        return None
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # a checkpoint from another torch version or a damaged file
        raise SynpruneError(f"cannot read checkpoint {ckpt_path} ({type(e).__name__}); pass --fresh to restart") from None
    if state.get("fingerprint") != fp:
        diff = _fingerprint_diff(state.get("fingerprint") or {}, fp)
        raise SynpruneError(
            f"{ckpt_path} was written by a run with different {diff}; rerun with the same options to resume, "
            f"or pass --fresh to discard it and start again"
        )
    return state


def _load_tokenizer(base_path: str, base_name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_path, use_fast=True)
    except OSError as e:
        raise SynpruneError(f"could not load the tokenizer of {base_name}: {str(e).splitlines()[0]}") from None


@dataclass
class _Training:
    """The model, its optimizer and schedule, and how far training got (with the time earlier runs spent)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_epoch: int
    total: int
    step: int = 0
    history: list = field(default_factory=list)
    resumed: list = field(default_factory=list)
    running: float | None = None  # the loss's moving average
    elapsed_before: float = 0.0  # time spent by earlier, interrupted runs
    cpu_before: float = 0.0
    train_before: float = 0.0

    @classmethod
    def start(cls, model: torch.nn.Module, opts: FinetuneOptions, n_examples: int) -> "_Training":
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # biases and LayerNorm
        # fused: one kernel for all parameters; on CPU the unfused update of the 30k-word embedding costs
        # as much as the forward pass.
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr, fused=True)
        per_epoch = math.ceil(n_examples / opts.batch_size)
        total = per_epoch * opts.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(int(opts.warmup * total), total))
        return cls(model, optimizer, scheduler, per_epoch, total)

    def resume(self, state: dict[str, Any], dev: torch.device) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.resumed = list(state.get("resumed", [])) + [self.step]
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.cpu_before = float(state.get("cpu", 0.0))
        self.train_before = float(state.get("train", 0.0))
        self.running = state.get("loss_ema")
        _set_rng_state(state["rng"], dev)

    def checkpoint(self, fp: dict[str, Any], dev: torch.device, clock: tuple[float, float, float]) -> dict[str, Any]:
        """What `out/.checkpoint/state.pt` holds; `clock`: this run's start (wall, CPU) and training start."""
        t_start, cpu_start, t_train = clock
        return {
            "fingerprint": fp, "step": self.step, "history": self.history, "resumed": self.resumed,
            "loss_ema": self.running, "elapsed": self.elapsed_before + time.time() - t_start,
            "cpu": self.cpu_before + time.process_time() - cpu_start, "train": self.train_before + time.time() - t_train,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": _rng_state(dev),
        }


def _train(run: _Training, encoded: _Encoded, lengths: list[int], regression: bool, opts: FinetuneOptions,
           dev: torch.device, save_checkpoint: Callable[[float], None], checkpoint_every: int, bar: _Progress, quiet: bool,
           on_step: Callable[[int, float], None] | None) -> float:
    """Train from `run.step` to the end, checkpointing (`save_checkpoint(time training started)`) every
    `checkpoint_every` steps and at each epoch's end; the seconds it took."""
    run.model.train()
    t_train, first_step, total = time.time(), run.step, run.total
    order: tuple[int, list[list[int]]] = (-1, [])
    try:
        while run.step < total:
            epoch, i = divmod(run.step, run.per_epoch)
            if order[0] != epoch:
                order = (epoch, epoch_batches(lengths, opts.batch_size, opts.seed, epoch))
            batch = {k: v.to(dev) for k, v in _collate(encoded, order[1][i], regression).items()}
            y = batch.pop("labels")
            logits = run.model(**batch).logits
            if regression:
                loss = torch.nn.functional.mse_loss(logits.squeeze(-1), y)
            else:
                loss = torch.nn.functional.cross_entropy(logits, y)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), opts.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.step += 1
            step, value = run.step, float(loss.detach())
            run.running = value if run.running is None else 0.98 * run.running + 0.02 * value
            if step % run.per_epoch == 0:
                run.history.append({"epoch": step // run.per_epoch, "step": step, "loss_ema": round(run.running, 6)})
            bar.update(step, run.running)
            if step - first_step == 20 and bar.bar is None and step < total:  # a measured estimate, for log files
                left = (time.time() - t_train) / 20 * (total - step)
                _say(f"the first 20 steps took {_fmt_duration(time.time() - t_train)}: about "
                     f"{_fmt_duration(left)} left", quiet)
            if on_step is not None:
                on_step(step, value)
            if step % checkpoint_every == 0 or step % run.per_epoch == 0:
                save_checkpoint(t_train)  # also at the last step: an interruption while saving or evaluating loses nothing
                if bar.bar is None:  # no bar (a log file): a line per checkpoint instead
                    _say(f"step {step}/{total} loss {run.running:.4f} {_fmt_duration(time.time() - t_train)}", quiet)
    finally:
        bar.close()
    return time.time() - t_train


def _fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    o_opts, n_opts = old.get("options", {}), new.get("options", {})
    for k in n_opts:
        if o_opts.get(k) != n_opts[k]:
            parts.append(f"{k} ({o_opts.get(k)!r} there, {n_opts[k]!r} now)")
    for k, label in (("task", "task"), ("base_sha256", "base model"), ("data", "training data")):
        if old.get(k) != new.get(k):
            parts.append(label)
    return ", ".join(parts) if parts else "settings"


def _versions() -> dict[str, str]:
    import transformers

    return {"synprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def evaluate_folder(path: str | Path, data: TaskData, max_length: int = 128,
                    device: torch.device | str = "cpu") -> tuple[dict[str, dict[str, float]], float]:
    """Dev metrics of a saved folder, loaded with `load_model` exactly as the pruning commands load it."""
    from synprune.evaluation.evaluate import evaluate, prepare, task_metrics
    from synprune.model.load import load_model

    t0 = time.time()
    tm = load_model(path, kind="classifier", device=device)
    names = task_metrics(tm, data)
    out = {}
    for split in data.eval_splits:
        prepared = prepare(tm, data.splits[split], batch_size=64, max_length=max_length)
        out[split] = {k: round(v, 4) for k, v in evaluate(tm, prepared, names).items()}
    return out, time.time() - t0


# -------------------------------------------------------------------------------------------- cache


def _slug(name: str) -> str:
    name = name.split(":")[-1].rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def cache_key(task: str, base: str | Path | None = None, glue_dir: str | Path | None = None,
              **options: Any) -> tuple[str, FinetuneOptions, TaskData, tuple[str, str, bool]]:
    """(key, resolved options, task data, resolved base): the key hashes base weights, task, options and data."""
    from synprune.model.load import _resolve

    data = load_task(task, glue_dir)
    opts = default_options(data.name, **options)
    resolved = _resolve(base)
    base_hash = sha256_dir(resolved[1]) if resolved[2] else f"hub:{resolved[1]}"
    fp = _fingerprint(base_hash, data.name, opts, _data_hashes(data))
    return sha256_bytes(json.dumps(fp, sort_keys=True).encode())[:16], opts, data, resolved


def cached_model_dir(task: str, base: str | Path | None = None, glue_dir: str | Path | None = None,
                     **options: Any) -> Path:
    """Where `task_model` keeps (or would keep) this fine-tuned model."""
    key, _, data, resolved = cache_key(task, base, glue_dir, **options)
    return cache_dir() / "task-models" / f"{data.name}-{_slug(resolved[0])}-{key}"


def task_model(task: str, base: str | Path | None = None, *, glue_dir: str | Path | None = None,
               device: str | None = None, threads: int | None = None, progress: bool = True, quiet: bool = False,
               **options: Any) -> Path:
    """The cached fine-tuned folder for (base, task, options), fine-tuning it first if it is missing.

    `options` are `FinetuneOptions` fields (epochs, lr, batch_size, max_length, train_size, ...); omitted
    ones take the task's defaults. An interrupted build resumes from its checkpoint on the next call.
    """
    key, opts, data, resolved = cache_key(task, base, glue_dir, **options)
    folder = cache_dir() / "task-models" / f"{data.name}-{_slug(resolved[0])}-{key}"
    if (folder / RECORD_FILE).is_file():
        return folder
    resume = " (resuming its checkpoint)" if (folder / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file() else ""
    _say(f"no cached {data.name} model for {resolved[0]}: fine-tuning it now{resume} into {folder}", quiet)
    finetune(folder, data, base, opts, device=device, threads=threads, progress=progress, quiet=quiet)
    return folder


def _encoder_params(cfg: Any) -> int:
    """Parameters that cost FLOPs per token (transformer layers, not the embedding lookup)."""
    h = getattr(cfg, "hidden_size", 768)
    inter = getattr(cfg, "intermediate_size", 4 * h)
    layers = getattr(cfg, "num_hidden_layers", 12)
    return layers * (4 * h * h + 2 * h * inter)
