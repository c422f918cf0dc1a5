"""`--repair refit` and the layer-wise pruner behind `--method recon`: least-squares re-fitting of the output
projections of a pruned decoder (or encoder) layer by layer, on the pruned model's own inputs.

Per sublayer (each layer's attention, then its feed-forward block, in order) let X be the input of the output
projection (attention: o_proj's input, the heads' outputs side by side; feed-forward: down's input, one column
per neuron) in the PRUNED model, already repaired below this sublayer, and Y the DENSE model's projection
output on the dense model's own inputs (less the bias). The repair re-fits the whole projection matrix on the
kept columns S (not one scale per unit, as `ls` does):

    W_S' = argmin_A ||X_S A^T - Y||^2 + sum_j lam_j ||A_j - W_j||^2,     lam_j = ridge * (X_S^T X_S)_jj,

i.e. A^T = (H_SS + diag(lam))^-1 (C_S + diag(lam) W_S^T) with H = X^T X and C = X^T Y accumulated over the
calibration tokens. The ridge pulls each column towards its original weights in proportion to its own input
energy, so an ill-posed solve falls back to them instead of degenerating. The ridge is chosen per sublayer
among `RefitOptions.ridges` by the error on held-out calibration batches (every 4th), then the solve is
refitted on all batches; a sublayer where no ridge lowers the held-out error keeps its original weights.

`layerwise_select` (the `recon` method's selection) also picks WHICH units of a sublayer to drop while it
walks: from the ridge solution on all columns, greedy structured optimal brain surgeon (Hassibi & Stork's
OBS for groups of columns, as in SlimGPT / ZipLM): the group g whose removal, with the other columns
re-fitted, raises the reconstruction error least, tr(W_g (Hinv_gg)^-1 W_g^T), goes first; W and Hinv are
updated after each removal. A query head is a group of head_dim columns; a neuron one column (removed in
small blocks). How many units each layer loses is the caller's plan (`LayerPlan`).

The model is run layer by layer (`LayerStream`): every decoder layer's keyword arguments are recorded once
per calibration batch, and the dense and the pruned hidden states are carried from one layer to the next,
so each layer runs a few times in all instead of the whole model per sublayer.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import nn

from ..arch import attention_handles, ffn_handles, get_adapter, is_conv1d
from synprune.model.activations import StopForward
from synprune.progress import bar
from synprune.model.masking import UnitMask, mask_from_heads, neuron_grid
from ..arch import head_grid
from synprune.selection.layerplan import LayerPlan

Unit = tuple[int, int]


@dataclass(frozen=True)
class RefitOptions:
    """ridge: the pull towards the original weights, relative to the mean diagonal of X_S^T X_S.
    holdout: every holdout-th calibration batch checks each re-fit (0: no check).
    min_heads: heads a layer keeps at least when the selection is the refit's own (never an empty layer).
    block: neurons removed per OBS step, as a fraction of the neurons a layer loses (1/32: 32 steps)."""

    ridge: float = 1e-1  # OBS's damping, and the re-fit's where there are no held-out batches
    ridges: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0)  # the re-fit tries each, keeps the best on held-out batches
    pack: int = 128  # calibration texts joined into windows of this many tokens, no padding (0: batches as given)
    drift: bool = False  # targets also cancel the pruned residual stream's drift (off where the family normalises sublayer outputs)
    holdout: int = 4
    min_heads: int = 1
    block: float = 1 / 32


DEFAULT = RefitOptions()


@dataclass
class Refit:
    """New output-projection weights of the kept units, as (out, kept columns) float64 matrices in the
    ORIGINAL column indexing of the unpruned model: layer -> (original column indices, matrix)."""

    attn: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    ffn: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)  # per sublayer: relative error before / after


# ---------------------------------------------------------------------------------------------------------------
# running a model one layer at a time


class LayerStream:
    """Hidden states of the calibration batches at the input of one layer, advanced one layer at a time.

    `record(model, inputs)` runs the model once per batch, keeping layer 0's input and every layer's keyword
    arguments (position embeddings, masks); `run(layer, states)` then calls that layer alone."""

    def __init__(self, model: nn.Module, inputs: Sequence[dict]):
        self.blocks = get_adapter(model).layers(model)
        self.kwargs: list[list[dict]] = [[] for _ in self.blocks]
        self.first: list[torch.Tensor] = []
        self.keep: list[torch.Tensor | None] = []
        hooks = []

        def grab(i):
            def hook(module, args, kwargs):
                kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "layer_past",
                                                                    "use_cache", "cache_position")}
                if args[1:]:
                    kw["_args"] = args[1:]
                self.kwargs[i].append(kw)
                if i == 0:
                    self.first.append(args[0] if args else kwargs["hidden_states"])
                if i == len(self.blocks) - 1:
                    raise StopForward
            return hook

        for i, b in enumerate(self.blocks):
            hooks.append(b.register_forward_pre_hook(grab(i), with_kwargs=True))
        try:
            with torch.no_grad():
                for batch in inputs:
                    mask = batch.get("attention_mask")
                    self.keep.append(mask.bool() if mask is not None else None)
                    try:
                        model(**batch, use_cache=False)
                    except StopForward:
                        pass
        finally:
            for h in hooks:
                h.remove()

    @torch.no_grad()
    def run(self, layer: int, states: Sequence[torch.Tensor], on_batch: Callable[[int], None] | None = None,
            stop: bool = False, batches: Sequence[int] | None = None) -> list[torch.Tensor] | None:
        """The layer's outputs for every batch (None with `stop`: hooks end each call with StopForward);
        `batches`: which calibration batches `states` are (default: all, in order)."""
        out = []
        for i, h in zip(batches if batches is not None else range(len(states)), states):
            if on_batch is not None:
                on_batch(i)
            kw = dict(self.kwargs[layer][i])
            args = kw.pop("_args", ())
            try:
                y = self.blocks[layer](h, *args, **kw)
            except StopForward:
                continue
            if stop:
                continue
            out.append(y[0] if isinstance(y, tuple) else y)
        return None if stop else out

    def real(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Batch i's real (non-padding) tokens of a (batch, tokens, width) tensor, as float64 rows."""
        keep = self.keep[i]
        if keep is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(keep.shape):
            return x[keep].double()
        return x.reshape(-1, x.shape[-1]).double()


