"""SAP's open choices in one place, and `sapx`: the variant `benchmarks/sapx_study.py` chose on calibration data.

The paper fixes one reading of SAP (`sap`); it leaves open the direction of an arc, the threshold, how the
penalty is normalised, k, the label weights, and whether attention to special tokens and punctuation counts.
One scan (`ArcTable`) records, for every dependency arc of the calibration data, the attention each head gives
it in both directions (raw word-level attention, and rows renormalised over the words so that mass parked on
[CLS]/[SEP] does not count), whether the arc's partner is the word the head attends to most (Clark et al.'s
accuracy), and per-head sums for every threshold. Each `Variant` is then arithmetic on that table, so a study
of dozens of variants costs one pass of the model. `Variant()` reproduces `sap` exactly (a test checks it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import torch

from synprune.calibrate.attention import AttentionBatch, most_attended, punct_words
from synprune.syntax.dependencies import PUNCT
from ..errors import SynpruneError
from . import HeadScores, fuse_orders, get_method, order_by, register
from synprune.calibrate.summary import HIST_BINS, parse_threshold, tau_from

SCORES = ("penalty", "accuracy")
WEIGHTS = ("paper", "flat", "inverse-frequency")
NORMALISE = ("pair", "sentence")
FUSE = ("none", "output-fisher")
DIRECTIONS = ("dep2head", "head2dep", "max")


@dataclass(frozen=True)
class Variant:
    """One reading of SAP. Defaults are the paper's (SPEC 1-3), i.e. `sap` with its defaults.

    score: `penalty` (SAP's threshold count) or `accuracy` (how often the head's most-attended word is the arc's
    partner, over top-k arcs, weighted; lowest pruned first). specials: False renormalises each word's attention
    row over the words, so attention parked on special tokens neither helps nor hurts. keep_punct: punctuation
    arcs count. threshold_punct: punctuation words enter the threshold's mean (the paper's W includes them).
    fuse: `output-fisher` ranks heads by their mean position in this order and in the label-free output Fisher's.
    """

    score: str = "penalty"
    direction: str = "dep2head"
    threshold: str = "global-mean"
    k: int = 5
    weights: str = "paper"
    normalise: str = "pair"
    specials: bool = True
    keep_punct: bool = False
    threshold_punct: bool = True
    fuse: str = "none"

    def validate(self) -> "Variant":
        for name, allowed in (("score", SCORES), ("direction", DIRECTIONS), ("weights", WEIGHTS), ("normalise", NORMALISE),
                              ("fuse", FUSE)):
            if getattr(self, name) not in allowed:
                raise SynpruneError(f"sapx {name}={getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if self.k < 1:
            raise SynpruneError("sapx k must be at least 1")
        try:
            parse_threshold(self.threshold)
        except ValueError as e:
            raise SynpruneError(f"sapx threshold: {e}") from None
        return self

    def label(self) -> str:
        """Only what differs from the paper's reading, e.g. `k=3,specials=False`; `paper` when nothing does."""
        base = asdict(Variant())
        diff = [f"{k}={v}" for k, v in asdict(self).items() if base[k] != v]
        return ",".join(diff) or "paper"

    def with_(self, **changes) -> "Variant":
        return replace(self, **changes).validate()


# The variant benchmarks/sapx_study.py chose on the calibration splits of STS-B (bundled MiniLM), SST-2 and MRPC
# (fine-tuned MiniLM): SAP's penalty read head-to-dependent, against the median attention, with the 10 most
# frequent labels as top-k, fused by mean rank with the label-free output Fisher. docs/sapx.md has the evidence.
SAPX = Variant(direction="head2dep", threshold="quantile:0.5", k=10, fuse="output-fisher")


