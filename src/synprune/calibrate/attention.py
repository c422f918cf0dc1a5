"""Word-level attention statistics, accumulated batch by batch (SPEC section 2).

`scan` runs the model with eager attention over the calibration items and hands each batch (token
attention, word attention, dependency arcs) to a list of collectors. Nothing the size of the dataset is
kept: each collector holds running sums, so memory does not grow with the number of sentences.

Memory per batch: when every collector takes one layer at a time (`per_layer = True`: SAP's threshold and
penalties, entropy, confidence), the scan streams. A hook on each layer's attention module takes the
attention probabilities as the layer produces them, hands that layer to the collectors and drops them, so only
one layer's T x T maps exist at a time (`AttentionBatch.layers` says which; `count_items` is true for the first
layer only, so per-batch counts are not repeated; `last` for the last, where per-arc tables that need every
layer can join them). Other collectors get all layers at once. The items are tokenized, aligned to their
words and pooled once per calibration context (`scan_batches`), not once per scan; values every layer of a
batch shares (its word-pair mask, its punctuation words) are computed once per batch.

Causal language models (decoders) see only earlier tokens, so attention from word i to a later word j is 0
by construction. For them (`AttentionBatch.causal`):
- word pairs are the visible triangle only (j earlier than i): `pair_mask`, and with it SAP's threshold, the
  most-attended word and every mean over pairs;
- an arc is read in the direction that is visible, from its later word to its earlier one, whatever the
  `direction` option: dep2head when the head comes first, head2dep when the dependent does (`max` gives the
  same, since the other direction is 0);
- the text starts with a start token (`models.with_bos`) that, like an encoder's [CLS], belongs to no word:
  the attention sink there is outside the word-level maps.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import torch

from synprune.devices import input_device
from synprune.syntax import align as A
from synprune.arch import attention_handles
from synprune.syntax.dependencies import PUNCT, arcs
from synprune.model.load import TaskModel
from synprune.syntax.parse import Parse
from synprune.progress import bar

DIRECTIONS = ("dep2head", "head2dep", "max")


@dataclass(frozen=True)
class CalibItem:
    """One model input as the model reads it: a sentence, or a sentence pair encoded together."""

    text_a: str
    parse_a: Parse
    text_b: str | None = None
    parse_b: Parse | None = None


def calibration_items(tm: TaskModel, texts_a: Sequence[str], parses_a: Sequence[Parse],
                      texts_b: Sequence[str | None] | None = None, parses_b: Sequence[Parse | None] | None = None) -> list[CalibItem]:
    """Embedding models read each sentence alone; classifiers read a pair as one input."""
    texts_b = texts_b or [None] * len(texts_a)
    parses_b = parses_b or [None] * len(texts_a)
    items = []
    for ta, pa, tb, pb in zip(texts_a, parses_a, texts_b, parses_b):
        if tb is not None and tm.kind == "embedding":
            items += [CalibItem(ta, pa), CalibItem(tb, pb)]
        else:
            items.append(CalibItem(ta, pa, tb, pb))
    return items


@dataclass
class Arcs:
    """Dependency arcs of a batch as flat index tensors (item, head word, dependent word, label id)."""

    item: torch.Tensor
    head: torch.Tensor
    dep: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return int(self.item.numel())


@dataclass
class AttentionBatch:
    token_attn: torch.Tensor  # (B, L, H, T, T) attention probabilities
    token_mask: torch.Tensor  # (B, T) bool, real (non-padding) tokens
    word_attn: torch.Tensor  # (B, L, H, W, W) word-level attention
    word_mask: torch.Tensor  # (B, W) bool, words that kept at least one sub-token
    arcs: Arcs
    items: Sequence[CalibItem]
    special_mask: torch.Tensor | None = None  # (B, T) bool, special tokens ([CLS], [SEP], <s>, ...)
    causal: bool = False  # a decoder: a word attends only to itself and earlier words
    layers: range | None = None  # the layers token_attn and word_attn hold (None: all of the model's, in order)
    count_items: bool = True  # False for a streamed batch's later layers: per-batch counts are already taken
    n_layers: int | None = None  # where a streamed batch's last layer range ends, so that `last` can be told
    shared: dict = field(default_factory=dict, repr=False)  # per-batch values, computed once for all its layers

    @property
    def last(self) -> bool:
        """This batch's last (or only) layer slice."""
        return self.layers is None or self.layers.stop == self.n_layers

    @property
    def rows(self) -> slice:
        """Where this batch's layers go in a (layers x heads) array."""
        return slice(None) if self.layers is None else slice(self.layers.start, self.layers.stop)

    def arc_attention(self, direction: str = "dep2head") -> torch.Tensor:
        """(P, L, H) attention value of each arc in the chosen direction (causal: the visible direction)."""
        a = self.arcs
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
        if self.causal:
            return self.word_attn[a.item, :, :, torch.maximum(a.head, a.dep), torch.minimum(a.head, a.dep)]
        d2h = self.word_attn[a.item, :, :, a.dep, a.head]
        if direction == "dep2head":
            return d2h
        h2d = self.word_attn[a.item, :, :, a.head, a.dep]
        if direction == "head2dep":
            return h2d
        return torch.maximum(d2h, h2d)  # "max"

    def pair_mask(self) -> torch.Tensor:
        """(B, W, W) bool: word pairs i != j that both survived truncation (causal: j before i only)."""
        if "pairs" not in self.shared:
            m = self.word_mask[:, :, None] & self.word_mask[:, None, :]
            n = m.shape[-1]
            visible = torch.ones(n, n, dtype=torch.bool).tril(-1) if self.causal else ~torch.eye(n, dtype=torch.bool)
            self.shared["pairs"] = m & visible
        return self.shared["pairs"]


