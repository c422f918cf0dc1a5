"""What each attention head does, in the terms of Clark et al. (2019, "What Does BERT Look At?"), next to
its SAP penalty: SAP's interpretability promise is that the heads it prunes are the ones that do not
track syntax, and this module lets a user check it.

Per head, over the calibration sentences:
- relation accuracy, both directions: for each arc of relation r, does the word the dependent attends to
  most (among the other words) be its head (`dep2head`), or the word the head attends to most be the
  dependent (`head2dep`)? Each relation also gets the best fixed-offset baseline (the head is always k
  words away, k in -5..5), the bar a head must clear to show it tracks r rather than position;
- attention share on special tokens ([CLS], [SEP], ...) and on punctuation words, and the entropy of its
  attention rows: the "no-op" and broad-attention behaviours Clark et al. describe;
- SAP's penalty (from the SAP method itself) and its strong attention (word-level values above SAP's
  threshold), which with a result.json tells how much of both the kept heads retain.
Everything is accumulated batch by batch, like SAP's own statistics.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from synprune.calibrate.attention import AttentionBatch, CalibItem, most_attended, punct_words, scan
from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.syntax.dependencies import PUNCT
from synprune.errors import SynpruneError
from synprune.io import atomic_write_json, atomic_write_text

Head = tuple[int, int]
MapHead = tuple[Head, "str | None", str]  # a head drawn on attention maps, its relation (if any) and direction
DIRECTIONS = ("dep2head", "head2dep")
OFFSETS = tuple(k for k in range(-5, 6) if k != 0)
CSV_COLUMNS = ("relation", "layer", "head", "direction", "accuracy", "baseline_offset", "baseline_accuracy")


class RelationAccuracy:
    """Per relation and direction, how many arcs each head gets right; per relation, fixed-offset hits."""

    per_layer = True  # takes a streamed scan's layers one at a time

    def __init__(self, grid: tuple[int, int], labels: Sequence[str]):
        self.labels = tuple(labels)
        self.correct = torch.zeros((2, len(labels), *grid), dtype=torch.float64)
        self.count = torch.zeros(len(labels), dtype=torch.float64)
        self.offset_hits = torch.zeros((len(labels), len(OFFSETS)), dtype=torch.float64)

    def update(self, batch: AttentionBatch) -> None:
        a = batch.arcs
        if not len(a):
            return
        pred = most_attended(batch)
        dep2head = pred[a.item, :, :, a.dep] == a.head[:, None, None]  # (P, L, H), L: the layers in batch.rows
        head2dep = pred[a.item, :, :, a.head] == a.dep[:, None, None]
        self.correct[0][:, batch.rows].index_add_(0, a.label, dep2head.double())
        self.correct[1][:, batch.rows].index_add_(0, a.label, head2dep.double())
        if batch.count_items:
            self.count += torch.bincount(a.label, minlength=len(self.labels)).double()
            at_offset = (a.head - a.dep)[:, None] == torch.tensor(OFFSETS)[None]
            self.offset_hits.index_add_(0, a.label, at_offset.double())


class HeadProfile:
    """Per head: attention share on special tokens and punctuation, row entropy, strong attention above tau."""

    per_layer = True  # takes a streamed scan's layers one at a time

    def __init__(self, tau: torch.Tensor):
        grid = tuple(tau.shape)
        self.tau = tau.float()
        self.special = torch.zeros(grid, dtype=torch.float64)
        self.entropy = torch.zeros(grid, dtype=torch.float64)
        self.punct = torch.zeros(grid, dtype=torch.float64)
        self.strong_count = torch.zeros(grid, dtype=torch.float64)
        self.strong_mass = torch.zeros(grid, dtype=torch.float64)
        self.token_rows = 0
        self.word_rows = 0
        self.pairs = 0

    def update(self, batch: AttentionBatch) -> None:
        A, rows, ls = batch.token_attn, batch.token_mask, batch.rows  # A: (B, L, H, T, T), L: the layers in ls
        special = rows & (batch.special_mask if batch.special_mask is not None else torch.zeros_like(rows))
        to_special = A @ special[:, None, None, :, None].to(A.dtype)  # (B, L, H, T, 1)
        self.special[ls] += (to_special[..., 0] * rows[:, None, None]).sum((0, 3)).double()
        entropy = -(A * A.clamp_min(1e-12).log()).sum(-1)  # (B, L, H, T)
        self.entropy[ls] += (entropy * rows[:, None, None]).sum((0, 3)).double()
        W, pairs = batch.word_attn, batch.pair_mask()
        to_punct = pairs & punct_words(batch)[:, None, :]
        self.punct[ls] += (W * to_punct[:, None, None]).sum((0, 3, 4)).double()
        strong = (W > self.tau[ls][None, :, :, None, None]) & pairs[:, None, None]
        self.strong_count[ls] += strong.sum((0, 3, 4)).double()
        self.strong_mass[ls] += (W * strong).sum((0, 3, 4)).double()
        if batch.count_items:
            self.token_rows += int(rows.sum())
            self.word_rows += int(batch.word_mask.sum())
            self.pairs += int(pairs.sum())


@dataclass
class Explanation:
    """Per-head statistics (arrays are layers x heads; accuracy is directions x relations x layers x heads)."""

    labels: tuple[str, ...]
    counts: np.ndarray
    accuracy: np.ndarray
    baseline_offset: np.ndarray
    baseline_accuracy: np.ndarray
    special_share: np.ndarray
    punct_share: np.ndarray
    entropy: np.ndarray
    strong_count: np.ndarray
    strong_mass: np.ndarray
    correct: np.ndarray  # directions x relations x layers x heads: arcs got right
    sap_penalty: np.ndarray
    sap_penalty_per_pair: np.ndarray
    threshold: dict
    calibration: dict = field(default_factory=dict)
    directions: ClassVar[tuple[str, ...]] = DIRECTIONS  # the first axis of `accuracy` and `correct`

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.sap_penalty.shape)  # type: ignore[return-value]

    def relations(self, min_arcs: int = 1) -> list[int]:
        """Relation indices with at least `min_arcs` arcs, most frequent first."""
        return [i for i in np.argsort(-self.counts, kind="stable") if self.counts[i] >= min_arcs]

    def best_head(self, r: int) -> tuple[int, int, int]:
        """(direction, layer, head) with the highest accuracy for relation r (ties: dep2head, then lowest layer, head)."""
        d, l, h = np.unravel_index(int(np.argmax(self.accuracy[:, r])), self.accuracy.shape[:1] + self.grid)
        return int(d), int(l), int(h)

    def best_heads(self, min_arcs: int = 1) -> list[dict]:
        """One row per relation: its best head and direction, and the best fixed-offset baseline."""
        rows = []
        for r in self.relations(min_arcs):
            d, l, h = self.best_head(r)
            rows.append({"relation": self.labels[r], "layer": l, "head": h, "direction": DIRECTIONS[d],
                         "accuracy": float(self.accuracy[d, r, l, h]), "baseline_offset": int(self.baseline_offset[r]),
                         "baseline_accuracy": float(self.baseline_accuracy[r]), "arcs": int(self.counts[r])})
        return rows

    def alignment(self, keep_punct: bool = False) -> np.ndarray:
        """Syntactic alignment per head: arcs whose most-attended word is the arc's other end, both directions,
        all relations (punct only with keep_punct)."""
        keep = np.array([keep_punct or label != PUNCT for label in self.labels], dtype=bool)
        return self.correct[:, keep].sum(axis=(0, 1))

    def relations_served(self, min_arcs: int = 10, keep_punct: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """How many relations each head serves (the SAP paper's open question 1: heads attending to diverse relations).

        A head's profile over the relations with at least `min_arcs` arcs (punct only with keep_punct) is its
        accuracy above the relation's best fixed-offset baseline, in its better direction, floored at 0. Returns
        per head: the entropy (nats) of the normalised profile, the effective number of relations exp(entropy)
        (0 for a head that beats no baseline: it serves none), and the profile's total (how much it serves at all).
        """
        keep = [r for r in self.relations(min_arcs) if keep_punct or self.labels[r] != PUNCT]
        excess = np.clip(self.accuracy[:, keep].max(axis=0) - self.baseline_accuracy[keep][:, None, None], 0, None)
        total = excess.sum(axis=0)  # (L, H)
        p = excess / np.where(total > 0, total, 1)[None]
        entropy = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(axis=0)
        return entropy, np.where(total > 0, np.exp(entropy), 0.0), total

    def heads_json(self, pruned_by: dict[str, set[Head]] | None = None) -> list[dict]:
        out = []
        L, H = self.grid
        aligned = self.alignment()
        entropy, served, _ = self.relations_served()
        for l in range(L):
            for h in range(H):
                out.append({
                    "layer": l, "head": h,
                    "accuracy": {label: {d: float(self.accuracy[i, r, l, h]) for i, d in enumerate(DIRECTIONS)}
                                 for r, label in enumerate(self.labels)},
                    "special_share": float(self.special_share[l, h]), "punct_share": float(self.punct_share[l, h]),
                    "entropy": float(self.entropy[l, h]), "sap_penalty": float(self.sap_penalty[l, h]),
                    "sap_penalty_per_pair": float(self.sap_penalty_per_pair[l, h]),
                    "strong_attention_count": float(self.strong_count[l, h]),
                    "strong_attention_mass": float(self.strong_mass[l, h]),
                    "syntactic_alignment": float(aligned[l, h]),
                    "relation_entropy": float(entropy[l, h]), "relations_served": float(served[l, h]),
                    "pruned_by": sorted(k for k, heads in (pruned_by or {}).items() if (l, h) in heads),
                })
        return out

    def to_json(self, pruned_by: dict[str, set[Head]] | None = None) -> dict:
        return {
            "grid": list(self.grid), "calibration": self.calibration, "threshold": self.threshold,
            "directions": list(DIRECTIONS), "baseline_offsets": list(OFFSETS),
            "relations": [{"relation": label, "arcs": int(self.counts[r]), "baseline_offset": int(self.baseline_offset[r]),
                           "baseline_accuracy": float(self.baseline_accuracy[r])} for r, label in enumerate(self.labels)],
            "heads": self.heads_json(pruned_by),
        }


def compute(ctx: Calibration, cfg: PruneConfig) -> Explanation:
    """Run SAP (penalties, threshold) and one scan of relation and profile statistics over the calibration data."""
    from synprune.methods import score

    sap = score(ctx, cfg.replace(method="sap"))
    tau = ctx.threshold(cfg.threshold, cfg.keep_punct)
    labels = ctx.dependency_ranking(1, keep_punct=True).labels  # run_scan's label ids, punct included
    rel, prof = RelationAccuracy(tuple(tau.shape), labels), HeadProfile(tau)
    ctx.run_scan([rel, prof], keep_punct=True, description="relations and head profiles")
    counts = rel.count.numpy()
    per_arc = np.maximum(counts, 1)
    hits = rel.offset_hits.numpy()
    best = hits.argmax(1) if len(labels) else np.zeros(0, dtype=int)
    return Explanation(
        labels=tuple(labels), counts=counts, accuracy=rel.correct.numpy() / per_arc[None, :, None, None],
        baseline_offset=np.array([OFFSETS[b] for b in best], dtype=int),
        baseline_accuracy=hits[np.arange(len(labels)), best] / per_arc if len(labels) else np.zeros(0),
        special_share=(prof.special / max(prof.token_rows, 1)).numpy(), punct_share=(prof.punct / max(prof.word_rows, 1)).numpy(),
        entropy=(prof.entropy / max(prof.token_rows, 1)).numpy(), strong_count=prof.strong_count.numpy(),
        strong_mass=prof.strong_mass.numpy(), correct=rel.correct.numpy(), sap_penalty=np.asarray(sap.scores, dtype=float),
        sap_penalty_per_pair=np.asarray(sap.details.get("penalty_per_pair", sap.scores), dtype=float),
        threshold=sap.details.get("threshold", {}),
        calibration={"items": len(ctx.items), "word_pairs": prof.pairs, "arcs": int(counts.sum()),
                     "parses": ctx.parse_info, "config": cfg.to_json()},
    )


# ---- retention: what the kept heads hold, against the pruned ones -----------------------------------------

def result_label(result: dict) -> str:
    return f"{result.get('method', '?')}{'+cf' if result.get('cf') else ''}@{result.get('sparsity', '?')}"


def pruned_heads(result: dict, grid: tuple[int, int], where: str) -> set[Head]:
    """The pruned heads of a result.json, checked against the explained model's grid."""
    if "pruned_heads" not in result:
        raise SynpruneError(f"{where} has no pruned_heads; pass a result.json written by `synprune prune`")
    heads = {(int(l), int(h)) for l, h in result["pruned_heads"]}
    L, H = grid
    if result.get("n_heads", L * H) != L * H or any(not (0 <= l < L and 0 <= h < H) for l, h in heads):
        raise SynpruneError(f"{where} prunes heads of a model with {result.get('n_heads')} heads, not this {L}x{H} model; "
                            "pass the result of the same model")
    return heads


def retention(ex: Explanation, pruned: set[Head], keep_punct: bool = False) -> dict:
    """Shares of strong attention and syntactic alignment held by kept and by pruned heads."""
    L, H = ex.grid
    mask = np.zeros((L, H), dtype=bool)
    for l, h in pruned:
        mask[l, h] = True
    n_kept, n_pruned = int((~mask).sum()), int(mask.sum())

    def split(values: np.ndarray) -> dict:
        total = float(values.sum())
        kept, gone = float(values[~mask].sum()), float(values[mask].sum())
        return {"kept_share": kept / total if total else None, "pruned_share": gone / total if total else None,
                "kept_per_head": kept / n_kept if n_kept else None, "pruned_per_head": gone / n_pruned if n_pruned else None,
                "total": total}

    return {"heads_kept": n_kept, "heads_pruned": n_pruned, "heads_kept_share": n_kept / (L * H),
            "strong_attention_mass": split(ex.strong_mass), "strong_attention_count": split(ex.strong_count),
            "syntactic_alignment": split(ex.alignment(keep_punct))}


# ---- attention maps of a few sentences ----------------------------------------------------------------------

@dataclass
class SentenceMap:
    words: list[str]
    maps: np.ndarray  # (n_heads, n_words, n_words) word-level attention of the chosen heads
    arcs: list[tuple[int, int, str]]  # (head word, dependent word, label)


class _MapCollector:
    per_layer = True  # takes a streamed scan's layers one at a time
    def __init__(self, heads: Sequence[Head]):
        self.heads = list(heads)
        self.maps: dict[int, np.ndarray] = {}

    def update(self, batch: AttentionBatch) -> None:
        W = batch.word_attn  # (B, L, H, W, W), L: the layers in batch.layers (None: all)
        held = batch.layers if batch.layers is not None else range(W.shape[1])
        for b, item in enumerate(batch.items):
            maps = self.maps.setdefault(id(item), np.zeros((len(self.heads), *W.shape[-2:]), dtype=np.float32))
            for i, (layer, head) in enumerate(self.heads):
                if layer in held:
                    maps[i] = W[b, held.index(layer), head].numpy()


def _words(item: CalibItem) -> list[str]:
    out = [item.text_a[s:e] for s, e in item.parse_a.words]
    if item.parse_b is not None and item.text_b is not None:
        out += [item.text_b[s:e] for s, e in item.parse_b.words]
    return out


def pick_sentences(items: Sequence[CalibItem], n: int, relations: Sequence[str] = (), min_words: int = 6,
                   max_words: int = 14) -> list[CalibItem]:
    """n calibration items of a readable length that show as many of `relations` as possible (ties: first)."""
    def shows(it: CalibItem) -> int:
        deps = {d for p in (it.parse_a, it.parse_b) if p is not None for d in p.deps}
        return len(deps & set(relations))

    fits = [it for it in items if min_words <= len(_words(it)) <= max_words]
    if len(fits) < n:
        fits += sorted((it for it in items if it not in fits), key=lambda it: len(_words(it)))
    return sorted(fits, key=lambda it: -shows(it))[:n]


def sentence_maps(ctx: Calibration, heads: Sequence[Head], n: int, relations: Sequence[str] = ()) -> list[SentenceMap]:
    """Word-level attention of `heads` on n calibration sentences (one small extra scan)."""
    from synprune.syntax.dependencies import arcs

    chosen = pick_sentences(ctx.items, n, relations)
    collector = _MapCollector(heads)
    scan(ctx.tm, chosen, [collector], ctx.dependency_ranking(1, keep_punct=True).index, True,
         ctx.config.batch_size, ctx.config.max_length, "attention maps")
    out = []
    for item in chosen:
        words = _words(item)
        n_a = len(item.parse_a.words)
        item_arcs = list(arcs(item.parse_a, keep_punct=True))
        if item.parse_b is not None:
            item_arcs += [(h + n_a, d + n_a, r) for h, d, r in arcs(item.parse_b, keep_punct=True)]
        out.append(SentenceMap(words, collector.maps[id(item)][:, :len(words), :len(words)], item_arcs))
    return out


def parse_heads(spec: str, grid: tuple[int, int]) -> list[Head]:
    """`--heads 2:3,4:1` -> [(2, 3), (4, 1)] (0-indexed layer:head), checked against the model."""
    heads = []
    L, H = grid
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(\d+):(\d+)", part)
        if not m or not (int(m[1]) < L and int(m[2]) < H):
            raise SynpruneError(f"--heads {part!r}: write LAYER:HEAD, 0-indexed, with layer < {L} and head < {H} (e.g. 2:3,4:1)")
        heads.append((int(m[1]), int(m[2])))
    return heads


def default_heads(ex: Explanation, n: int = 3, keep_punct: bool = False) -> list[MapHead]:
    """The best head of each of the n most frequent relations (punct skipped unless kept), with its relation."""
    out: list[MapHead] = []
    for r in ex.relations():
        if ex.labels[r] == PUNCT and not keep_punct:
            continue
        d, l, h = ex.best_head(r)
        if (l, h) not in [hd for hd, _, _ in out]:
            out.append(((l, h), ex.labels[r], DIRECTIONS[d]))
        if len(out) == n:
            break
    return out


# ---- writing ------------------------------------------------------------------------------------------------

def best_heads_markdown(rows: list[dict], title: str = "") -> str:
    lines = [title, ""] if title else []
    lines += ["| relation | arcs | best head (layer:head) | direction | accuracy | baseline offset | baseline accuracy |",
              "|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['relation']} | {r['arcs']} | {r['layer']}:{r['head']} | {r['direction']} | {r['accuracy']:.3f} "
                     f"| {r['baseline_offset']:+d} | {r['baseline_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def relations_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([r["relation"], r["layer"], r["head"], r["direction"], f"{r['accuracy']:.6f}",
                    r["baseline_offset"], f"{r['baseline_accuracy']:.6f}"])
    return buf.getvalue()


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", label)