class ArcTable:
    """Per arc and head: attention both ways (raw, and over words only), argmax hits; per head: threshold sums."""

    per_layer = True  # takes a streamed scan's layers one at a time (joins each arc's layers at `batch.last`)

    def __init__(self, grid: tuple[int, int], labels: Sequence[str]):
        self.grid, self.labels = tuple(grid), tuple(labels)
        self._parts: list[dict[str, torch.Tensor]] = []
        self._layers: list[dict[str, torch.Tensor]] = []  # the current batch's per-arc values, one entry per layer slice
        self.sums = {(s, p): torch.zeros(self.grid, dtype=torch.float64) for s in (True, False) for p in (True, False)}
        self.pairs = {p: 0 for p in (True, False)}
        self.hist = {s: torch.zeros(HIST_BINS, dtype=torch.float64) for s in (True, False)}
        self.items = 0

    def update(self, batch: AttentionBatch) -> None:
        W = batch.word_attn  # (B, L, H, W, W), L: the layers in batch.rows
        on_words = (W * batch.word_mask[:, None, None, None, :]).sum(-1, keepdim=True)
        views = {True: W, False: W / on_words.clamp_min(1e-12)}
        pairs = batch.pair_mask()
        punct = punct_words(batch)
        no_punct = pairs & ~punct[:, :, None] & ~punct[:, None, :]
        for p, mask in ((True, pairs), (False, no_punct)):
            if batch.count_items:
                self.pairs[p] += int(mask.sum())
            for s, view in views.items():
                self.sums[(s, p)][batch.rows] += (view * mask[:, None, None]).sum(dim=(0, 3, 4)).double()
        for s, view in views.items():
            values = view.permute(0, 3, 4, 1, 2)[pairs].flatten().clamp(0, 1)
            self.hist[s] += torch.histc(values.double(), bins=HIST_BINS, min=0.0, max=1.0)
        a = batch.arcs
        if len(a):
            pred = most_attended(batch)
            part = {}
            for s, view in views.items():
                part[f"dep2head{int(s)}"] = view[a.item, :, :, a.dep, a.head].float()
                part[f"head2dep{int(s)}"] = view[a.item, :, :, a.head, a.dep].float()
            part["hit_dep2head"] = pred[a.item, :, :, a.dep] == a.head[:, None, None]
            part["hit_head2dep"] = pred[a.item, :, :, a.head] == a.dep[:, None, None]
            self._layers.append(part)
            if batch.last:  # one row per arc with every layer: join the batch's layer slices
                joined = {k: torch.cat([p[k] for p in self._layers], dim=1) for k in part}
                self._parts.append({"label": a.label.clone(), "item": a.item + self.items, **joined})
        if batch.last:
            self._layers = []
            self.items += len(batch.items)

    def column(self, name: str) -> np.ndarray:
        if not self._parts:
            if name in ("label", "item"):
                return np.zeros(0, dtype=int)
            return np.zeros((0, *self.grid), dtype=bool if name.startswith("hit_") else np.float32)
        return torch.cat([p[name] for p in self._parts]).numpy()

    def attention(self, direction: str, specials: bool) -> np.ndarray:
        """(arcs, L, H) attention each head gives each arc."""
        if direction == "max":
            return np.maximum(self.attention("dep2head", specials), self.attention("head2dep", specials))
        return self.column(f"{direction}{int(specials)}")

    def hits(self, direction: str) -> np.ndarray:
        if direction == "max":
            return self.hits("dep2head") | self.hits("head2dep")
        return self.column(f"hit_{direction}")

    def threshold(self, kind: str, specials: bool, punct: bool) -> np.ndarray:
        """tau per head: as `summary.MeanAttention.threshold`, over the chosen view and word pairs."""
        return tau_from(self.sums[(specials, punct)] / max(self.pairs[punct], 1), self.hist[specials], kind).numpy()


