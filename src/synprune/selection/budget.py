"""Budgets beyond a head fraction: turn "keep F of the parameters / FLOPs" into a number of ranked heads.

A spec is `KIND:F`, F in [0, 1] the fraction to KEEP:
- `heads:F`  keeps F of the heads: prunes round((1 - F) * N) heads, exactly like `--sparsity 1-F`;
- `params:F` keeps at most F of the model's total parameters, as users count them: embeddings, norms, heads
  and every other parameter included, tied embeddings once (`CostModel.fixed_params`: what pruning units never
  removes). Before issue 26 it counted the attention + feed-forward parameters alone; with a config instead
  of a model (no parameters to count) it still does;
- `flops:F`  keeps at most F of the attention + feed-forward multiply-accumulates at the task's mean
  sequence length n.
Costs are per unit (`CostModel`; for encoders they are Kwon et al. 2022's: per head 4*d*dh + 3*dh parameters,
4*n*d*dh + 2*n*n*dh MACs; per layer feed-forward 2*d*di + di + d parameters, 2*n*d*di MACs). Embeddings, norms,
pooler and task head are not counted in flops (pruning units does not change them) but are in params (the
denominator; they are always kept). A layer whose heads all go also saves
its out-projection bias (d parameters; bias additions are not MACs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from synprune.errors import SynpruneError

Head = tuple[int, int]
KINDS = ("heads", "params", "flops")


@dataclass(frozen=True)
class Budget:
    kind: str  # one of KINDS
    keep: float  # fraction of the cost to keep, in [0, 1]


def parse_budget(spec: str) -> Budget:
    """`"params:0.7"` -> Budget("params", 0.7); anything malformed is a one-line SynpruneError."""
    kind, sep, value = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    hint = "expected KIND:F with KIND one of heads, params, flops and F the fraction to keep in [0, 1], e.g. flops:0.6"
    if not sep or kind not in KINDS:
        raise SynpruneError(f"bad budget {spec!r}: {hint}")
    try:
        keep = float(value)
    except ValueError:
        raise SynpruneError(f"bad budget {spec!r}: {value.strip()!r} is not a number; {hint}") from None
    if not (0.0 <= keep <= 1.0):  # also rejects nan
        raise SynpruneError(f"bad budget {spec!r}: the fraction to keep must be in [0, 1]")
    return Budget(kind, keep)


@dataclass(frozen=True)
class CostModel:
    """Attention + feed-forward cost of the unpruned architecture, per unit and in total, for any family
    (the shape and which projections have biases come from its adapter).

    Per sequence of n tokens (multiply-accumulates) and in parameters:
    - a query head: q rows and output-projection columns, d*dh each (+dh q bias); 2*n*d*dh + 2*n*n*dh MACs
      (its projections, scores and weighted sum);
    - a key/value group: k and v rows, 2*d*dh (+2*dh biases); 2*n*d*dh MACs;
    - a feed-forward neuron: n_up up/gate rows and a down column, (n_up + 1)*d (+n_up biases); (n_up + 1)*n*d MACs;
    - per layer: the output-projection bias (saved when every head goes) and the down-projection bias (kept).
    With one key/value head per query head (encoders, GPT-2) a head costs 4*d*dh + 3*dh parameters and
    4*n*d*dh + 2*n*n*dh MACs, as in Kwon et al. 2022.
    """

    n_layers: int
    n_heads: int
    hidden: int  # d
    head_dim: int  # dh
    intermediate: int  # di
    n_kv: int = 0  # key/value groups per layer (0: one per head)
    n_up: int = 1
    qkv_bias: bool = True
    out_bias: bool = True
    up_bias: bool = True
    down_bias: bool = True
    fixed_params: float = 0.0  # parameters no unit removes (embeddings, norms, heads): in the params total

    @classmethod
    def from_model(cls, model_or_config: Any) -> "CostModel":
        """The cost model of a model (its total parameter count included) or of a config (the body alone)."""
        from synprune.arch import get_adapter

        s = get_adapter(model_or_config).shape(model_or_config)
        cost = cls(n_layers=s.n_layers, n_heads=s.n_heads, hidden=s.hidden, head_dim=s.head_dim,
                   intermediate=s.intermediate, n_kv=s.n_kv, n_up=s.n_up, qkv_bias=s.qkv_bias, out_bias=s.out_bias,
                   up_bias=s.up_bias, down_bias=s.down_bias)
        if callable(getattr(model_or_config, "parameters", None)):
            total = total_parameters(model_or_config)
            return replace(cost, fixed_params=float(max(0, total - cost.total("params"))))
        return cost

    @property
    def kv(self) -> int:
        return self.n_kv or self.n_heads

    @property
    def group_size(self) -> int:
        return self.n_heads // self.kv

    def query_head_cost(self, kind: str, seq_len: float | None = None) -> float:
        d, dh = self.hidden, self.head_dim
        if kind == "heads":
            return 1.0
        if kind == "params":
            return float(2 * d * dh + (dh if self.qkv_bias else 0))
        n = _seq_len(seq_len)
        return 2 * n * d * dh + 2 * n * n * dh

    def kv_group_cost(self, kind: str, seq_len: float | None = None) -> float:
        d, dh = self.hidden, self.head_dim
        if kind == "heads":
            return 0.0
        if kind == "params":
            return float(2 * d * dh + (2 * dh if self.qkv_bias else 0))
        return 2 * _seq_len(seq_len) * d * dh

    def head_cost(self, kind: str, seq_len: float | None = None) -> float:
        """A query head with its share of its key/value group (the whole group when there is one per head)."""
        return self.query_head_cost(kind, seq_len) + self.kv_group_cost(kind, seq_len) / self.group_size

    def neuron_cost(self, kind: str, seq_len: float | None = None) -> float:
        d = self.hidden
        if kind == "heads":
            return 0.0
        if kind == "params":
            return float((self.n_up + 1) * d + (self.n_up if self.up_bias else 0))
        return (self.n_up + 1) * _seq_len(seq_len) * d

    def layer_bias_cost(self, kind: str) -> float:
        """Saved on top of the heads when a layer's attention block goes whole."""
        return float(self.hidden) if kind == "params" and self.out_bias else 0.0

    def ffn_cost(self, kind: str, seq_len: float | None = None) -> float:
        down_bias = float(self.hidden) if kind == "params" and self.down_bias else 0.0
        return self.intermediate * self.neuron_cost(kind, seq_len) + down_bias

    def attention_cost(self, kind: str, seq_len: float | None = None) -> float:
        return (self.n_heads * self.query_head_cost(kind, seq_len) + self.kv * self.kv_group_cost(kind, seq_len)
                + self.layer_bias_cost(kind))

    def total(self, kind: str, seq_len: float | None = None) -> float:
        body = self.n_layers * (self.attention_cost(kind, seq_len) + self.ffn_cost(kind, seq_len))
        return body + (self.fixed_params if kind == "params" else 0.0)

    def saved(self, pruned: Iterable[Head], kind: str, seq_len: float | None = None,
              layer_fraction: float = 1.0, neurons: Iterable[tuple[int, int]] = ()) -> float:
        """Cost removed by pruning query heads `pruned` (and `neurons`), with the layer rule: a layer whose
        pruned heads reach `layer_fraction` of its heads loses all of them and its out-projection bias; a
        key/value group goes when all its query heads are gone."""
        per_layer: dict[int, set[int]] = {}
        for layer, head in pruned:
            per_layer.setdefault(int(layer), set()).add(int(head))
        out = 0.0
        for heads in per_layer.values():
            if _layer_gone(len(heads), self.n_heads, layer_fraction):
                out += self.attention_cost(kind, seq_len)
                continue
            groups = {h // self.group_size for h in heads}
            empty = sum(1 for g in groups if all(g * self.group_size + j in heads for j in range(self.group_size)))
            out += len(heads) * self.query_head_cost(kind, seq_len) + empty * self.kv_group_cost(kind, seq_len)
        n_neurons = len({(int(l), int(i)) for l, i in neurons})
        return out + n_neurons * self.neuron_cost(kind, seq_len) if n_neurons else out

    def kept_fraction(self, pruned: Iterable[Head], kind: str, seq_len: float | None = None,
                      layer_fraction: float = 1.0, neurons: Iterable[tuple[int, int]] = ()) -> float:
        total = self.total(kind, seq_len)
        return (total - self.saved(pruned, kind, seq_len, layer_fraction, neurons)) / total


def total_parameters(model: Any) -> int:
    """Every parameter of `model`, a tied (shared) tensor counted once: the number users quote."""
    seen, n = set(), 0
    for p in model.parameters():  # parameters() already skips a tied tensor's second name; ids guard the rest
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    # a skeleton not yet tied (the layer-streamed reader's, on the meta device) still shares its output embedding
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "tie_word_embeddings", False) and hasattr(model, "get_output_embeddings"):
        out, inp = model.get_output_embeddings(), model.get_input_embeddings()
        if out is not None and inp is not None and out.weight is not inp.weight and out.weight.shape == inp.weight.shape:
            n -= out.weight.numel()
    return n


