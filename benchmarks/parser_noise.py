"""How much SAP depends on its parser: spaCy against gold Universal Dependencies trees (en_ewt dev).

1. spaCy's attachment scores against the gold trees (UAS; LAS after the label mapping SPACY_TO_UD), on the
   words whose character spans both tokenizations share; also after converting spaCy's prepositions and
   copulas to UD's style, to separate annotation-scheme differences from parser errors.
2. SAP (bundled MiniLM, sparsity 0.5 by default) calibrated on the same sentences with gold trees and with
   spaCy's trees: rank correlation of the head penalties, overlap of the pruned sets, and the STS-B dev
   Spearman of each pruned model. For scale: gold trees on a disjoint sample of as many sentences (sampling
   noise), and random pruned sets (expected Jaccard).
3. The same with p = 5, 10, 20, 40% of the gold arcs (head replaced by a random other word) or labels
   (replaced by a random other label) corrupted, seeded, repeated; plot and markdown table.

The model's attention does not depend on the trees, so each sentence set is scanned once and its word-level
attention replayed to SAP's own collectors for every tree set (checked against a real scan at start).

    python benchmarks/parser_noise.py --out runs/parser_noise
"""
from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch
from scipy.stats import hypergeom, spearmanr

from synprune.calibrate.attention import AttentionBatch, batch_arcs
from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.syntax.conllu import read_conllu
from synprune.evaluation.evaluate import prepare, task_metrics
from synprune.io import atomic_write_json, atomic_write_text, write_png
from synprune.model.load import load_model
from synprune.syntax.parse import Parse, parse_texts
from synprune.methods import score
from synprune.run.prune import choose, evaluate_heads
from synprune.progress import bar, log
from synprune.selection.select import select
from synprune.data.tasks import Example, load_task

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONLLU = REPO.parent / "shared" / "data" / "ud" / "en_ewt" / "en_ewt-ud-dev.conllu"

# spaCy's English models use ClearNLP-style labels; UD's universal relations (subtypes stripped) are compared.
# Approximate: where the schemes attach words differently (prepositions, copulas) the label is moot because
# the head already differs; those choices are marked "(moot)".
SPACY_TO_UD = {
    "ROOT": "ROOT", "acl": "acl", "relcl": "acl", "acomp": "xcomp", "advcl": "advcl", "advmod": "advmod",
    "neg": "advmod", "quantmod": "advmod", "agent": "case", "amod": "amod", "appos": "appos",
    "attr": "nsubj",  # existential "there is a cat": cat = nsubj in UD (copular predicates: moot)
    "aux": "aux", "auxpass": "aux", "case": "case", "cc": "cc", "preconj": "cc", "ccomp": "ccomp",
    "compound": "compound", "prt": "compound", "conj": "conj", "csubj": "csubj", "csubjpass": "csubj",
    "dative": "iobj", "dep": "dep", "meta": "dep", "det": "det", "predet": "det", "dobj": "obj", "expl": "expl",
    "intj": "discourse", "mark": "mark", "nmod": "nmod", "poss": "nmod", "npadvmod": "obl", "nsubj": "nsubj",
    "nsubjpass": "nsubj", "nummod": "nummod", "oprd": "xcomp", "parataxis": "parataxis",
    "pcomp": "advcl",  # complement of a preposition (moot: UD attaches it to the preposition's head)
    "pobj": "obl",  # object of a preposition (moot: UD attaches it to the preposition's head; obl or nmod)
    "prep": "case",  # preposition (moot: UD attaches it to its object)
    "punct": "punct", "xcomp": "xcomp",
}


# ---- attachment scores -----------------------------------------------------------------------------------

COPULAS = {"be", "is", "was", "are", "were", "been", "being", "am", "'s", "'re", "'m", "s", "m", "re"}


