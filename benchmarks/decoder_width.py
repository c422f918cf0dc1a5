"""Decoder width pruning recipes side by side (issue 26, deliverable 4): one loaded model, one calibration
context (EWT dev sentences), windowed perplexity on EWT test (the test texts joined with newlines, windows of
256 tokens, start token first, the first --eval windows). Each variant prints one JSON line.

Variants (comma-separated):
  METHOD:REPAIR        e.g. fisher:ls, fisher:refit, flap:bias  (synprune's selection under --budget, then the repair)
  recon:OPT=V;OPT=V    --method recon with ReconOptions overridden (allocation, head_ratio, rechoose_heads, ...)
  rand:REPAIR@SEED     random heads and neurons, the same number in every layer (the uniform plan), optional repair

  python benchmarks/decoder_width.py --budget params:0.8 --calib 256 --variants "rand:@0,fisher:ls,recon:"
"""
import sys, time, math, argparse, json
import torch
from synprune.model.load import load_model
from synprune.data.tasks import load_ewt, make_split
from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.evaluation.evaluate import task_metrics
from synprune.run.prune import choose_heads
from synprune.repair import repaired
import synprune.methods.recon as R

p = argparse.ArgumentParser()
p.add_argument("--model", default="smollm2")
p.add_argument("--budget", default="params:0.8")
p.add_argument("--calib", type=int, default=64)
p.add_argument("--eval", type=int, default=32)
p.add_argument("--ridge", type=float, help="refit/OBS ridge (default: RefitOptions' for METHOD:refit, ReconOptions' for recon)")
p.add_argument("--drift", action="store_true", help="METHOD:refit also cancels the residual drift (recon: its own default)")
p.add_argument("--variants", default="fisher:ls,fisher:refit,recon")
a = p.parse_args()
import synprune.repair.refit as RF
RF.DEFAULT = RF.RefitOptions(**({"ridge": a.ridge} if a.ridge else {}), drift=a.drift)
tm = load_model(a.model); model, tok = tm.model, tm.tokenizer
data = load_ewt()
bos = tok("a")["input_ids"][0]
ids = tok("\n".join(e.text_a for e in data.splits["test"]), add_special_tokens=False)["input_ids"]
ev = torch.tensor([[bos] + ids[i*255:(i+1)*255] for i in range(a.eval)])
@torch.no_grad()
def ppl():
    nll = 0.0
    bs = 8 if len(tok) < 100000 else 2
    for i in range(0, len(ev), bs):
        x = ev[i:i+bs]
        lg = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        nll += torch.nn.functional.cross_entropy(lg.flatten(0,1), x[:,1:].flatten(), reduction="sum").item()
    return math.exp(nll/ev[:,1:].numel())
dense = ppl(); print("dense", dense, flush=True)
total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
from synprune.selection.budget import CostModel
from synprune.selection.layerplan import total_parameters
body = CostModel.from_model(model).total("params")
F = float(a.budget.split(":")[1])
body_keep = 1 - (1 - F) * total / body
cfg0 = PruneConfig(calib_size=a.calib, units="heads,neurons")
data2 = data
split = make_split(data2, a.calib, 0, None)
ctx = Calibration(tm, split.calibration, cfg0, task_metrics(tm, data2))
for v in a.variants.split(","):
    t0 = time.time()
    name, _, rest = v.partition(":")
    if name == "recon":
        opts = dict(kv.split("=") for kv in rest.split(";") if kv)
        conv = {"allocation": str, "head_ratio": float, "rechoose_heads": lambda s: s == "True", "ridge": float, "min_heads": int, "drift": lambda s: s == "True"}
        R.RECON = R.ReconOptions(**{**({"ridge": a.ridge} if a.ridge else {}), **{k: conv[k](x) for k, x in opts.items()}})
        cfg = cfg0.replace(method="recon", budget=a.budget, repair="refit")
    else:
        cfg = cfg0.replace(method=name, budget=f"params:{body_keep:.6f}", repair=rest or "none")
    if name == "rand":
        import random as _r
        from types import SimpleNamespace
        from synprune.selection.layerplan import plan_for_budget
        from synprune.selection.budget import parse_budget
        from synprune.selection.select import Selection
        from synprune.repair import make_repair
        from synprune.model.activations import model_inputs
        seed = int(rest.split("@")[1]) if "@" in rest else 0
        rng = _r.Random(seed)
        plan = plan_for_budget(model, parse_budget(a.budget), 1.0)
        L, H = tm.grid; N = CostModel.from_model(model).intermediate
        hs = [(l, h) for l in range(L) for h in rng.sample(range(H), plan.heads[l])]
        ns = [(l, n) for l in range(L) for n in rng.sample(range(N), plan.neurons[l])]
        rep = rest.split("@")[0]
        R_ = make_repair(rep, model, list(model_inputs(tm, ctx.prepared.batches)), hs, ns) if rep not in ("", "none") else None
        ch = SimpleNamespace(selection=Selection(hs, [], neurons=ns), neurons=ns, repair=R_)
    else:
        ch = choose_heads(ctx, cfg)
    sec = time.time() - t0
    kept = total - (CostModel.from_model(model).total("params") * (1 - CostModel.from_model(model).kept_fraction(ch.selection.pruned, "params", neurons=ch.selection.neurons)))
    with repaired(model, ch.selection.pruned, ch.neurons, ch.repair):
        p1 = ppl()
    print(json.dumps({"variant": v, "ppl": round(p1, 2), "x": round(p1 / dense, 3), "kept_total": round(kept / total, 4),
                      "heads": len(ch.selection.pruned), "neurons": len(ch.selection.neurons), "s": round(sec, 1),
                      "repair": ch.repair.summary() if ch.repair else None}), flush=True)
