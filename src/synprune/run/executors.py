"""Where a sweep's runs are computed (`synprune sweep --executor`).

The default (`pool`) is the sweep's own two-process pool on one machine (`sweep._run_all` with `evalpool`):
one calibration context shared by every run, evaluations in a worker process. An *executor* instead computes
each run as a job of its own, `submit(spec) -> Future` of the run's result, so runs can spread over machines:

- `RayExecutor` (`--executor ray`, or `ray:ADDRESS` for a running cluster): one Ray task per run;
- `InlineExecutor` (`--executor inline`): the jobs one after another in this process (the reference the
  others must match; tests use it).

A job (`execute`) rebuilds its calibration context from the same model, data paths, seeds and options
(`RunSpec`, paths made absolute) and returns the run's result as a dict. The driver checks that the job read
the same model and data (weights and data hashes), writes the run's folder atomically as the pool does, and
resume works as with the pool: runs already finished in the sweep folder are read back, not submitted.
Each job pays for its own calibration (parses and attention statistics are cached on the machine that runs
it, `SYNPRUNE_CACHE`), which is what spreading over machines costs.
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from synprune.errors import SynpruneError

RAY_INSTALL = "pip install 'synprune[ray]'"
EXECUTORS = ("pool", "inline", "ray", "ray:ADDRESS")


@dataclass(frozen=True)
class RunSpec:
    """Everything a job needs to compute one run, picklable: the model and data as names or absolute paths."""

    name: str  # the run's folder under DIR/runs
    model: str | None  # folder, hub id, .gguf file or "smollm2"; None: the bundled MiniLM
    task: str
    config: dict  # PruneConfig fields, as `Run.config(base).to_json()`
    columns: dict = field(default_factory=dict)  # glue_dir, text_col, text_pair_col, label_col


def execute(spec: RunSpec) -> dict:
    """Compute one run (what a Ray task runs): {"result": PruneResult.to_json(), "cf_log": [...]}."""
    from synprune.config import PruneConfig
    from synprune.run.prune import prune

    t = time.perf_counter()
    cfg = PruneConfig(**spec.config)
    result = prune(spec.model, task=spec.task, sparsity=cfg.sparsity, config=cfg, **spec.columns)
    result.details["run_seconds"] = round(time.perf_counter() - t, 3)
    return {"result": result.to_json(), "cf_log": list(result.cf_log)}


def execute_quietly(spec: RunSpec) -> dict:
    """`execute` without progress bars (a worker process's bars would interleave with the others')."""
    from synprune.progress import set_quiet

    set_quiet(True)
    return execute(spec)


class Executor(Protocol):
    def submit(self, spec: RunSpec) -> concurrent.futures.Future: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Each job in this process as it is submitted."""

    def submit(self, spec: RunSpec) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(execute(spec))
        except Exception as e:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(e)
        return future

    def close(self) -> None:
        pass


class RayExecutor:
    """One Ray task per run on the cluster at `address` ("auto", "HOST:PORT", "ray://HOST:10001"), or on a local
    Ray instance started here (and stopped by `close`) when there is none. Every node needs synprune and the
    model and data at the same paths (or a hub id the node can download)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        import ray

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=address, num_cpus=num_cpus if not address else None, log_to_driver=False,
                     include_dashboard=False)
        self.task = ray.remote(execute_quietly)

    def submit(self, spec: RunSpec) -> concurrent.futures.Future:
        return self.task.remote(spec).future()

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def check_executor(text: str | Executor | None) -> str | Executor | None:
    """`--executor` checked before any work: None for the default pool, else the text (or an `Executor` object,
    which the Python API accepts as it is); Ray must be installed."""
    if text is not None and not isinstance(text, str):
        return text
    if text in (None, "", "pool"):
        return None
    if text == "inline":
        return text
    kind, sep, address = text.partition(":")
    if kind != "ray" or (sep and not address):
        raise SynpruneError(f"--executor {text}: use {', '.join(EXECUTORS)}")
    if importlib.util.find_spec("ray") is None:
        raise SynpruneError(f"--executor {text} needs Ray, which is not installed: `{RAY_INSTALL}`")
    return text


def start_executor(text: str | Executor) -> Executor:
    if not isinstance(text, str):
        return text
    if text == "inline":
        return InlineExecutor()
    return RayExecutor(text.partition(":")[2] or None)


def portable(value: Any) -> Any:
    """A path that exists here as an absolute path (workers may start elsewhere); anything else as it is."""
    if value is None or not isinstance(value, (str, Path)):
        return value
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else str(value)


def run_specs(runs, base, model: Any, task: Any, columns: Mapping[str, Any]) -> list[RunSpec]:
    """The jobs of `runs`; the model and task must be given by name or path (a job loads them itself)."""
    from torch import nn

    from synprune.data.tasks import TaskData
    from synprune.model.load import TaskModel

    if isinstance(model, (nn.Module, TaskModel)) or isinstance(task, TaskData):
        raise SynpruneError("a sweep on an executor loads the model and data in each job: pass them by name or path")
    cols = {k: portable(v) for k, v in columns.items()}
    return [RunSpec(r.name, portable(model), portable(task), r.config(base).to_json(), cols) for r in runs]


def run_on(executor_text: str | Executor, specs: list[RunSpec], out_dir: Path | None, done: Mapping[str, Path],
           differs: Callable[[dict], list[str]], results: dict) -> None:
    """Every run's result into `results` (by name): those in `done` read back from their folders, the `specs`
    computed by the executor, each written to OUT/runs/NAME as it comes in; a job whose result `differs` from
    this sweep's model or data (what differs: "model", "data") is an error."""
    from synprune.progress import bar
    from synprune.run.result import PruneResult

    for name, folder in done.items():
        results[name] = PruneResult.read(folder)
    specs = [s for s in specs if s.name not in done]
    if not specs:
        return
    executor = start_executor(executor_text)
    try:
        futures = {executor.submit(s): s for s in specs}
        with bar("sweep runs", len(specs)) as advance:
            for future in concurrent.futures.as_completed(futures):
                spec, got = futures[future], future.result()
                result = PruneResult.from_json(got["result"], got["cf_log"])
                diffs = differs(got["result"])
                if diffs:
                    raise SynpruneError(f"run {spec.name} read another {' and '.join(diffs)} than this sweep: every "
                                        f"worker needs the same files at the same paths ({spec.model}, {spec.task})")
                if out_dir is not None:
                    result.write(out_dir / "runs" / spec.name)
                results[spec.name] = result
                advance(1)
    finally:
        if executor is not executor_text:  # started here (an Executor object passed in stays open)
            executor.close()