def most_attended(batch: AttentionBatch) -> torch.Tensor:
    """(B, L, H, W) index of the other word each word attends to most (valid words only)."""
    valid = batch.pair_mask()[:, None, None]
    return batch.word_attn.masked_fill(~valid, -1.0).argmax(-1)


def punct_words(batch: AttentionBatch) -> torch.Tensor:
    """(B, W) bool: words whose dependency label is punct (text B's words follow text A's)."""
    if "punct" not in batch.shared:
        mask = torch.zeros(batch.word_mask.shape, dtype=torch.bool)
        for b, item in enumerate(batch.items):
            deps = [d for p in (item.parse_a, item.parse_b) if p is not None for d in p.deps]
            mask[b, :len(deps)] = torch.tensor([d == PUNCT for d in deps], dtype=torch.bool)
        batch.shared["punct"] = mask & batch.word_mask
    return batch.shared["punct"]


class Collector(Protocol):
    """Gets every batch; a collector with `per_layer = True` accepts one layer at a time (see the module doc)."""

    def update(self, batch: AttentionBatch) -> None: ...


def batch_arcs(items: Sequence[CalibItem], alignments: Sequence, label_index: dict[str, int], keep_punct: bool) -> Arcs:
    """The arcs of a batch whose both words survived truncation, in word indices of each model input."""
    rows: list[tuple[int, int, int, int]] = []
    for b, (item, al) in enumerate(zip(items, alignments)):
        dropped = set(al.dropped)
        offset = 0
        for parse in (item.parse_a, item.parse_b):
            if parse is None:
                continue
            for head, dep, label in arcs(parse, keep_punct):
                h, d = head + offset, dep + offset
                if h in dropped or d in dropped or label not in label_index:
                    continue
                rows.append((b, h, d, label_index[label]))
            offset += len(parse.words)
    t = torch.tensor(rows, dtype=torch.long).reshape(-1, 4)
    return Arcs(t[:, 0], t[:, 1], t[:, 2], t[:, 3])


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Attention probabilities exist only in the eager implementation; other passes may use a faster one."""
    current = getattr(model.config, "_attn_implementation", "eager")
    if current != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if current != "eager":
            model.set_attn_implementation(current)


@contextlib.contextmanager
def layer_stream(model: torch.nn.Module, on_layer) -> Iterator[None]:
    """Call `on_layer(layer, probabilities)` as each attention module returns its (B, H, T, T) probabilities,
    and pass None on in their place, so transformers keeps none of them (the hooks run before its own)."""

    def hook(layer: int):
        def take(module, args, output):
            if isinstance(output, tuple) and len(output) > 1 and torch.is_tensor(output[1]):
                on_layer(layer, output[1])
                return (output[0], None, *output[2:])
            return output
        return take

    handles = [h.module.register_forward_hook(hook(h.layer), prepend=True) for h in attention_handles(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


SCAN_ONLY_KEYS = ("offset_mapping", "special_tokens_mask")  # tokenizer outputs the model does not take


@dataclass
class ScanInput:
    """One batch of calibration items, tokenized and aligned once and reused by every scan."""

    items: list[CalibItem]
    enc: Any  # the tokenizer's BatchEncoding (tensors, offsets, special-token masks)
    alignments: list
    R: torch.Tensor
    C: torch.Tensor

    def model_inputs(self, device) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.enc.items() if k not in SCAN_ONLY_KEYS}


def scan_batches(tm: TaskModel, items: Sequence[CalibItem], batch_size: int = 32, max_length: int = 128) -> list[ScanInput]:
    """`items` in batches of similar length (longest first), tokenized with offsets and aligned to their words."""
    tok = tm.tokenizer
    order = sorted(range(len(items)), key=lambda i: -(len(items[i].text_a) + len(items[i].text_b or "")))
    out = []
    for start in range(0, len(order), batch_size):
        batch_items = [items[i] for i in order[start:start + batch_size]]
        texts_a = [it.text_a for it in batch_items]
        texts_b = [it.text_b for it in batch_items] if batch_items[0].text_b is not None else None
        enc = tok(texts_a, texts_b, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                  return_offsets_mapping=True, return_special_tokens_mask=True)
        alignments = A.align_batch(
            enc, texts_a, [it.parse_a.words for it in batch_items],
            texts_b, [it.parse_b.words for it in batch_items] if texts_b is not None else None,
        )
        R, C = A.pooling_matrices(alignments, enc["input_ids"].shape[-1])
        out.append(ScanInput(batch_items, enc, alignments, R, C))
    return out


@torch.no_grad()
def scan(tm: TaskModel, items: Sequence[CalibItem], collectors: Sequence[Collector], label_index: dict[str, int],
         keep_punct: bool = False, batch_size: int = 32, max_length: int = 128, description: str = "attention",
         batches: Sequence[ScanInput] | None = None) -> int:
    """Feed every batch of `items` to each collector; returns the number of arcs seen. `batches`:
    `scan_batches(tm, items, batch_size, max_length)`, made once for many scans."""
    model = tm.model
    device = input_device(model)
    batches = scan_batches(tm, items, batch_size, max_length) if batches is None else batches
    stream = all(getattr(c, "per_layer", False) for c in collectors)
    handles = attention_handles(model)
    n_layers = handles[-1].layer + 1 if handles else 0  # a streamed batch's layer range ends here on its last layer
    n_arcs = 0
    with bar(description, len(items)) as advance, eager_attention(model):
        for b in batches:
            arcs_ = batch_arcs(b.items, b.alignments, label_index, keep_punct)
            word_mask, shared, seen = b.R.sum(-1) > 0, {}, []

            def feed(token_attn: torch.Tensor, layers: range | None) -> None:
                batch = AttentionBatch(token_attn, b.enc["attention_mask"].bool(), A.word_attention(token_attn, b.R, b.C),
                                       word_mask, arcs_, b.items, b.enc["special_tokens_mask"].bool(),
                                       causal=tm.kind == "lm", layers=layers, count_items=not seen,
                                       n_layers=n_layers, shared=shared)
                seen.append(1)
                for c in collectors:
                    c.update(batch)

            if stream:
                with layer_stream(model, lambda layer, p: feed(p[:, None].float().cpu(), range(layer, layer + 1))):
                    model(**b.model_inputs(device), output_attentions=True)
                if len(seen) != len(handles):
                    raise RuntimeError(f"{type(model).__name__}: {len(seen)} of {len(handles)} attention "
                                       "modules returned their probabilities; its adapter's attention module is not the one that does")
            else:
                out = model(**b.model_inputs(device), output_attentions=True)
                feed(torch.stack(out.attentions, dim=1).float().cpu(), None)  # (B, L, H, T, T)
            n_arcs += len(arcs_)
            advance(len(b.items))
    return n_arcs