def to_ud_style(p: Parse, text: str) -> Parse:
    """spaCy's tree with the two commonest scheme differences turned UD's way (approximate):
    a preposition's object takes the preposition's place and the preposition becomes its `case`;
    a form of "be" with an attr/acomp becomes that predicate's `cop`, and the predicate heads the clause."""
    heads, deps = list(p.heads), list(p.deps)
    children: dict[int, list[int]] = {}
    for i, h in enumerate(p.heads):
        if h != i and h >= 0:
            children.setdefault(h, []).append(i)
    for prep, kids in children.items():
        if p.deps[prep] != "prep":
            continue
        objs = [k for k in kids if p.deps[k] == "pobj"]
        if objs:
            obj = objs[0]
            heads[obj], deps[obj] = (obj if p.heads[prep] == prep else p.heads[prep]), "obl"
            heads[prep], deps[prep] = obj, "case"
    for cop, kids in children.items():
        preds = [k for k in kids if p.deps[k] in ("attr", "acomp")]
        if not preds or text[slice(*p.words[cop])].lower() not in COPULAS:
            continue
        pred = preds[0]
        was_root = heads[cop] == cop
        heads[pred], deps[pred] = (pred if was_root else heads[cop]), ("ROOT" if was_root else deps[cop])
        heads[cop], deps[cop] = pred, "cop"
        for k in kids:
            if k != pred and heads[k] == cop:
                heads[k] = pred
    return Parse(p.words, tuple(heads), tuple(deps))


def attachment(gold: Sequence[Parse], predicted: Sequence[Parse], punct: bool = True) -> dict:
    """UAS and LAS over gold words whose span the prediction has too, with coverage and per-label UAS."""
    total = scored = uas = las = 0
    by_label: Counter = Counter()
    right: Counter = Counter()
    for g, s in zip(gold, predicted):
        where = {span: j for j, span in enumerate(s.words)}
        for i, span in enumerate(g.words):
            if g.words[i][0] == g.words[i][1] or (not punct and g.deps[i] == "punct"):
                continue
            total += 1
            j = where.get(span)
            if j is None:
                continue
            scored += 1
            gold_root, pred_root = g.heads[i] == i, s.heads[j] == j
            same_head = (gold_root and pred_root) or (not gold_root and not pred_root and s.heads[j] >= 0
                                                      and s.words[s.heads[j]] == g.words[g.heads[i]])
            by_label[g.deps[i]] += 1
            if same_head:
                uas += 1
                right[g.deps[i]] += 1
                las += SPACY_TO_UD.get(s.deps[j], s.deps[j]) == g.deps[i]
    return {"words": total, "scored": scored, "coverage": scored / max(total, 1), "uas": uas / max(scored, 1),
            "las": las / max(scored, 1), "uas_by_gold_label": {k: (right[k] / n, n) for k, n in by_label.most_common()}}


# ---- corruption ------------------------------------------------------------------------------------------

def corrupt(parses: Sequence[Parse], kind: str, p: float, rng: random.Random, labels: Sequence[str]) -> list[Parse]:
    """With probability p per non-root arc: a random other head word (`arcs`) or a random other label (`labels`)."""
    out = []
    for parse in parses:
        heads, deps = list(parse.heads), list(parse.deps)
        n = len(heads)
        for i in range(n):
            if heads[i] == i or heads[i] < 0 or rng.random() >= p:
                continue
            if kind == "arcs":
                others = [j for j in range(n) if j not in (i, heads[i])]
                if others:
                    heads[i] = rng.choice(others)
            else:
                deps[i] = rng.choice([lab for lab in labels if lab != deps[i]])
        out.append(Parse(parse.words, tuple(heads), tuple(deps)))
    return out


# ---- replaying one scan's attention to SAP for many tree sets --------------------------------------------

@dataclass
class Recorded:
    positions: list[int]
    token_mask: torch.Tensor
    word_attn: torch.Tensor
    word_mask: torch.Tensor


class Recorder:
    """A collector that keeps each batch's word-level attention (a few hundred sentences fit in memory)."""

    def __init__(self, items):
        self.where = {id(it): n for n, it in enumerate(items)}
        self.batches: list[Recorded] = []

    def update(self, batch: AttentionBatch) -> None:
        self.batches.append(Recorded([self.where[id(it)] for it in batch.items], batch.token_mask, batch.word_attn,
                                     batch.word_mask))


class Replay(Calibration):
    """A calibration context whose scans replay recorded attention with this context's own trees. Only
    word-level collectors (SAP's) can run on it: token attention is not kept."""

    def __init__(self, recording: Recorder, tm, examples, config, parses):
        super().__init__(tm, examples, config, parses=parses)
        self.recording = recording

    def run_scan(self, collectors, keep_punct=False, description="attention"):
        index = self.dependency_ranking(1, keep_punct).index
        for rec in self.recording.batches:
            items = [self.items[n] for n in rec.positions]
            dropped = [SimpleNamespace(dropped=tuple(np.flatnonzero(~m[:len(it.parse_a.words)].numpy()).tolist()))
                       for it, m in zip(items, rec.word_mask)]
            B, L, H = rec.word_attn.shape[:3]
            batch = AttentionBatch(torch.zeros(B, L, H, 0, 0), rec.token_mask, rec.word_attn, rec.word_mask,
                                   batch_arcs(items, dropped, index, keep_punct), items)
            for c in collectors:
                c.update(batch)
        return collectors