# ---------------------------------------------------------------------------------------------------------------
# the solves


def ridge_fit(H: torch.Tensor, C: torch.Tensor, W: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_A ||X A^T - Y||^2 + sum_j lam_j ||A_j - W_j||^2 from H = X^T X, C = X^T Y (A, W: out x k;
    lam_j = ridge * H_jj, see `damping`)."""
    if H.shape[0] == 0:
        return W.clone()
    lam = damping(H, ridge)
    return spd_solve(H + torch.diag(lam), C + lam[:, None] * W.t()).t()


def spd_solve(M: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """M^-1 B for a symmetric positive definite M (a damped Gram matrix): by Cholesky, about twice as fast as
    a general solve; a general solve where the factorisation fails (M not numerically definite)."""
    L, info = torch.linalg.cholesky_ex(M)
    return torch.cholesky_solve(B, L) if int(info) == 0 else torch.linalg.solve(M, B)


def spd_inverse(M: torch.Tensor) -> torch.Tensor:
    """M^-1 for a symmetric positive definite M, as `spd_solve`."""
    L, info = torch.linalg.cholesky_ex(M)
    return torch.cholesky_inverse(L) if int(info) == 0 else torch.linalg.inv(M)


def damping(H: torch.Tensor, ridge: float) -> torch.Tensor:
    """Per-column ridge: `ridge` times the column's own input energy (scale-free: a neuron with large
    activations is held as firmly as a quiet one), floored at 1e-6 of the mean."""
    d = H.diagonal()
    return ridge * d.clamp(min=1e-6 * float(d.mean().clamp(min=1e-300)))


def recon_error(H: torch.Tensor, C: torch.Tensor, yy: float, A: torch.Tensor) -> float:
    """||X A^T - Y||^2 = tr(A H A^T) - 2 tr(A C) + ||Y||^2."""
    return float((A @ H * A).sum() - 2 * (A * C.t()).sum() + yy)


def obs_drop(H: torch.Tensor, C: torch.Tensor, W: torch.Tensor, groups: list[list[int]], n_drop: int,
             ridge: float, block: int = 1) -> list[int]:
    """Indices (into `groups`) of the n_drop groups of columns greedy structured OBS removes first, starting
    from the ridge solution on every column; `block` groups per step (their joint removal)."""
    if n_drop <= 0:
        return []
    k = H.shape[0]
    Hinv = spd_inverse(H + torch.diag(damping(H, ridge)))
    A = ridge_fit(H, C, W, ridge)  # out x k
    alive = list(range(len(groups)))
    dropped: list[int] = []
    while len(dropped) < n_drop:
        costs = []
        if all(len(groups[g]) == 1 for g in alive):  # single columns: one vector operation
            idx = torch.tensor([groups[g][0] for g in alive])
            costs = ((A[:, idx] ** 2).sum(0) / Hinv.diagonal()[idx].clamp(min=1e-300)).tolist()
        for g in alive if not costs else ():
            idx = groups[g]
            Hg = Hinv[idx][:, idx]
            Ag = A[:, idx]
            if len(idx) == 1:
                costs.append(float((Ag ** 2).sum() / Hg[0, 0].clamp(min=1e-300)))
            else:
                costs.append(float((Ag @ torch.linalg.solve(Hg, Ag.t())).diagonal().sum()))
        step = min(block, n_drop - len(dropped))
        pick = [alive[j] for j in sorted(range(len(alive)), key=lambda j: costs[j])[:step]]
        idx = [c for g in pick for c in groups[g]]
        Hg_inv = torch.linalg.inv(Hinv[idx][:, idx])
        A = A - A[:, idx] @ Hg_inv @ Hinv[idx, :]
        Hinv = Hinv - Hinv[:, idx] @ Hg_inv @ Hinv[idx, :]
        A[:, idx] = 0
        dropped += pick
        alive = [g for g in alive if g not in pick]
    return dropped


# ---------------------------------------------------------------------------------------------------------------
# the walk over the layers


def _columns(units: Sequence[int], current: Sequence[int], width: int) -> torch.Tensor:
    return torch.tensor([current.index(u) * width + j for u in units for j in range(width)], dtype=torch.long)


def _set_columns(module: nn.Module, cols: torch.Tensor, A: torch.Tensor) -> None:
    """Write A (out x len(cols)) into the module's weight at input columns `cols`."""
    w = module.weight
    with torch.no_grad():
        if is_conv1d(module):
            w[cols, :] = A.t().to(w.dtype)
        else:
            w[:, cols] = A.to(w.dtype)