def write(ex: Explanation, out: str | Path, maps: list[SentenceMap], map_heads: Sequence[MapHead],
          results: dict[str, set[Head]] | None = None, min_arcs: int = 10, keep_punct: bool = False,
          relation_cap: int = 24) -> dict[str, Any]:
    """heads.json, relations.csv, best_heads.md, heat maps, attention maps and (with results) retention.json."""
    from synprune.explain import plots as P

    out = Path(out)
    results = results or {}
    rows = ex.best_heads(min_arcs)
    parser = ex.calibration.get("parses", {}).get("parser", "?")
    title = (f"Best head per relation ({ex.calibration.get('arcs')} arcs of {ex.calibration.get('items')} inputs, "
             f"trees: {parser}; relations with at least {min_arcs} arcs; layers and heads 0-indexed)")
    atomic_write_json(out / "heads.json", ex.to_json(results))
    atomic_write_text(out / "relations.csv", relations_csv(rows))
    atomic_write_text(out / "best_heads.md", best_heads_markdown(rows, title))
    shown = [r for r in ex.relations(min_arcs)][:relation_cap]
    P.heatmaps(ex, shown, out / "heatmaps.png")
    for label, heads in results.items():
        P.heatmaps(ex, shown, out / f"heatmaps_{_slug(label)}.png", pruned=heads, title=f"x = pruned by {label}")
    if maps:
        P.attention_maps(maps, map_heads, out / "attention_maps.png")
    written: dict[str, Any] = {"best_heads": rows}
    if results:
        ret = {label: retention(ex, heads, keep_punct) for label, heads in results.items()}
        atomic_write_json(out / "retention.json", ret)
        written["retention"] = ret
    return written