def record(tm, texts: list[str], parses: list[Parse], cfg: PruneConfig) -> Recorder:
    ctx = Calibration(tm, [Example(t) for t in texts], cfg, parses=(parses, [None] * len(texts)))
    rec = Recorder(ctx.items)
    ctx.run_scan([rec], description=f"attention of {len(texts)} sentences")
    return rec


def sap(rec: Recorder, tm, texts, parses, cfg) -> tuple[np.ndarray, list[tuple[int, int]]]:
    ctx = Replay(rec, tm, [Example(t) for t in texts], cfg, (list(parses), [None] * len(texts)))
    scores = score(ctx, cfg)
    selection = choose(ctx, cfg, scores)[0]  # (selection, cf log, config used, budget report)
    return np.asarray(scores.scores, dtype=float), [tuple(h) for h in selection.pruned]


def check_replay(tm, texts, parses, cfg) -> float:
    """Largest difference between SAP penalties from a real scan and from a replayed one (should be 0)."""
    real = score(Calibration(tm, [Example(t) for t in texts], cfg, parses=(list(parses), [None] * len(texts))), cfg)
    replayed, _ = sap(record(tm, texts, list(parses), cfg), tm, texts, parses, cfg)
    return float(np.abs(np.asarray(real.scores) - replayed).max())


# ---- report ----------------------------------------------------------------------------------------------

def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / max(len(a | b), 1)


def plot(rows: list[dict], refs: dict, ps: Sequence[float], path: Path) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), layout="constrained")
    panels = (("penalty_spearman", "rank correlation of SAP penalties\nwith gold-tree penalties (Spearman)"),
              ("jaccard", "pruned-set overlap with gold trees\n(Jaccard)"), ("metric", "STS-B dev Spearman x100\nof the pruned model"))
    at_zero = {"penalty_spearman": 1.0, "jaccard": 1.0, "metric": refs["gold"]["metric"]}  # p = 0: the gold trees
    handles: dict = {}
    for ax, (key, title) in zip(axes, panels):
        for kind, color in (("arcs", "C0"), ("labels", "C1")):
            stats = [[at_zero[key]]] + [[r[key] for r in rows if r["kind"] == kind and r["p"] == p and r.get(key) is not None]
                                        for p in ps]
            mean = [np.mean(s) if s else np.nan for s in stats]
            err = [np.std(s) if len(s) > 1 else 0 for s in stats]
            h = ax.errorbar([0] + [100 * p for p in ps], mean, yerr=err, marker="o", color=color, capsize=3)
            handles[f"gold trees, {kind} corrupted (mean ± sd over seeds)"] = h
        for name, (color, style) in (("spacy", ("C3", "--")), ("resample", ("grey", ":")), ("random", ("black", "-."))):
            if refs.get(name, {}).get(key) is not None:
                handles[refs[name]["label"]] = ax.axhline(refs[name][key], color=color, linestyle=style)
        ax.set_xlabel("% of gold arcs / labels corrupted")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=3, fontsize=8)
    write_png(path, fig, tight=False)


