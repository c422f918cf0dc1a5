"""`--repair ls`: Kwon et al. 2022's mask tuning. Sublayer by sublayer (each layer's attention, then its
feed-forward block, in order), find the scales of the kept heads' / neurons' outputs that make the pruned
model's projection output (attention output projection, down projection) closest in least squares to the dense
model's on the calibration tokens. The pruned model runs with the scales already found for earlier sublayers,
so each solve sees the inputs the repaired model will see; the dense model runs unmasked.

Per sublayer the prediction is sum_u m_u c_u(t) + b, c_u(t) the unit's contribution (a head: its slice of the
projection times its output; a neuron: its activation times its down column), b the projection's bias; the
normal equations are G m = r with G_uv = sum_t c_u(t).c_v(t), r_u = sum_t c_u(t).(y(t) - b). Both come from
X^T X and X^T Y accumulated once per sublayer (X the projection's input columns of the kept units, Y the
targets): G = block sums of (X^T X) * (W^T W), r = block sums of rows of (X^T Y) * W^T, so no (tokens x units
x hidden) tensor is formed. The dense model runs once per layer (both sublayers' targets in one pass).

Kwon et al.'s choices, kept here (`LSOptions`): layer 0's attention is not tuned; a classifier's last layer
matches only the pooled position (the only one its head reads); the solve is damped LSMR on the normal
equations around scales of 1 (their `lsmr(G, r - G 1, damp=1)`); a scale beyond +-10 rejects the solve.
Ours on top: every solve is fitted without a quarter of the calibration batches and kept only if it lowers
the sublayer's error on them (then refitted on all); a rejected solve leaves that sublayer's scales at 1 and
the repair goes on (Kwon et al. stop at the first rejected solve).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from synprune.devices import tensor
from synprune.model.activations import Resume, StopForward, Tap
from ..arch import attention_handles, ffn_handles, get_adapter, weight_rows
from . import Repair, Unit, masks, repaired

MAX_SCALE = 10.0  # a larger scale means an ill-posed solve (Kwon et al. reject it too)


@dataclass(frozen=True)
class LSOptions:
    damp: float = 1.0  # LSMR damping of the step away from scales of 1 (Kwon et al.: 1); 0: exact solve
    first_attention: bool = False  # tune layer 0's attention too (Kwon et al.: no)
    pooled: str | None = None  # "first" / "last": the last layer matches only that token (a classifier's pool)
    holdout: int = 4  # every holdout-th calibration batch checks each solve (0: no check)
    bias: bool = False  # also fit a vector added to each projection's output, jointly with the scales (ls+bias)


def solve(G: torch.Tensor, r: torch.Tensor, damp: float) -> torch.Tensor | None:
    """Scales m with G m ~ r: damped LSMR on the step d = m - 1, min ||G d - (r - G 1)||^2 + damp^2 ||d||^2
    (Kwon et al.'s solver and its iteration limit, one per unknown: stopping early regularises too), or an
    exact solve when damp is 0. None when LSMR finds the system too ill-conditioned (istop 3-6); its iterate
    at the iteration limit (istop 7) is used, as if converged."""
    if G.numel() == 0:
        return r.clone()
    if damp == 0:
        try:
            return torch.linalg.solve(G, r)
        except RuntimeError:
            return torch.linalg.lstsq(G, r[:, None]).solution[:, 0]
    from scipy.sparse.linalg import lsmr

    Gn = G.numpy()
    d, istop = lsmr(Gn, r.numpy() - Gn.sum(1), damp=damp)[:2]
    return torch.from_numpy(d) + 1 if istop in (0, 1, 2, 7) else None


@torch.no_grad()
def least_squares(model: nn.Module, inputs: list[dict], heads: list[Unit], neurons: list[Unit] | None,
                  teacher: nn.Module | None = None, options: LSOptions = LSOptions()) -> Repair:
    """The `ls` repair of pruning `heads` / `neurons` from `model`; `teacher` (default: `model` unmasked) gives
    the outputs to reproduce."""
    teacher = model if teacher is None else teacher
    hm, nm = masks(model, heads, neurons)
    rep = Repair("ls", hm.clone().double(), None if nm is None else nm.clone().double())
    attn, ffn = {h.layer: h for h in attention_handles(model)}, {f.layer: f for f in ffn_handles(model)}
    t_attn, t_ffn = {h.layer: h for h in attention_handles(teacher)}, {f.layer: f for f in ffn_handles(teacher)}
    post_norm = not get_adapter(model).pre_norm
    n_layers = len(get_adapter(model).layers(model))
    check = [options.holdout > 1 and len(inputs) >= options.holdout and i % options.holdout == options.holdout - 1
             for i in range(len(inputs))]
    student, dense = Resume(model, len(inputs)), Resume(teacher, len(inputs))
    for layer in range(n_layers):
        pooled = options.pooled if layer == n_layers - 1 else None
        todo = []
        if layer in attn and (layer > 0 or options.first_attention):
            h = attn[layer]
            kept = [q for q in h.kept_heads if rep.head_scales[layer, q] != 0]
            if kept:
                todo.append(("attn", h, kept, t_attn[layer].out_proj, t_attn[layer].q))
        if nm is not None and layer in ffn:
            f = ffn[layer]
            kept = [n for n in f.kept if rep.neuron_scales[layer, n] != 0]
            if kept:
                todo.append(("ffn", f, kept, t_ffn[layer].down, t_ffn[layer].up[0]))
        if not todo:
            continue
        targets = _dense_targets(teacher, dense, layer, [(k, m, res if post_norm else None) for k, _, _, m, res in todo],
                                 inputs, pooled)
        for kind, handle, kept, _, _ in todo:
            module, first = (handle.out_proj, handle.q) if kind == "attn" else (handle.down, handle.up[0])
            width = handle.head_dim if kind == "attn" else 1
            current = handle.kept_heads if kind == "attn" else handle.kept
            cols = torch.tensor([current.index(u) * width + j for u in kept for j in range(width)])
            stats = _moments(model, student, inputs, heads, neurons, rep, layer, module, first if post_norm else None,
                             cols, [t[kind] for t in targets], check, pooled)
            scales = rep.head_scales if kind == "attn" else rep.neuron_scales
            verdict = _fit(stats, weight_rows(module)[:, cols], width, scales[layer, kept], options, any(check))
            if isinstance(verdict, str):
                rep.skipped.append(f"layer {layer} {kind}: {verdict}")
                continue
            scales[layer, kept], beta = verdict
            if beta is not None:
                (rep.attn_bias if kind == "attn" else rep.ffn_bias)[layer] = beta
    return rep


def _fit(stats: dict, W: torch.Tensor, width: int, now: torch.Tensor, options: LSOptions, held_out: bool):
    """(new scales, bias vector or None) for a sublayer, or why its solve is rejected. With held-out batches:
    fit without them, keep the solve only if it lowers their error, then refit on all batches."""
    if held_out:
        got = _solve_part(stats["fit"], W, width, options)
        if isinstance(got, str):
            return got
        new, old = _error(stats["check"], W, width, *got), _error(stats["check"], W, width, now, None)
        if new >= old:
            return f"no lower error on held-out batches ({new:.4g} vs {old:.4g} unrepaired)"
    return _solve_part({k: stats["fit"][k] + stats["check"][k] for k in stats["fit"]}, W, width, options)


def _solve_part(st: dict, W: torch.Tensor, width: int, options: LSOptions):
    """Scales (and, with options.bias, the best bias vector given them) from one part's moments. With a bias
    the moments are centred: the bias takes the mean, the scales fit the variation around it."""
    xtx, xty = st["xtx"], st["xty"]
    if options.bias and st["n"]:
        xtx = xtx - torch.outer(st["sx"], st["sx"]) / st["n"]
        xty = xty - torch.outer(st["sx"], st["sy"]) / st["n"]
    m = solve(*_normal(xtx, xty, W, width), options.damp)
    if m is None or not bool(torch.isfinite(m).all()) or float(m.abs().max()) > MAX_SCALE:
        return _why(m)
    if not options.bias or not st["n"]:
        return m, None
    return m, (st["sy"] - W @ (m.repeat_interleave(width) * st["sx"])) / st["n"]


def _error(st: dict, W: torch.Tensor, width: int, m: torch.Tensor, beta: torch.Tensor | None) -> float:
    """sum_t ||sum_u m_u c_u(t) + beta - y(t)||^2 over a part's tokens, less the constant sum_t ||y(t)||^2."""
    G, r = _normal(st["xtx"], st["xty"], W, width)
    err = float(m @ G @ m - 2 * r @ m)
    if beta is not None:
        err += float(st["n"] * beta @ beta + 2 * beta @ (W @ (m.repeat_interleave(width) * st["sx"])) - 2 * beta @ st["sy"])
    return err


def _why(m) -> str:
    if m is None:
        return "LSMR found no solution"
    return f"a scale of {float(m.abs().max()):.3g} (limit {MAX_SCALE:g})"


def _dense_targets(teacher, dense: Resume, layer: int, sublayers, inputs, pooled) -> list[dict]:
    """Per calibration batch, per sublayer kind: the dense model's projection output (plus the residual it is
    normalised with, post-norm), at the real (or pooled) tokens; one pass runs the layer once."""
    out: list[dict] = [{} for _ in inputs]
    i = 0
    res: dict = {}

    def read(key, y):
        kind, part = key
        if part == "res":
            res[kind] = y
        else:
            out[i][kind] = (y + res.pop(kind) if kind in res else y).to(dtype)  # stored at the model's precision

    modules = {}
    dtype = sublayers[0][1].weight.dtype
    for kind, proj, first in sublayers:
        modules[(kind, "out")] = proj
        if first is not None:
            modules[(kind, "res")] = first

    def stop(module, args, output):
        raise StopForward

    block = get_adapter(teacher).layers(teacher)[layer]
    with dense.reaching(layer + 1), Tap(modules, read, output={k for k in modules if k[1] == "out"}, pooled=pooled) as tap:
        hook = block.register_forward_hook(stop)  # after Resume's, which keeps the layer's output
        try:
            for i, batch in enumerate(inputs):
                dense.call = i
                tap.run(teacher, batch)
        finally:
            hook.remove()
    return out


def _moments(model, student: Resume, inputs, heads, neurons, rep, layer, module, first, cols, targets, check,
             pooled) -> dict:
    """X^T X and X^T Y of the sublayer (X: the projection's input columns `cols` in the repaired model, Y: the
    target less the bias and, post-norm, the model's own residual), over the fitting and the held-out batches."""
    b = tensor(module, "bias").to("cpu", torch.float64) if module.bias is not None else None
    w, hidden = len(cols), weight_rows(module).shape[0]
    stats = {part: {"xtx": torch.zeros(w, w, dtype=torch.float64), "xty": torch.zeros(w, hidden, dtype=torch.float64),
                    "sx": torch.zeros(w, dtype=torch.float64), "sy": torch.zeros(hidden, dtype=torch.float64), "n": 0}
             for part in ("fit", "check")}
    got: dict = {}

    def read(key, x):
        got[key] = x

    taps = {0: module, **({1: first} if first is not None else {})}
    with student.reaching(layer), Tap(taps, read, stop_after=0, pooled=pooled) as tap, \
            repaired(model, heads, neurons, rep):  # attached after the tap, which so sees unmasked inputs
        for i, batch in enumerate(inputs):
            student.call = i
            tap.run(model, batch)
            x, y = got.pop(0)[:, cols], targets[i].double()
            if first is not None:  # post-norm: the sublayer and its residual are normalised together
                y = y - got.pop(1)
            if b is not None:
                y = y - b
            s = stats["check" if check[i] else "fit"]
            s["xtx"] += x.t() @ x
            s["xty"] += x.t() @ y
            s["sx"] += x.sum(0)
            s["sy"] += y.sum(0)
            s["n"] += x.shape[0]
    return stats


def _normal(xtx: torch.Tensor, xty: torch.Tensor, W: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """G and r from the moments: G = block sums of (X^T X) * (W^T W), r = block sums of the rows of
    (X^T Y) * W^T, blocks of `width` columns (a head's dimensions; 1 for neurons)."""
    k = W.shape[1] // width
    G = (xtx * (W.t() @ W)).reshape(k, width, k, width).sum((1, 3))
    return G, (xty * W.t()).sum(1).reshape(k, width).sum(1)
