"""SAP: penalise heads whose attention ignores the frequent dependencies or dwells on the rare ones.

P[l,h] += w(r) for a top-k arc whose attention a < tau, and for a non-top-k arc with a > tau (SPEC 3).
Two passes over the calibration data keep memory flat: the first finds tau, the second counts penalties.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from synprune.calibrate.attention import AttentionBatch
from synprune.syntax.dependencies import DependencyRanking
from ..errors import SynpruneError
from . import HeadScores, order_by, register


@dataclass(frozen=True)
class SapOptions:
    """SAP's options: the `k` most frequent dependency labels are top-k; `threshold` (tau: global-mean, layer-mean,
    head-mean, quantile:Q or a number); the attention `direction` read on an arc; whether punctuation arcs count
    (`keep_punct`); the dataset the label ranking comes from (`dependencies_from`, default the calibration data)."""

    k: int = 5
    threshold: str = "global-mean"
    direction: str = "dep2head"
    keep_punct: bool = False
    dependencies_from: str | None = None

    def validate(self) -> "SapOptions":
        from synprune.calibrate.attention import DIRECTIONS
        from synprune.calibrate.summary import parse_threshold

        if _non_finite_number(str(self.threshold)):
            raise SynpruneError(f"--threshold {self.threshold}: give a finite number or a named threshold")
        if self.k < 1:
            raise SynpruneError(f"--k {self.k}: the number of top dependency labels must be at least 1")
        if self.direction not in DIRECTIONS:
            raise SynpruneError(f"--direction {self.direction!r}: use one of {', '.join(DIRECTIONS)}")
        try:
            parse_threshold(str(self.threshold))
        except ValueError as e:
            raise SynpruneError(f"--threshold: {e}") from None
        if self.dependencies_from is not None:
            from synprune.calibrate.depsource import check_source

            check_source(self.dependencies_from)
        return self


def _non_finite_number(text: str) -> bool:
    """"nan", "inf", "quantile:nan": a number that parses but is not finite."""
    tail = text.rpartition(":")[2]
    try:
        return not math.isfinite(float(tail))
    except ValueError:
        return False


class Penalty:
    """SAP penalty per head, and the mean attention over top-k arcs (the tie-break)."""

    per_layer = True

    def __init__(self, tau: torch.Tensor, ranking: DependencyRanking, direction: str):
        self.tau = tau.float()
        self.weight = torch.tensor(ranking.weights, dtype=torch.float64)
        self.top = torch.tensor([ranking.is_top(i) for i in range(len(ranking.labels))], dtype=torch.bool)
        self.direction = direction
        self.penalty = torch.zeros(tau.shape, dtype=torch.float64)
        self.top_sum = torch.zeros(tau.shape, dtype=torch.float64)
        self.top_count = 0
        self.n_arcs = 0

    def update(self, batch: AttentionBatch) -> None:
        if not len(batch.arcs):
            return
        a = batch.arc_attention(self.direction)  # (P, L, H)
        labels = batch.arcs.label
        top = self.top[labels][:, None, None]
        tau = self.tau[batch.rows]
        miss = torch.where(top, a < tau, a > tau)
        self.penalty[batch.rows] += (miss.double() * self.weight[labels][:, None, None]).sum(0)
        self.top_sum[batch.rows] += (a * top).sum(0).double()
        if batch.count_items:
            self.top_count += int(top.sum())
            self.n_arcs += len(batch.arcs)


@register("sap", options=SapOptions, needs=("parser", "attention"))
def sap(ctx, cfg) -> HeadScores:
    source = cfg.dependencies_from
    ranking = ctx.dependency_ranking(cfg.k, cfg.keep_punct, source)
    if not ranking.labels:
        where = f"--dependencies-from {source}" if source else "the calibration texts"
        raise SynpruneError(f"{where} produced no dependency arcs; SAP needs sentences (check --text-col)")
    tau = ctx.threshold(cfg.threshold, cfg.keep_punct)
    pen = ctx.memo(("sap-penalty", cfg.k, cfg.threshold, cfg.direction, cfg.keep_punct, source),
                   lambda: ctx.run_scan([Penalty(tau, ranking, cfg.direction)], keep_punct=cfg.keep_punct,
                                        description="SAP penalties", ranking=ranking)[0])
    penalty = pen.penalty.numpy()
    mean_top = (pen.top_sum / max(pen.top_count, 1)).numpy()
    order = order_by(penalty, highest_first=True, tiebreak=mean_top)
    tau_np = tau.numpy()
    threshold = {"kind": cfg.threshold, "value": float(tau_np.mean()) if np.allclose(tau_np, tau_np.flat[0]) else tau_np.tolist()}
    return HeadScores(penalty, order, {
        "dependency_ranking": ranking.to_json(),
        "threshold": threshold,
        "penalty_per_pair": (penalty / max(pen.n_arcs, 1)).tolist(),
        "n_arcs": pen.n_arcs,
        "direction": cfg.direction,
        **({"dependencies_from": ctx.dependency_source(source)[1]} if source else {}),
    })