def label_weights(labels: Sequence[str], counts: Sequence[int], k: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """(weight, is_top) per label, labels ranked by count: the paper's k..1 / 1..T-k, flat, or inverse frequency."""
    order = sorted(range(len(labels)), key=lambda i: (-counts[i], labels[i]))
    rank = np.empty(len(labels), dtype=int)
    rank[order] = np.arange(len(labels))
    top = rank < k
    if scheme == "paper":
        weight = np.where(top, k - rank, rank - min(k, len(labels)) + 1).astype(float)
    elif scheme == "flat":
        weight = np.ones(len(labels))
    else:
        c = np.maximum(np.asarray(counts, dtype=float), 1)
        weight = c.sum() / (len(c) * c)
    return weight, top


def variant_scores(table: ArcTable, label_counts: dict[str, int], v: Variant) -> HeadScores:
    """A variant's scores and pruning order from one `ArcTable` (labels counted over the calibration parses)."""
    v.validate()
    labels = table.column("label")
    known = np.array([label_counts.get(l, 0) > 0 and (v.keep_punct or l != PUNCT) for l in table.labels], dtype=bool)
    names = [l for l, ok in zip(table.labels, known) if ok]
    counts = [label_counts[l] for l in names]
    weight = np.zeros(len(table.labels))
    top = np.zeros(len(table.labels), dtype=bool)
    weight[known], top[known] = label_weights(names, counts, v.k, v.weights)
    keep = known[labels]
    arc_label, item = labels[keep], table.column("item")[keep]
    is_top = top[arc_label][:, None, None]
    wt = weight[arc_label][:, None, None]
    a = table.attention(v.direction, v.specials)[keep]
    if v.score == "penalty":
        tau = table.threshold(v.threshold, v.specials, v.threshold_punct)
        t32 = tau.astype(np.float32)  # compared in float32, as `sap` does
        per_arc = np.where(is_top, a < t32, a > t32) * wt
        highest_first = True
    else:
        tau = None
        per_arc = table.hits(v.direction)[keep] * wt * is_top
        highest_first = False
    if v.normalise == "sentence":
        # each model input's arcs count as one unit, so long sentences do not outweigh short ones
        _, inverse, n_per = np.unique(item, return_inverse=True, return_counts=True)
        scores = (per_arc / n_per[inverse][:, None, None]).sum(0) / max(len(n_per), 1)
    else:
        scores = per_arc.sum(0) / max(len(arc_label), 1)
    mean_top = (a * is_top).sum(0) / max(int(is_top.sum()), 1)
    order = order_by(scores, highest_first=highest_first, tiebreak=mean_top)
    details = {"variant": asdict(v), "variant_label": v.label(), "n_arcs": int(len(arc_label)),
               "labels": [{"label": l, "count": int(c), "weight": float(wi), "top_k": bool(ti)}
                          for l, c, wi, ti in zip(names, counts, weight[known], top[known])]}
    if tau is not None:
        details["threshold"] = {"kind": v.threshold, "value": float(tau.mean()) if np.allclose(tau, tau.flat[0]) else tau.tolist()}
    return HeadScores(scores, order, details)


ARC_TABLE = "arc-table"  # its key in the calibration context's memo


def new_arc_table(ctx) -> ArcTable:
    """An empty arc table for the context's model and label set (punctuation included)."""
    return ArcTable(ctx.tm.grid, ctx.dependency_ranking(1, keep_punct=True).labels)


def arc_table(ctx) -> ArcTable:
    """One scan per calibration context, punctuation arcs included (variants drop them as they say); made by
    the attention summary's scan where a sweep planned it (`Calibration.planned_scans`)."""
    if ARC_TABLE in ctx.planned_scans:
        ctx.attention_summary()
    return ctx.memo(ARC_TABLE, lambda: ctx.run_scan([new_arc_table(ctx)], keep_punct=True, description="arc table")[0])


def calibration_label_counts(ctx) -> dict[str, int]:
    """Arcs per label over the calibration parses, punctuation included."""
    ranking = ctx.dependency_ranking(1, keep_punct=True)
    return dict(zip(ranking.labels, ranking.counts))


def score_variant(ctx, v: Variant) -> HeadScores:
    """A variant's scores on a calibration context (memoized); a fused variant's scores are its mean rank."""
    def compute() -> HeadScores:
        if v.fuse == "none":
            return variant_scores(arc_table(ctx), calibration_label_counts(ctx), v)
        syntax = score_variant(ctx, replace(v, fuse="none"))
        grad = get_method(v.fuse)(ctx, ctx.config.replace(method=v.fuse))  # a gradient method: reads only the seed
        order = fuse_orders(syntax.order, grad.order)
        rank = np.zeros(syntax.scores.shape)
        for i, h in enumerate(order):
            rank[h] = i
        return HeadScores(rank, order, {**syntax.details, "variant": asdict(v), "variant_label": v.label(),
                                        "fused_with": v.fuse, "syntax_scores": syntax.scores.tolist(),
                                        "gradient_scores": grad.scores.tolist(), "scores": "position in the fused order"})
    return ctx.memo(("sapx-variant", v), compute)


@register("sapx", uses=(), needs=("parser", "attention", "gradients"), scans={ARC_TABLE: new_arc_table})
def sapx(ctx, cfg) -> HeadScores:
    """SAP as the study chose it (`SAPX`); its settings are fixed so that results are comparable across runs."""
    return score_variant(ctx, SAPX)
