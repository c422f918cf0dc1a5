"""Why bias compensation (`--repair bias`, FLAP's mean replacement) breaks the fine-tuned classifiers (issue 13's
finding), measured: one pruning (method x FLOPs budget, heads and neurons) of a cached task model, evaluated on
dev with no repair, with FLAP's compensation (means over all tokens), with the means taken at the token the
classifier reads ([CLS]) in the last layer or in every layer, and with each layer's compensation alone; and,
for each, the dev logits' margin (second logit minus first: its mean and spread) and the share of examples
predicted as the second label.

    python benchmarks/bias_classifiers.py --task mrpc --method fisher --budget 0.6 --out benchmarks/results/bias_classifiers.md

The task model is the cached fine-tuned classifier (`synprune finetune --task T`); 512 calibration examples.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="mrpc")
    p.add_argument("--method", default="fisher")
    p.add_argument("--budget", type=float, default=0.6, help="FLOPs kept")
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--out", type=Path, default=None, help="append the table here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from ffn_table import context
    from synprune.model.activations import model_inputs
    from synprune.evaluation.evaluate import dense_outputs as outputs
    from synprune.io import atomic_write_text
    from synprune.data.metrics import compute
    from synprune.run.prune import choose_heads, evaluation_inputs
    from synprune.progress import set_quiet
    from synprune.repair import Repair, pooled_token, repaired
    from synprune.repair.bias import bias_compensation

    set_quiet(True)
    tm, data, split, ctx, base = context(args.task, None, args.calib_size, None)
    if tm.kind != "classifier":
        raise SystemExit(f"{args.task}'s model is a {tm.kind}, not a classifier")
    cfg = base.replace(method=args.method, units="heads,neurons", budget=f"flops:{args.budget:g}").validate()
    chosen = choose_heads(ctx, cfg)
    heads, neurons = chosen.selection.pruned, chosen.selection.neurons
    dev = next(iter(evaluation_inputs(ctx, split).values()))
    metric = ctx.metric_names[0]
    inputs = list(model_inputs(tm, ctx.prepared.batches))
    last = tm.grid[0] - 1
    pool = pooled_token(tm.kind)

    def compensation(pooled_layers=()):
        return bias_compensation(tm.model, inputs, heads, neurons, pool, pooled_layers)

    def layer_alone(rep, l):
        return Repair("bias", attn_bias={k: v for k, v in rep.attn_bias.items() if k == l},
                      ffn_bias={k: v for k, v in rep.ffn_bias.items() if k == l})

    flap = compensation()
    pruned = (heads, neurons)
    variants = [("dense", ([], None), None), ("no repair", pruned, None),
                ("bias: means over all tokens (FLAP)", pruned, flap),
                ("bias: last layer's means at [CLS]", pruned, compensation([last])),
                ("bias: every layer's means at [CLS]", pruned, compensation(range(last + 1)))]
    variants += [(f"bias: layer {l}'s compensation alone", pruned, layer_alone(flap, l))
                 for l in range(last + 1) if l in flap.attn_bias or l in flap.ffn_bias]
    lines = [f"{args.task} task model, {args.method} on heads and neurons at FLOPs {args.budget:g} ({len(heads)} heads, "
             f"{len(neurons)} neurons pruned), {len(ctx.examples)} calibration examples; dev, {dev.n} examples", "",
             f"| repair | {metric} | predicted label 1 | logit margin mean | logit margin sd |", "|---|---|---|---|---|"]
    for name, units, rep in variants:
        with torch.no_grad(), repaired(tm.model, *units, rep):
            logits = outputs(tm, dev)  # per dev example; the metric scores their argmax, as `evaluate` does
        predicted = logits.argmax(1)
        margin = logits[:, 1] - logits[:, 0]
        row = (f"| {name} | {compute([metric], predicted, dev.labels)[metric]:.2f} | {(predicted == 1).mean():.3f} | "
               f"{margin.mean():+.2f} | {margin.std():.2f} |")
        lines.append(row)
        print(row, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        old = args.out.read_text() + "\n" if args.out.exists() else ""
        atomic_write_text(args.out, old + text)


if __name__ == "__main__":
    main()
