"""`--repair ls`: Kwon et al. 2022's mask tuning. Sublayer by sublayer (each layer's attention, then its
feed-forward block, in order), find the scales of the kept heads' / neurons' outputs that make the pruned
model's projection output (attention output projection, down projection) closest in least squares to the dense
model's on the calibration tokens. The pruned model runs with the scales already found for earlier sublayers,
so each solve sees the inputs the repaired model will see; the dense model runs unmasked.

Per sublayer the prediction is sum_u m_u c_u(t) + b, c_u(t) the unit's contribution (a head: its slice of the
projection times its output; a neuron: its activation times its down column), b the projection's bias; the
normal equations are G m = r with G_uv = sum_t c_u(t).c_v(t), r_u = sum_t c_u(t).(y(t) - b). For neurons G is
(X^T X) * (W^T W) elementwise, so no (tokens x neurons x hidden) tensor is formed.
"""
from __future__ import annotations

import torch
from torch import nn

from ..activations import Resume, Tap
from ..arch import attention_handles, ffn_handles, get_adapter, weight_rows
from . import Repair, Unit, masks, repaired

MAX_SCALE = 10.0  # a larger scale means an ill-posed solve: stop repairing there (Kwon et al. do the same)
RIDGE = 1e-2  # per unit, relative to its own output energy G_uu (see `solve`)


def solve(G: torch.Tensor, r: torch.Tensor, ridge: float | None = None) -> torch.Tensor:
    """argmin_m m^T G m - 2 r^T m + sum_u lam_u (m_u - 1)^2, lam_u = `ridge` x G_uu (each unit's own output
    energy, as in Levenberg-Marquardt): the ridge pulls scales towards 1 (no change), not towards 0 (pruning)."""
    if G.numel() == 0:
        return r.clone()
    lam = (RIDGE if ridge is None else ridge) * G.diagonal().clamp(min=1e-30 * float(G.diagonal().abs().max()) + 1e-300)
    A = G + torch.diag(lam)
    r = r + lam
    try:
        return torch.linalg.solve(A, r)
    except RuntimeError:
        return torch.linalg.lstsq(A, r[:, None]).solution[:, 0]


@torch.no_grad()
def least_squares(model: nn.Module, inputs: list[dict], heads: list[Unit], neurons: list[Unit] | None,
                  teacher: nn.Module | None = None, ridge: float | None = None) -> Repair:
    """The `ls` repair of pruning `heads` / `neurons` from `model`; `teacher` (default: `model` unmasked) gives
    the outputs to reproduce; `ridge` (default RIDGE) see `solve`."""
    teacher = model if teacher is None else teacher
    hm, nm = masks(model, heads, neurons)
    rep = Repair("ls", hm.clone().double(), None if nm is None else nm.clone().double())
    t_attn = {h.layer: h for h in attention_handles(teacher)}
    t_ffn = {f.layer: f for f in ffn_handles(teacher)}
    steps = []
    ffn = {f.layer: f for f in ffn_handles(model)}
    for h in attention_handles(model):
        steps.append(("attn", h.layer, h))
        if nm is not None:
            steps.append(("ffn", h.layer, ffn[h.layer]))
    if nm is not None:  # feed-forward blocks of layers whose attention block is gone
        done = {s[1] for s in steps if s[0] == "ffn"}
        steps += [("ffn", l, f) for l, f in ffn.items() if l not in done]
    steps.sort(key=lambda s: (s[1], s[0] != "attn"))
    runs = (Resume(model, len(inputs)), Resume(teacher, len(inputs)))
    post_norm = not get_adapter(model).pre_norm
    for kind, layer, handle in steps:
        if kind == "attn":
            kept = [q for q in handle.kept_heads if rep.head_scales[layer, q] != 0]
            t = t_attn[layer]
            module, t_module = handle.out_proj, t.out_proj
            firsts = (handle.q, t.q)
        else:
            kept = [n for n in handle.kept if rep.neuron_scales[layer, n] != 0]
            t = t_ffn[layer]
            module, t_module = handle.down, t.down
            firsts = (handle.up[0], t.up[0])
        if not kept:
            continue
        G, r = _normal_equations(model, teacher, inputs, heads, neurons, rep, kind, handle, kept, module, t_module, runs,
                                 firsts if post_norm else None)
        m = solve(G, r, ridge)
        if not bool(torch.isfinite(m).all()) or float(m.abs().max()) > MAX_SCALE:
            rep.stopped_at = f"layer {layer} {kind}: a scale of {float(m.abs().max()):.3g} (limit {MAX_SCALE:g})"
            break
        target = rep.head_scales if kind == "attn" else rep.neuron_scales
        target[layer, kept] = m
    return rep


def _normal_equations(model, teacher, inputs, heads, neurons, rep, kind, handle, kept, module, t_module, runs,
                      firsts=None):
    W = weight_rows(module)  # (hidden, width)
    b = module.bias.detach().double() if module.bias is not None else None
    current = handle.kept_heads if kind == "attn" else handle.kept
    pos = torch.tensor([current.index(u) for u in kept])
    K = len(kept)
    G = torch.zeros(K, K, dtype=torch.float64)
    r = torch.zeros(K, dtype=torch.float64)
    if kind == "attn":
        Wk = W.unflatten(1, (len(current), handle.head_dim))[:, pos, :]  # (hidden, K, dh)
        WtW = None
    else:
        Wk = W[:, pos]  # (hidden, K)
        WtW = Wk.t() @ Wk
    student, dense = runs
    layer = handle.layer
    ys: list[torch.Tensor] = []  # dense sublayer output (+ its residual stream, post-norm)
    res: dict = {}

    def dense_out(key, y):
        if key == 1:
            res["t"] = y
        else:
            ys.append(y + res.pop("t") if firsts is not None else y)

    def student_in(key, x):
        res["s" if key == 1 else "x"] = x

    with dense.reaching(layer), Tap({0: t_module, **({1: firsts[1]} if firsts else {})}, dense_out, output={0},
                                    stop_after=0) as tap:
        for i, batch in enumerate(inputs):
            dense.call = i
            tap.run(teacher, batch)  # unmasked: the dense outputs
    with student.reaching(layer), Tap({0: module, **({1: firsts[0]} if firsts else {})}, student_in, stop_after=0) as tap, \
            repaired(model, heads, neurons, rep):  # attached after the tap, which so sees unmasked inputs
        for i, batch in enumerate(inputs):
            student.call = i
            tap.run(model, batch)
            x, y = res.pop("x"), ys[i]
            if firsts is not None:  # post-norm: the sublayer and its residual are normalised together
                y = y - res.pop("s")
            if b is not None:
                y = y - b
            if kind == "attn":
                z = x.unflatten(1, (len(current), handle.head_dim))[:, pos, :]  # (N, K, dh)
                C = torch.einsum("nkj,dkj->nkd", z, Wk)  # (N, K, hidden)
                G += torch.einsum("nkd,nld->kl", C, C)
                r += torch.einsum("nkd,nd->k", C, y)
            else:
                a = x[:, pos]  # (N, K)
                G += (a.t() @ a) * WtW
                r += (a * (y @ Wk)).sum(0)
    return G, r