def explain(ctx: Calibration, cfg: PruneConfig, out: str | Path | None = None, results: Sequence[str | Path] = (),
            heads: str | Sequence[Head] | None = None, sentences: int = 3, min_arcs: int = 10) -> tuple[Explanation, dict]:
    """Explain every head of ctx's model on ctx's calibration data; with `out`, write the report there.

    `results` are result.json files whose pruned heads are marked and whose retention is measured; `heads`
    (`"2:3,4:1"` or pairs) are the heads drawn on `sentences` attention maps (default: the best head of
    each of the three most frequent relations).
    """
    from synprune.io import read_json

    loaded = {}
    for path in results:
        p = Path(path)
        res = read_json(p, "the result.json written by `synprune prune`")
        if not isinstance(res, dict):
            raise SynpruneError(f"{p} holds no JSON object; pass the result.json written by `synprune prune`")
        label = result_label(res)
        label = label if label not in loaded else f"{label} ({p.parent.name or p.stem})"
        label = label if label not in loaded else f"{label} #{len(loaded)}"
        loaded[label] = pruned_heads(res, ctx.tm.grid, str(p))
    chosen = parse_heads(heads, ctx.tm.grid) if isinstance(heads, str) else list(heads or [])
    ex = compute(ctx, cfg)
    map_heads = [(h, None, cfg.direction if cfg.direction != "max" else "dep2head") for h in chosen] if chosen \
        else default_heads(ex, 3, cfg.keep_punct)
    written: dict = {"best_heads": ex.best_heads(min_arcs)}
    if out is not None:
        relations = [r for _, r, _ in map_heads if r is not None]
        maps = sentence_maps(ctx, [h for h, _, _ in map_heads], sentences, relations) if sentences > 0 and map_heads else []
        written = write(ex, out, maps, map_heads, loaded, min_arcs, cfg.keep_punct)
    elif loaded:
        written["retention"] = {label: retention(ex, heads, cfg.keep_punct) for label, heads in loaded.items()}
    return ex, written


def explain_model(model: Any = None, task: str = "stsb", out: str | Path | None = None, *, parses_file: str | Path | None = None,
                  glue_dir: str | Path | None = None, text_col: str | None = None, text_pair_col: str | None = None,
                  label_col: str | None = None, results: Sequence[str | Path] = (), heads: str | Sequence[Head] | None = None,
                  sentences: int = 3, min_arcs: int = 10, config: PruneConfig | None = None, **options) -> tuple[Explanation, dict]:
    """`explain` on a model (folder, hub id, TaskModel or None for the bundled MiniLM) and the calibration sample
    of `task` parsed by spaCy, or the sentences of `parses_file` (CoNLL-U) with their gold trees."""
    from synprune.calibrate.context import open_context

    cfg = (config or PruneConfig()).replace(**options).validate()
    ctx = open_context(model, task if parses_file is None else None, cfg, glue_dir=glue_dir, text_col=text_col,
                       text_pair_col=text_pair_col, label_col=label_col, parses_file=parses_file, scored=False).ctx
    return explain(ctx, cfg, out, results, heads, sentences, min_arcs)
