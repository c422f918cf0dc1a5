"""`synprune finetune`: give an encoder a task head (the bundled MiniLM by default) so that it can be pruned."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import app


@app.command()
def finetune(
    task: str = typer.Option(..., "--task", "-t", help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base encoder folder or hub id (default: bundled all-MiniLM-L6-v2)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: the task-model cache, as `task_model()` uses)."),
    glue_dir: Optional[Path] = typer.Option(None, "--glue-dir", help="Local GLUE folder (default: SYNPRUNE_GLUE_DIR or ../shared/data/glue)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: per task, 2-5)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW, linear warmup and decay) (default: 1e-4)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per step (default: 32)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Longest input in tokens; longer is truncated (default: 128)."),
    train_size: Optional[int] = typer.Option(None, "--train-size", help="Seeded subsample of train; 0 = all (default: 20000 for SST-2/QQP/MNLI/QNLI, else all)."),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="Warmup as a fraction of all steps (default: 0.1)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay (default: 0.01)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for head init, data order, dropout, subsample (default: 0)."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Steps between checkpoints in OUT/.checkpoint."),
    fresh: bool = typer.Option(False, "--fresh", help="Discard an existing checkpoint or finished model in OUT and start again."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: a GPU if there is one)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: every core available)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Fine-tune a classification (STS-B: regression) head on a GLUE task's train split and score it on dev.

    Writes a Hugging Face folder with finetune.json (metrics, options, time, data hashes). Interrupted?
    Rerun the same command: it resumes from OUT/.checkpoint. Different options against an existing
    checkpoint are refused (pass --fresh to restart).
    """
    from synprune.train.finetune import cached_model_dir, default_options, finetune as run
    from synprune.data.tasks import load_task

    given = dict(epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, train_size=train_size,
                 warmup=warmup, weight_decay=weight_decay, seed=seed)
    data = load_task(task, glue_dir)
    opts = default_options(data.name, **given)
    target = out if out is not None else cached_model_dir(task, model, glue_dir, **given)
    record = run(target, data, model, opts, device=device, checkpoint_every=checkpoint_every, fresh=fresh,
                 threads=threads, progress=progress)
    typer.echo(f"{record['task']} {record['metric']} {record['score']:.2f} -> {target}")
