"""Score a (masked or pruned) model on task examples with the task's metrics.

Inputs are tokenized once (`Prepared`) and reused: Candidate Filtering and the sweep evaluate the same
examples many times under different head masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from synprune.devices import input_device
from synprune.evaluation import lm as LM
from synprune.data import metrics as M
from synprune.errors import SynpruneError
from synprune.model.load import TaskModel
from synprune.data.tasks import Example, TaskData


@dataclass
class Batch:
    """Tokenized inputs; for embedding models `inputs_b` holds the second sentences, encoded separately."""

    index: np.ndarray  # positions of these examples in the original list
    inputs: dict[str, torch.Tensor]
    inputs_b: dict[str, torch.Tensor] | None
    labels: torch.Tensor | None
    lm: bool = False  # a causal LM's text: scored (and trained on) by next-token prediction, no labels
    choices: list[dict[str, torch.Tensor]] | None = None  # causal LM, zero-shot: prompt + each label word


@dataclass
class Prepared:
    """`batches` keep each example whole (gradient methods need an example's loss in one batch). For
    sentence-pair embedding models, scoring instead embeds each distinct sentence once, in `sentences`
    batches sorted by their own token length, and `pairs[i]` names the two sentences of example i: padding
    to a pair's longer side wasted about a third of the work."""

    batches: list[Batch]
    n: int
    labels: np.ndarray | None
    sentences: list[Batch] | None = None
    pairs: np.ndarray | None = None
    reference: np.ndarray | None = None  # the dense model's outputs, for label-free scores (`fidelity`)
    windows: list[Batch] | None = None  # a causal LM's text as token windows (`lm.Windowing`), for window_perplexity
    windowing: LM.Windowing | None = None

    @property
    def lm(self) -> bool:
        return bool(self.batches) and self.batches[0].lm


def task_metrics(tm: TaskModel, task: TaskData) -> tuple[str, ...]:
    """The metrics this model can be scored with on this task, or a clear refusal. A causal LM on a
    classification task is bound here to the task's zero-shot prompt (`tm.prompt`), which `prepare` uses."""
    if task.lm:
        if tm.kind != "lm":
            raise SynpruneError(f"task {task.name} is language modelling (perplexity); it needs a causal LM such as "
                                f"--model smollm2, not the {tm.kind} model {tm.name}")
        tm.prompt = None
        return task.metrics
    if not task.has_labels:
        from synprune.evaluation.fidelity import metrics_for

        return metrics_for(tm.kind, task.name)
    if tm.kind == "lm":
        tm.prompt = LM.prompt_for(task.name, task.num_labels)
        return task.metrics
    if tm.kind == "embedding":
        if not (task.is_regression and task.is_pair):
            raise SynpruneError(
                f"{tm.name} is a sentence-embedding model: it can only be scored zero-shot on STS-B-like pair "
                f"similarity tasks, not {task.name}; pass a fine-tuned classifier (see `synprune finetune`)"
            )
        return ("spearman", "pearson")
    n = int(getattr(tm.model.config, "num_labels", task.num_labels))
    if task.num_labels and n != task.num_labels:
        raise SynpruneError(f"{tm.name} predicts {n} labels but task {task.name} has {task.num_labels}; use a model fine-tuned on it")
    return task.metrics


def _token_order(tok, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int) -> np.ndarray:
    """Longest first by token count, so each batch pads to about its own length."""
    enc = tok(list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length)
    return np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")


def prepare(tm: TaskModel, examples: Sequence[Example], batch_size: int = 64, max_length: int = 128,
            windowing: LM.Windowing | None = None) -> Prepared:
    """Tokenize once, in length-sorted batches (less padding, faster on CPU). With `windowing`, a causal LM's
    text is also cut into token windows (`window_perplexity`)."""
    if tm.kind == "lm":
        return _prepare_lm(tm, examples, min(batch_size, LM.LM_BATCH), max_length, windowing)
    tok = tm.tokenizer
    kw = dict(padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    has_labels = bool(examples) and all(e.label is not None for e in examples)
    is_pair = bool(examples) and examples[0].text_b is not None
    embedding = tm.kind == "embedding"
    order = _token_order(tok, [e.text_a for e in examples],
                         None if embedding or not is_pair else [e.text_b for e in examples], max_length) if examples else []
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ex = [examples[i] for i in idx]
        if embedding:
            inputs = dict(tok([e.text_a for e in ex], **kw))
            inputs_b = dict(tok([e.text_b or "" for e in ex], **kw)) if is_pair else None
        else:
            pair = [e.text_b for e in ex] if is_pair else None
            inputs, inputs_b = dict(tok([e.text_a for e in ex], pair, **kw)), None
        labels = torch.tensor([e.label for e in ex], dtype=torch.float32) if has_labels else None
        batches.append(Batch(idx, inputs, inputs_b, labels))
    labels = np.array([e.label for e in examples], dtype=np.float64) if has_labels else None
    prepared = Prepared(batches, len(examples), labels)
    if embedding and is_pair:
        ids: dict[str, int] = {}
        prepared.pairs = np.array([[ids.setdefault(e.text_a, len(ids)), ids.setdefault(e.text_b or "", len(ids))]
                                   for e in examples], dtype=np.int64).reshape(-1, 2)
        texts = list(ids)
        sorted_ids = _token_order(tok, texts, None, max_length)
        prepared.sentences = [Batch(idx, dict(tok([texts[i] for i in idx], **kw)), None, None)
                              for idx in (sorted_ids[s:s + batch_size] for s in range(0, len(texts), batch_size))]
    return prepared


def _prepare_lm(tm: TaskModel, examples: Sequence[Example], batch_size: int, max_length: int,
                windowing: LM.Windowing | None = None) -> Prepared:
    """A causal LM's batches: the texts (language modelling) or the prompted texts with each label word."""
    tok, prompt = tm.tokenizer, tm.prompt
    texts = [e.text_a if prompt is None else prompt.text(e.text_a, e.text_b) for e in examples]
    has_labels = prompt is not None and bool(examples) and all(e.label is not None for e in examples)
    order = _token_order(tok, texts, None, max_length) if examples else []
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        chunk = [texts[i] for i in idx]
        inputs = dict(tok(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        labels = torch.tensor([examples[i].label for i in idx], dtype=torch.float32) if has_labels else None
        choices = LM.choice_inputs(tok, chunk, prompt.words) if prompt is not None else None
        batches.append(Batch(idx, inputs, None, labels, lm=prompt is None, choices=choices))
    labels = np.array([e.label for e in examples], dtype=np.float64) if has_labels else None
    prepared = Prepared(batches, len(examples), labels)
    if windowing is not None and prompt is None and examples:
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        windows = LM.window_batches(LM.text_windows(tok, texts, windowing), pad)
        prepared.windows = [Batch(np.arange(0), w, None, None, lm=True) for w in windows]
        prepared.windowing = windowing
    return prepared


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _model_inputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    device = input_device(model)
    return {k: v.to(device) for k, v in inputs.items()}


def lm_pooled(tm: TaskModel, batch: Batch) -> torch.Tensor:
    """A causal LM's final hidden state, mean-pooled over each text's tokens (a small stand-in for its output)."""
    out = tm.model(**_model_inputs(tm.model, batch.inputs), output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]
    return mean_pool(hidden, batch.inputs["attention_mask"].to(hidden.device))


def embed(tm: TaskModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = tm.model(**_model_inputs(tm.model, inputs))
    return mean_pool(out.last_hidden_state, inputs["attention_mask"].to(out.last_hidden_state.device))


def outputs(tm: TaskModel, batch: Batch) -> torch.Tensor:
    """Differentiable model output per example: cosine similarity (embedding), logits (classifier; a causal
    LM on text), or label-word log-likelihoods (a causal LM, zero-shot)."""
    if batch.choices is not None:
        return LM.choice_scores(tm.model, batch.choices)
    if batch.lm:
        return LM.lm_logits(tm.model, batch.inputs)
    if tm.kind == "embedding":
        a = embed(tm, batch.inputs)
        if batch.inputs_b is None:
            return a
        return torch.nn.functional.cosine_similarity(a, embed(tm, batch.inputs_b), dim=-1)
    return tm.model(**_model_inputs(tm.model, batch.inputs)).logits


def loss(tm: TaskModel, batch: Batch, out: torch.Tensor | None = None) -> torch.Tensor:
    """Task loss for gradient methods: squared error to gold/5 (embedding on STS-B), the classifier's loss
    (cross-entropy over label-word scores for a zero-shot LM), or a causal LM's mean next-token loss."""
    out = outputs(tm, batch) if out is None else out
    if batch.lm:
        nll, n = LM.token_nll(out, batch.inputs["input_ids"].to(out.device), batch.inputs["attention_mask"].to(out.device))
        return nll / n.clamp(min=1)
    if batch.labels is None:
        raise SynpruneError("this method needs labels; the calibration data has none")
    y = batch.labels.to(out.device)
    if tm.kind == "embedding":
        return torch.mean((out - y / 5.0) ** 2)
    if out.shape[-1] == 1:
        return torch.nn.functional.mse_loss(out.squeeze(-1), y)
    return torch.nn.functional.cross_entropy(out, y.long())


@torch.no_grad()
def predict(tm: TaskModel, prepared: Prepared) -> np.ndarray:
    if prepared.sentences is not None:
        chunks = [(b.index, embed(tm, b.inputs).float().cpu()) for b in prepared.sentences]
        emb = torch.empty(sum(len(i) for i, _ in chunks), chunks[0][1].shape[-1])
        for index, e in chunks:
            emb[torch.as_tensor(index)] = e
        pairs = torch.as_tensor(prepared.pairs)
        return torch.nn.functional.cosine_similarity(emb[pairs[:, 0]], emb[pairs[:, 1]], dim=-1).numpy().astype(np.float64)
    preds = np.zeros(prepared.n)
    for b in prepared.batches:
        out = outputs(tm, b).float().cpu()
        if out.ndim == 2:
            out = out.squeeze(-1) if out.shape[-1] == 1 else out.argmax(-1).float()
        preds[b.index] = out.numpy()
    return preds


def n_windows(prepared: Prepared) -> int:
    return sum(len(b.inputs["input_ids"]) for b in prepared.windows or [])


@torch.no_grad()
def lm_perplexity(tm: TaskModel, prepared: Prepared, name: str = LM.SENTENCE) -> float:
    """Token-weighted perplexity over every text of `prepared` (`perplexity`), or over its token windows
    (`window_perplexity`)."""
    if name == LM.WINDOW and prepared.windows is None:
        raise SynpruneError("window_perplexity needs the text cut into windows: prepare(..., windowing=lm.Windowing(...))")
    nll, tokens = 0.0, 0
    for b in prepared.windows if name == LM.WINDOW else prepared.batches:
        out = outputs(tm, b)
        value, n = LM.token_nll(out, b.inputs["input_ids"].to(out.device), b.inputs["attention_mask"].to(out.device))
        nll, tokens = nll + float(value), tokens + int(n)
    return LM.perplexity(nll, tokens)


def evaluate(tm: TaskModel, prepared: Prepared, metric_names: Sequence[str]) -> dict[str, float]:
    if prepared.lm:
        return {name: lm_perplexity(tm, prepared, name) for name in metric_names}
    if prepared.reference is not None:
        from synprune.evaluation import fidelity

        return fidelity.compute(metric_names, dense_outputs(tm, prepared), prepared.reference)
    if prepared.labels is None:
        raise SynpruneError("evaluation needs labels; pass --label-col for a data file")
    return M.compute(metric_names, predict(tm, prepared), prepared.labels)


@torch.no_grad()
def dense_outputs(tm, prepared) -> np.ndarray:
    """Per example (original order): the mean-pooled embedding(s) of an embedding model, a classifier's logits
    (what the label-free scores of `fidelity` compare with the dense model's)."""
    rows: list[np.ndarray | None] = [None] * prepared.n
    for b in prepared.batches:
        if tm.kind == "embedding":
            out = embed(tm, b.inputs)
            if b.inputs_b is not None:
                out = torch.cat([out, embed(tm, b.inputs_b)], dim=-1)
        else:
            out = outputs(tm, b)
        for i, row in zip(b.index, out.float().cpu().numpy()):
            rows[int(i)] = row
    return np.stack(rows) if rows else np.zeros((0, 0))