def mean_sequence_length(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None,
                         max_length: int = 512) -> float:
    """Mean number of tokens per example as the model sees it (special tokens in, truncated to max_length):
    the n of a flops budget."""
    if not texts:
        raise SynpruneError("cannot compute a mean sequence length from no texts")
    args = (list(texts), list(pairs)) if pairs is not None else (list(texts),)
    enc = tokenizer(*args, truncation=True, max_length=max_length)
    return sum(len(ids) for ids in enc["input_ids"]) / len(texts)


def _seq_len(seq_len: float | None) -> float:
    if seq_len is None or not (seq_len > 0) or math.isinf(seq_len):
        raise SynpruneError(f"a flops budget needs the task's mean sequence length (a positive number), got {seq_len!r}")
    return float(seq_len)


def _layer_gone(n_pruned: int, n_heads: int, layer_fraction: float) -> bool:
    return n_pruned >= n_heads or n_pruned >= layer_fraction * n_heads - 1e-9


def heads_to_prune(model_or_config: Any, ranked: Sequence[Head], spec: str | Budget,
                   mean_seq_len: float | None = None, layer_fraction: float = 1.0) -> int:
    """How many heads from the front of `ranked` (most prunable first) to prune to meet the budget.

    `heads:F` gives round((1 - F) * N). `params:F` / `flops:F` give the smallest prefix whose pruning leaves
    at most F of the cost; a budget that pruning every ranked head cannot reach is a SynpruneError.
    """
    budget = spec if isinstance(spec, Budget) else parse_budget(spec)
    cost = CostModel.from_model(model_or_config)
    ranked = [(int(l), int(h)) for l, h in ranked]
    if len(set(ranked)) != len(ranked):
        raise SynpruneError("the ranked head list has duplicates")
    for l, h in ranked:
        if not (0 <= l < cost.n_layers and 0 <= h < cost.n_heads):
            raise SynpruneError(f"ranked head [{l}, {h}] is outside the model's {cost.n_layers} x {cost.n_heads} heads")
    if budget.kind == "heads":
        from synprune.selection.select import n_to_prune

        n_total = cost.n_layers * cost.n_heads
        n = n_to_prune(round(1.0 - budget.keep, 12), n_total)  # halves up, as --sparsity rounds
        if n > len(ranked):
            raise SynpruneError(f"budget heads:{budget.keep:g} prunes {n} heads but only {len(ranked)} are ranked")
        return n
    total = cost.total(budget.kind, mean_seq_len)
    target = budget.keep * total * (1 + 1e-12)
    for k in range(len(ranked) + 1):
        remaining = total - cost.saved(ranked[:k], budget.kind, mean_seq_len, layer_fraction)
        if remaining <= target:
            return k
    reach = remaining / total
    raise SynpruneError(
        f"budget {budget.kind}:{budget.keep:g} cannot be met: pruning all {len(ranked)} ranked heads keeps "
        f"{reach:.4f} of the {'parameters' if budget.kind == 'params' else 'attention + feed-forward flops'}; use a fraction of at least {math.ceil(reach * 1e4) / 1e4:g}")


