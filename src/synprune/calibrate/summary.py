"""The attention summary: per-head statistics of one scan that several methods read, computed once per
calibration context (`Calibration.attention_summary`). `MeanAttention` gives the threshold tau (SAP, sapx,
explain); `AttentionStats` the rows' entropy and maximum (entropy, confidence).
"""
from __future__ import annotations

import torch

from synprune.calibrate.attention import AttentionBatch

THRESHOLD_KINDS = ("global-mean", "layer-mean", "head-mean", "quantile:Q", "a number")
HIST_BINS = 20000  # resolution of quantile thresholds (attention to a word lies in [0, 1])


class MeanAttention:
    """Running sums of word-level attention W[i, j], i != j, per head, plus a histogram for quantiles."""

    per_layer = True

    def __init__(self, grid: tuple[int, int]):
        self.sum = torch.zeros(grid, dtype=torch.float64)
        self.count = 0
        self.hist = torch.zeros(HIST_BINS, dtype=torch.float64)

    def update(self, batch: AttentionBatch) -> None:
        m = batch.pair_mask()  # (B, W, W)
        w = batch.word_attn  # (B, L, H, W, W)
        self.sum[batch.rows] += (w * m[:, None, None]).sum(dim=(0, 3, 4)).double()
        if batch.count_items:
            self.count += int(m.sum())
        values = w.permute(0, 3, 4, 1, 2)[m].flatten().clamp(0, 1)
        self.hist += torch.histc(values.double(), bins=HIST_BINS, min=0.0, max=1.0)

    def threshold(self, kind: str | float) -> torch.Tensor:
        """tau per head (layers x heads) for a threshold kind."""
        return tau_from(self.sum / max(self.count, 1), self.hist, kind)


def tau_from(per_head: torch.Tensor, hist: torch.Tensor, kind: str | float) -> torch.Tensor:
    """tau per head from the mean attention of each head and a histogram of all values (for quantiles)."""
    grid = per_head.shape
    if isinstance(kind, (int, float)) or _is_number(kind):
        return torch.full(grid, float(kind), dtype=torch.float64)
    if kind == "global-mean":
        return torch.full(grid, float(per_head.mean()), dtype=torch.float64)
    if kind == "layer-mean":
        return per_head.mean(dim=1, keepdim=True).expand(grid).clone()
    if kind == "head-mean":
        return per_head
    if kind.startswith("quantile:"):
        q = float(kind.split(":", 1)[1])
        cdf = torch.cumsum(hist, 0) / hist.sum().clamp(min=1)
        b = int(torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64)))
        return torch.full(grid, (min(b, HIST_BINS - 1) + 0.5) / HIST_BINS, dtype=torch.float64)
    raise ValueError(f"unknown threshold {kind!r}; use one of {', '.join(THRESHOLD_KINDS)}")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def parse_threshold(kind: str) -> str:
    """Validate a threshold option early (before any model runs)."""
    if kind in ("global-mean", "layer-mean", "head-mean") or _is_number(kind):
        return kind
    if kind.startswith("quantile:") and _is_number(kind[9:]) and 0 <= float(kind[9:]) <= 1:
        return kind
    raise ValueError(f"threshold {kind!r} is not one of {', '.join(THRESHOLD_KINDS)} (quantile Q in [0, 1])")


class AttentionStats:
    """Running sums of row entropy (nats) and row maximum per head, over real query rows of sub-token attention."""

    per_layer = True

    def __init__(self, grid: tuple[int, int]):
        self.entropy_sum = torch.zeros(grid, dtype=torch.float64)
        self.max_sum = torch.zeros(grid, dtype=torch.float64)
        self.rows = 0
        self.padding_mass = 0.0  # largest attention mass a real row put on padding keys (should be ~0)

    def update(self, batch: AttentionBatch) -> None:
        real = batch.token_mask  # (B, T)
        keys = real[:, None, None, :].float()  # (B, 1, 1, T): masks key columns of (B, H, T, T)
        queries = real[:, None, :].float()  # (B, 1, T): masks query rows of (B, H, T)
        first = batch.rows.start or 0
        for i in range(batch.token_attn.shape[1]):  # one layer at a time keeps the temporaries small
            layer = first + i
            a = batch.token_attn[:, i].float()  # (B, H, T, T)
            on_real = (a * keys).sum(-1)  # (B, H, T)
            on_padding = (a * (1 - keys)).sum(-1)
            self.padding_mass = max(self.padding_mass, float((on_padding * queries).max()))
            p = a * keys / on_real.clamp(min=1e-12)[..., None]
            entropy = -torch.special.xlogy(p, p).sum(-1)
            self.entropy_sum[layer] += (entropy * queries).sum(dim=(0, 2)).double()
            self.max_sum[layer] += (p.amax(-1) * queries).sum(dim=(0, 2)).double()
        if batch.count_items:
            self.rows += int(real.sum())

    @property
    def mean_entropy(self) -> torch.Tensor:
        return self.entropy_sum / max(self.rows, 1)

    @property
    def mean_max(self) -> torch.Tensor:
        return self.max_sum / max(self.rows, 1)

    def details(self) -> dict:
        return {"query_rows": self.rows, "padding_mass_max": self.padding_mass}