def markdown(att: dict, att_conv: dict, att_nopunct: dict, refs: dict, rows: list[dict], meta: dict) -> str:
    f3 = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    f2 = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    out = [f"Parser benchmark: {meta['sentences']} en_ewt dev sentences for attachment scores; SAP on "
           f"{meta['calib']} of them (seed {meta['seed']}), sparsity {meta['sparsity']}, k={meta['k']}, "
           f"{meta['model']}; metric: STS-B dev Spearman x100 (dense {meta['dense']:.2f}).", "",
           "| spaCy against gold | coverage | UAS | LAS |", "|---|---:|---:|---:|"]
    for name, a in (("as parsed", att), ("as parsed, without punct", att_nopunct), ("prepositions and copulas converted to UD style", att_conv)):
        out.append(f"| {name} | {a['coverage']:.3f} | {a['uas']:.3f} | {a['las']:.3f} |")
    out += ["", "UAS by gold label (as parsed; most frequent 12):", "", "| label | words | UAS |", "|---|---:|---:|"]
    for label, (acc, n) in list(att["uas_by_gold_label"].items())[:12]:
        out.append(f"| {label} | {n} | {acc:.3f} |")
    out += ["", "| SAP calibrated on | penalty rank corr. with gold | Jaccard with gold | shared pruned heads | STS-B Spearman |",
            "|---|---:|---:|---:|---:|"]
    gold = refs["gold"]
    out.append(f"| gold trees | 1 | 1 | {gold['n_pruned']}/{gold['n_pruned']} | {f2(gold['metric'])} |")
    for name in ("spacy", "resample", "random"):
        r = refs[name]
        out.append(f"| {r['label']} | {f3(r.get('penalty_spearman'))} | {f3(r['jaccard'])} | "
                   f"{r['shared']:g}/{gold['n_pruned']} | {f2(r.get('metric'))} |")
    for kind in ("arcs", "labels"):
        for p in sorted({r["p"] for r in rows}):
            sel = [r for r in rows if r["kind"] == kind and r["p"] == p]
            m = [r["metric"] for r in sel if r.get("metric") is not None]
            out.append(f"| gold, {100 * p:.0f}% {kind} corrupted ({len(sel)} seeds) | "
                       f"{np.mean([r['penalty_spearman'] for r in sel]):.3f} ± {np.std([r['penalty_spearman'] for r in sel]):.3f} | "
                       f"{np.mean([r['jaccard'] for r in sel]):.3f} ± {np.std([r['jaccard'] for r in sel]):.3f} | "
                       f"{np.mean([r['shared'] for r in sel]):.1f}/{gold['n_pruned']} | {f2(np.mean(m)) if m else '-'} |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conllu", type=Path, default=DEFAULT_CONLLU)
    ap.add_argument("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--ps", default="0.05,0.1,0.2,0.4")
    ap.add_argument("--repeats", type=int, default=3, help="corruption seeds per (kind, p)")
    ap.add_argument("--eval-repeats", type=int, default=1, help="seeds per (kind, p) whose pruned model is evaluated")
    ap.add_argument("--random-evals", type=int, default=1, help="seeded random pruned sets evaluated for scale")
    ap.add_argument("--eval-size", type=int, default=None, help="STS-B dev pairs to evaluate on (default: all 1500)")
    ap.add_argument("--glue-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/parser_noise"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        timings[stage] = round(time.perf_counter() - t0 - sum(timings.values()), 1)

    bank = read_conllu(args.conllu)
    spacy_parses, parse_info = parse_texts(bank.texts)
    att = attachment(bank.parses, spacy_parses)
    att_nopunct = attachment(bank.parses, spacy_parses, punct=False)
    att_conv = attachment(bank.parses, [to_ud_style(p, t) for p, t in zip(spacy_parses, bank.texts)])
    log(f"spaCy vs gold on {len(bank.texts)} sentences: coverage {att['coverage']:.3f}, UAS {att['uas']:.3f}, "
        f"LAS {att['las']:.3f}; UD-style conversion: UAS {att_conv['uas']:.3f}, LAS {att_conv['las']:.3f}")
    lap("parse_and_attachment")

    cfg = PruneConfig(sparsity=args.sparsity, k=args.k, calib_size=args.calib_size, seed=args.seed).validate()
    tm = load_model(args.model)
    order = list(range(len(bank.texts)))
    random.Random(args.seed).shuffle(order)
    calib, other = sorted(order[:args.calib_size]), sorted(order[args.calib_size:2 * args.calib_size])
    texts = [bank.texts[i] for i in calib]
    gold = [bank.parses[i] for i in calib]
    spacy = [spacy_parses[i] for i in calib]
    check = check_replay(tm, texts[:32], gold[:32], cfg)
    if check > 1e-9:
        raise SystemExit(f"replayed attention differs from a real scan (max penalty difference {check})")
    lap("replay_check")

    rec_gold = record(tm, texts, gold, cfg)
    rec_spacy = record(tm, texts, spacy, cfg)
    other_texts = [bank.texts[i] for i in other]
    rec_other = record(tm, other_texts, [bank.parses[i] for i in other], cfg)
    lap("attention_scans")

    data = load_task("stsb", args.glue_dir)
    metric_names = task_metrics(tm, data)
    dev = data.splits["dev"][:args.eval_size] if args.eval_size else data.splits["dev"]
    prepared = {"dev": prepare(tm, dev, batch_size=64, max_length=cfg.max_length)}
    evaluated: dict[frozenset, float] = {}

    def metric(pruned) -> float:
        key = frozenset(pruned)
        if key not in evaluated:
            evaluated[key] = evaluate_heads(tm, prepared, metric_names, list(pruned))["dev"][metric_names[0]]
        return evaluated[key]

    dense = metric([])
    pen_gold, pruned_gold = sap(rec_gold, tm, texts, gold, cfg)
    n_pruned = len(pruned_gold)

    def compare(pen, pruned, evaluate: bool) -> dict:
        return {"penalty_spearman": float(spearmanr(pen_gold.ravel(), pen.ravel())[0]), "jaccard": jaccard(pruned_gold, pruned),
                "shared": len(set(pruned_gold) & set(pruned)), "metric": metric(pruned) if evaluate else None,
                "pruned_heads": [list(h) for h in pruned]}

    refs = {"gold": {"label": "gold trees", "n_pruned": n_pruned, "metric": metric(pruned_gold),
                     "pruned_heads": [list(h) for h in pruned_gold]}}
    refs["spacy"] = {"label": "spaCy trees, same sentences", **compare(*sap(rec_spacy, tm, texts, spacy, cfg), True)}
    refs["resample"] = {"label": f"gold trees, {len(other)} other sentences",
                        **compare(*sap(rec_other, tm, other_texts, [bank.parses[i] for i in other], cfg), True)}
    # random sets of the same size: |A & B| is hypergeometric, so the expected overlap is exact
    x = np.arange(n_pruned + 1)
    pmf = hypergeom(tm.n_heads, n_pruned, n_pruned).pmf(x)
    random_metrics = []
    for r in range(args.random_evals):
        order = [(l, h) for l in range(tm.grid[0]) for h in range(tm.grid[1])]
        random.Random(f"random-{args.seed}-{r}").shuffle(order)
        random_metrics.append(metric(select(order, tm.grid, n_pruned, cfg.layer_fraction).pruned))
    refs["random"] = {"label": "random heads (expected overlap; metric: mean of "
                               f"{args.random_evals} seeded sets)", "jaccard": float((pmf * x / np.maximum(2 * n_pruned - x, 1)).sum()),
                      "shared": float((pmf * x).sum()), "metric": float(np.mean(random_metrics)) if random_metrics else None,
                      "metrics": random_metrics}
    lap("sap_gold_spacy_resample")

    ps = [float(x) for x in args.ps.split(",")]
    labels = sorted({d for p in gold for i, d in enumerate(p.deps) if p.heads[i] != i})
    rows = []
    with bar("corrupted trees", 2 * len(ps) * args.repeats) as advance:
        for kind in ("arcs", "labels"):
            for p in ps:
                for r in range(args.repeats):
                    rng = random.Random(f"{args.seed}-{kind}-{p}-{r}")
                    noisy = corrupt(gold, kind, p, rng, labels)
                    rows.append({"kind": kind, "p": p, "repeat": r,
                                 **compare(*sap(rec_gold, tm, texts, noisy, cfg), r < args.eval_repeats)})
                    advance(1)
    lap("sap_corrupted")
    plot(rows, refs, ps, args.out / "parser_noise.png")
    meta = {"sentences": len(bank.texts), "calib": len(texts), "seed": args.seed, "sparsity": args.sparsity, "k": args.k,
            "model": tm.name, "dense": dense, "eval_pairs": len(dev), "conllu": str(args.conllu), "conllu_sha256": bank.sha256,
            "parser": parse_info.get("parser"), "replay_check_max_diff": check}
    md = markdown(att, att_conv, att_nopunct, refs, rows, meta)
    timings["total"] = round(time.perf_counter() - t0, 1)
    report = {"meta": meta, "attachment": {"as_parsed": att, "without_punct": att_nopunct, "ud_style": att_conv},
              "label_map": SPACY_TO_UD, "references": refs, "corrupted": rows, "timings_s": timings}
    atomic_write_text(args.out / "parser_noise.md", md + f"\nTimings (s): {timings}\n")
    atomic_write_json(args.out / "parser_noise.json", report)
    print(md)
    print(f"timings (s): {timings}")
    print(f"wrote {args.out}/parser_noise.png, parser_noise.md, parser_noise.json")
    return report


if __name__ == "__main__":
    main()