class _Moments:
    def __init__(self):
        self.parts = {"fit": None, "check": None}

    def add(self, part: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """One batch's X^T X, X^T Y, ||Y||^2 and rows: the products in float32 (a batch is ~1k rows: relative
        error ~1e-6, far under the ridge), summed over batches in float64."""
        cur = self.parts[part]
        xf, yf = x.float(), y.float()
        new = ((xf.t() @ xf).double(), (xf.t() @ yf).double(), float((y * y).sum()), x.shape[0])
        self.parts[part] = new if cur is None else tuple(a + b for a, b in zip(cur, new))

    def total(self):
        f, c = self.parts["fit"], self.parts["check"]
        return f if c is None else tuple(a + b for a, b in zip(f, c))


def packed(inputs: Sequence[dict], length: int, per_batch: int = 8) -> list[dict]:
    """The calibration batches' real tokens joined in order (each text keeps its start token) and cut into
    windows of `length` tokens, `per_batch` windows a batch: the same tokens without padding, each read
    after the texts before it (as windowed perplexity reads text). Fewer than `length` tokens: one window."""
    ids = []
    for b in inputs:
        x, m = b["input_ids"], b.get("attention_mask")
        for row in range(x.shape[0]):
            ids.append(x[row][m[row].bool()] if m is not None else x[row])
    flat = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
    n = max(len(flat) // length, 1)
    windows = [flat[i * length:(i + 1) * length] for i in range(n)] if len(flat) >= length else [flat]
    out = []
    for i in range(0, len(windows), per_batch):
        w = torch.stack(windows[i:i + per_batch])
        out.append({"input_ids": w, "attention_mask": torch.ones_like(w)})
    return out


@torch.no_grad()
def layerwise(model: nn.Module, inputs: Sequence[dict], heads: Sequence[Unit] | None = None,
              neurons: Sequence[Unit] | None = None, plan: LayerPlan | None = None,
              options: RefitOptions = RefitOptions(), neurons_too: bool = True,
              ) -> tuple[list[Unit], list[Unit], Refit]:
    """Walk the layers; at each sublayer drop the given units (`heads`/`neurons`) or, with `plan`, choose them by
    OBS, and re-fit the output projection of the kept ones. The model's weights are restored on return; the
    result is (pruned heads, pruned neurons, the re-fitted weights)."""
    adapter = get_adapter(model)
    attn = {h.layer: h for h in attention_handles(model)}
    ffn = {f.layer: f for f in ffn_handles(model)}
    L = len(adapter.layers(model))
    hm = mask_from_heads(head_grid(model), heads or [])
    nm = mask_from_heads(neuron_grid(model), neurons or []) if (neurons is not None or plan is not None) and neurons_too else None
    originals = {("attn", l): h.out_proj.weight.detach().clone() for l, h in attn.items()}
    originals.update({("ffn", l): f.down.weight.detach().clone() for l, f in ffn.items()})
    result = Refit()
    if options.pack:
        from synprune.model.load import max_positions

        limit = max_positions(model) or getattr(model.config, "n_positions", None) or options.pack
        inputs = packed(inputs, min(options.pack, int(limit)))
    check = [options.holdout > 1 and len(inputs) >= options.holdout and i % options.holdout == options.holdout - 1
             for i in range(len(inputs))]
    if options.drift and adapter.sublayer_output_norm:  # a normalised sublayer output cannot carry the correction
        options = replace(options, drift=False)
        result.skipped.append(f"drift: off ({adapter.family} normalises each sublayer's output before the residual add)")
    stream = LayerStream(model, inputs)
    dense = list(stream.first)
    pruned = list(stream.first)
    label = "choosing and re-fitting, layer by layer" if plan is not None else "re-fitting, layer by layer"
    with bar(label, L) as advance, _restoring(originals, attn, ffn):
        for layer in range(L):
            # the dense model's projection outputs on its own inputs (unmasked, original weights)
            targets: dict[str, list[torch.Tensor]] = {"attn": [], "ffn": []}
            cur = {"i": 0}
            hooks = []
            if layer in attn:
                hooks.append(attn[layer].out_proj.register_forward_hook(
                    lambda m, a, o: targets["attn"].append(stream.real(cur["i"], o))))
            if nm is not None and layer in ffn:
                hooks.append(ffn[layer].down.register_forward_hook(
                    lambda m, a, o: targets["ffn"].append(stream.real(cur["i"], o))))
            try:
                dense_next = stream.run(layer, dense, on_batch=lambda i: cur.__setitem__("i", i))
            finally:
                for h in hooks:
                    h.remove()
            for kind in ("attn", "ffn"):
                if kind == "attn" and layer not in attn or kind == "ffn" and (nm is None or layer not in ffn):
                    continue
                handle = attn[layer] if kind == "attn" else ffn[layer]
                module = handle.out_proj if kind == "attn" else handle.down
                width = handle.head_dim if kind == "attn" else 1
                current = handle.kept_heads if kind == "attn" else handle.kept
                mask = hm if kind == "attn" else nm
                alive = [u for u in current if mask[layer, u] != 0]
                mom = _Moments()
                got: dict = {}

                def grab(m, a, _kind=kind):
                    got["x"] = a[0]
                    raise StopForward

                hooks = [module.register_forward_pre_hook(grab)]
                if kind == "ffn" and options.drift and layer in attn:  # the pruned attention's output, re-fitted
                    hooks.append(attn[layer].out_proj.register_forward_hook(lambda m, a, o: got.__setitem__("o", o)))
                try:
                    with UnitMask(model, hm, nm):
                        for i, h in enumerate(pruned):
                            stream.run(layer, [h], stop=True, batches=[i])
                            x = stream.real(i, got.pop("x"))
                            b = module.bias.detach().double() if module.bias is not None else None
                            y = targets[kind][i] - (b if b is not None else 0)
                            if options.drift:  # also undo the residual stream's drift from the dense one
                                y = y + stream.real(i, dense[i]) - stream.real(i, h)
                                if kind == "ffn" and "o" in got:
                                    y = y + targets["attn"][i] - stream.real(i, got.pop("o"))
                            mom.add("check" if check[i] else "fit", x, y)
                finally:
                    for hk in hooks:
                        hk.remove()
                w0 = originals[(kind, layer)].double()
                W = w0.t() if is_conv1d(module) else w0
                if plan is not None:
                    n_drop = (plan.heads if kind == "attn" else plan.neurons)[layer]
                    if kind == "attn":
                        n_drop = min(n_drop, max(len(alive) - options.min_heads, 0))
                    if n_drop > 0:
                        H, C, _, _ = mom.total()
                        groups = [_columns([u], current, width).tolist() for u in alive]
                        blk = 1 if kind == "attn" else max(1, int(round(n_drop * options.block)))
                        gone = obs_drop(H, C, W, groups, n_drop, options.ridge, blk)
                        for g in gone:
                            mask[layer, alive[g]] = 0.0
                        alive = [u for j, u in enumerate(alive) if j not in set(gone)]
                cols = _columns(alive, current, width)
                verdict = _fit(mom, cols, W, options, any(check))
                result.errors.append({"layer": layer, "kind": kind, **verdict[1]})
                if verdict[0] is None:
                    result.skipped.append(f"layer {layer} {kind}: {verdict[1]['why']}")
                    continue
                store = result.attn if kind == "attn" else result.ffn
                orig_cols = torch.tensor([u * width + j for u in alive for j in range(width)], dtype=torch.long)
                store[layer] = (orig_cols, verdict[0])
                _set_columns(module, cols, verdict[0])
            with UnitMask(model, hm, nm):
                pruned = stream.run(layer, pruned)
            dense = dense_next
            advance(1)
    pruned_heads = [(l, h) for l in range(hm.shape[0]) for h in range(hm.shape[1]) if hm[l, h] == 0]
    pruned_neurons = [] if nm is None else [(l, n) for l in range(nm.shape[0]) for n in range(nm.shape[1]) if nm[l, n] == 0]
    return pruned_heads, pruned_neurons, result


@contextlib.contextmanager
def _restoring(originals: dict, attn: dict, ffn: dict):
    """Put the output projections' original weights back when the walk ends, however it ends."""
    try:
        yield
    finally:
        for (kind, l), w in originals.items():
            module = attn[l].out_proj if kind == "attn" else ffn[l].down
            module.weight.data.copy_(w)


def _fit(mom: _Moments, cols: torch.Tensor, W: torch.Tensor, options: RefitOptions, held_out: bool):
    """(new weights of the kept columns or None, what happened)."""
    def sub(part):
        H, C, yy, n = part
        return H[cols][:, cols], C[cols], yy, n

    Wk = W[:, cols]
    info: dict = {}
    ridge = options.ridge
    if held_out:
        H, C, yy, _ = sub(mom.parts["fit"])
        Hc, Cc, yyc, _ = sub(mom.parts["check"])
        old = recon_error(Hc, Cc, yyc, Wk)
        tried = []
        for r in options.ridges or (options.ridge,):
            A = ridge_fit(H, C, Wk, r)
            if bool(torch.isfinite(A).all()):
                tried.append((recon_error(Hc, Cc, yyc, A), r))
        new, ridge = min(tried) if tried else (float("inf"), options.ridge)
        info.update(check_before=old / max(yyc, 1e-300), check_after=new / max(yyc, 1e-300), ridge=ridge)
        if not (new < old):
            info["why"] = f"no lower error on held-out batches ({new:.4g} vs {old:.4g})"
            return None, info
    H, C, yy, _ = sub(mom.total())
    A = ridge_fit(H, C, Wk, ridge)
    if not bool(torch.isfinite(A).all()):
        info["why"] = "non-finite solve"
        return None, info
    info.update(before=recon_error(H, C, yy, Wk) / max(yy, 1e-300), after=recon_error(H, C, yy, A) / max(yy, 1e-300))
    return A, info


def write_refit(model: nn.Module, refit: Refit) -> dict:
    """Write the re-fitted weights into the model's output projections (whatever units it still has: the
    columns are mapped from original indices); returns the previous weights for `restore_refit`."""
    saved = {}
    for kind, handles, store in (("attn", attention_handles(model), refit.attn), ("ffn", ffn_handles(model), refit.ffn)):
        for h in handles:
            if h.layer not in store:
                continue
            module = h.out_proj if kind == "attn" else h.down
            width = h.head_dim if kind == "attn" else 1
            current = h.kept_heads if kind == "attn" else h.kept
            orig_cols, A = store[h.layer]
            units = orig_cols.view(-1, width)[:, 0] // width
            keep = [j for j, u in enumerate(units.tolist()) if u in current]
            cols = _columns([units[j].item() for j in keep], current, width)
            rows = torch.tensor([j * width + c for j in keep for c in range(width)], dtype=torch.long)
            saved[(kind, h.layer)] = module.weight.detach().clone()
            _set_columns(module, cols, A[:, rows])
    return saved


def restore_refit(model: nn.Module, saved: dict) -> None:
    for kind, handles in (("attn", attention_handles(model)), ("ffn", ffn_handles(model))):
        for h in handles:
            if (kind, h.layer) in saved:
                (h.out_proj if kind == "attn" else h.down).weight.data.copy_(saved[(kind, h.layer)])


def refit_summary(refit: Refit) -> dict:
    """Mean relative reconstruction error of the sublayers before and after the re-fit, and what was skipped."""
    out: dict = {"refit_sublayers": len(refit.attn) + len(refit.ffn)}
    for kind in ("attn", "ffn"):
        rows = [e for e in refit.errors if e["kind"] == kind and "after" in e]
        if rows:
            out[f"{kind}_error"] = {"before": sum(e["before"] for e in rows) / len(rows),
                                    "after": sum(e["after"] for e in rows) / len(rows)}
    if refit.skipped:
        out["skipped"] = list(refit.skipped)
    return out


def refit_repair(model: nn.Module, inputs: Sequence[dict], heads: Sequence[Unit], neurons: Sequence[Unit] | None,
                 options: RefitOptions | None = None):
    """The `refit` repair of a given pruning (any method's selection)."""
    from . import Repair

    _, _, refit = layerwise(model, inputs, heads, neurons, options=options or DEFAULT, neurons_too=neurons is not None)
    return Repair("refit", weights=refit)


def plan_of(model: nn.Module, heads: Sequence[Unit], neurons: Sequence[Unit]) -> LayerPlan:
    """The per-layer counts of a selection."""
    L = len(get_adapter(model).layers(model))
    h, n = [0] * L, [0] * L
    for l, _ in heads:
        h[l] += 1
    for l, _ in neurons:
        n[l] += 1
    return LayerPlan(h, n)


def _keep_a_head(model: nn.Module, heads: Sequence[Unit], neurons: Sequence[Unit], min_heads: int,
                 scores=None) -> tuple[list[Unit], list[Unit]]:
    """A layer left with fewer than `min_heads` heads gets heads back (the highest `scores`, layers x heads) and, for each, as many more neurons pruned in that layer as
    cost the same parameters (the neurons the allocation kept there, taken by OBS in the walk)."""
    from synprune.selection.budget import CostModel

    cost = CostModel.from_model(model)
    per_head = math.ceil(cost.query_head_cost("params") / cost.neuron_cost("params"))
    heads, neurons = list(heads), list(neurons)
    extra: dict[int, int] = {}
    for layer in sorted({l for l, _ in heads}):
        mine = sorted((u for u in heads if u[0] == layer), key=lambda u: 0.0 if scores is None else float(scores[u]))
        back = len(mine) - (cost.n_heads - min_heads)
        for u in mine[len(mine) - back:] if back > 0 else []:
            heads.remove(u)
            extra[layer] = extra.get(layer, 0) + per_head
    gone = set(neurons)
    for layer, n in extra.items():
        free = [(layer, i) for i in range(cost.intermediate) if (layer, i) not in gone]
        neurons += free[:min(n, len(free) - 1)]  # placeholders: the walk re-chooses the layer's neurons by OBS
    return heads, sorted(neurons)


def recon_choose(model: nn.Module, inputs: Sequence[dict], heads: Sequence[Unit], neurons: Sequence[Unit],
                 options, head_scores=None) -> tuple[list[Unit], list[Unit], Refit]:
    """`--method recon`'s walk: the allocation's per-layer counts, units re-chosen by OBS inside each layer
    (heads only with options.rechoose_heads; else the allocation's heads), the kept units re-fitted."""
    heads, neurons = _keep_a_head(model, heads, neurons, options.min_heads, head_scores)
    plan = plan_of(model, heads, neurons)
    keep_heads = None
    if not options.rechoose_heads:
        keep_heads, plan = list(heads), LayerPlan([0] * len(plan.heads), plan.neurons)
    ro = RefitOptions(ridge=options.ridge, min_heads=options.min_heads, drift=options.drift)
    return layerwise(model, inputs, keep_heads, None if keep_heads is not None else None, plan=plan, options=ro)


def recon_run(ctx, cfg, scores, choose):
    """`--method recon` in the pipeline: (selection, repair, config, budget report). `choose` is the pipeline's
    selection (Kwon's search on the Fisher scores), used by the fisher allocation."""
    from synprune.methods.recon import RECON
    from synprune.model.activations import model_inputs
    from synprune.selection.budget import budget_report, parse_budget
    from synprune.selection.layerplan import plan_for_budget
    from synprune.selection.select import Selection
    from . import Repair

    options = RECON.validate()
    model = ctx.tm.model
    inputs = list(model_inputs(ctx.tm, ctx.prepared.batches))
    budget = parse_budget(cfg.budget)
    seq_len = ctx.mean_length() if budget.kind == "flops" else None
    ro = RefitOptions(ridge=options.ridge, min_heads=options.min_heads, drift=options.drift)
    if options.allocation == "uniform":
        plan = plan_for_budget(model, budget, options.head_ratio, seq_len, options.min_heads)
        heads, neurons, refit = layerwise(model, inputs, plan=plan, options=ro)
        info = {"allocation": "uniform", "plan": {"heads": plan.heads, "neurons": plan.neurons}}
    else:
        first, _, _, info = choose(ctx, cfg, scores)
        heads, neurons, refit = recon_choose(model, inputs, first.pruned, first.neurons, options, scores.scores)
        info = {**(info or {}), "allocation": "fisher"}
    L, H = ctx.tm.grid
    removed = sorted(l for l in range(L) if sum(1 for x, _ in heads if x == l) == H)
    report = budget_report(model, heads, cfg.budget, seq_len, neurons=neurons)
    return (Selection(heads, removed, neurons=neurons), Repair("refit", weights=refit),
            cfg.replace(sparsity=len(heads) / (L * H)), {**report, "recon": {**info, "options": options.label()}})