def budget_report(model_or_config: Any, pruned: Iterable[Head], spec: str | Budget,
                  mean_seq_len: float | None = None, neurons: Iterable[tuple[int, int]] = ()) -> dict[str, Any]:
    """What a selection keeps (fraction of heads, parameters and, with a sequence length, FLOPs) and whether
    that meets the budget, for a model, a config or a CostModel. `pruned` lists every removed head (a removed layer's heads all appear)."""
    budget = spec if isinstance(spec, Budget) else parse_budget(spec)
    cost = model_or_config if isinstance(model_or_config, CostModel) else CostModel.from_model(model_or_config)
    pruned = sorted({(int(l), int(h)) for l, h in pruned})
    kinds = ("heads", "params") + (("flops",) if mean_seq_len else ())
    neurons = sorted({(int(l), int(i)) for l, i in neurons})
    kept = {k: cost.kept_fraction(pruned, k, mean_seq_len, neurons=neurons) for k in kinds}
    if budget.kind == "heads":
        from synprune.selection.select import n_to_prune

        met = len(pruned) >= n_to_prune(round(1.0 - budget.keep, 12), cost.n_layers * cost.n_heads)
    else:
        met = kept[budget.kind] <= budget.keep * (1 + 1e-12)
    return {"spec": f"{budget.kind}:{budget.keep:g}", "met": bool(met), "heads_pruned": len(pruned),
            **({"neurons_pruned": len(neurons)} if neurons else {}),
            **{f"{k}_kept": round(v, 6) for k, v in kept.items()}, "mean_seq_len": mean_seq_len}


# The name main's pipeline imports (`heads_for_budget(model, order, budget, mean_length)`): same function.
heads_for_budget = heads_to_prune
