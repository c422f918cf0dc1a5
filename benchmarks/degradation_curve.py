"""Where does SAP degrade, up to 0.9 sparsity, and from which sparsity does CF matter? (the SAP paper's second check)

sap, sap+cf, sapx, fisher, fisher+cf and random (seeds 0, 1, 2) at sparsity 0.1, 0.2, ..., 0.9 on the four
fine-tuned task models, one calibration context per task (512 seeded train examples; evaluation: all of dev).
One plot per task (OUT/degradation_<task>.png, and --img DIR) marks where CF starts to matter: the first
sparsity at which method+cf beats the method alone by more than random's sd at that sparsity.
Evaluation is a seeded sample of 500 dev examples per task (--eval-size; 0 = all of dev): 9 sparsities x 8
runs per task make the evaluation, not the scoring, the cost of the runs without CF.

    python benchmarks/degradation_curve.py --out runs/degradation --img docs/img [--budget-minutes 60]

The cheap runs (no CF) go first for every task, then the CF runs task by task (CoLA, SST-2, STS-B, MRPC: the
order of their cost), sparsity by sparsity for both methods. Finished runs are read back, so a time-limited or
interrupted run resumes when started again; the table lists what is still missing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import TASKS, Deadline, TaskRuns, label, mean_sd  # noqa: E402

from synprune.config import PruneConfig  # noqa: E402
from synprune.io import atomic_write_json, atomic_write_text, write_png  # noqa: E402

SPARSITIES = tuple(round(0.1 * i, 1) for i in range(1, 10))
PLAIN = ("sap", "sapx", "fisher")
WITH_CF = ("sap", "fisher")  # each also as +cf
CF_ORDER = ("cola", "sst2", "stsb", "mrpc")


def folder(out: Path, task: str, method: str, cf: bool, s: float, seed: int | None = None) -> Path:
    return out / task / (f"{method}{'+cf' if cf else ''}_s{s:g}" + (f"_seed{seed}" if seed is not None else ""))


def collect(tasks, out: Path, seeds, deadline: Deadline, eval_size: int | None = 500) -> dict[str, dict]:
    runs = {t: TaskRuns(t, PruneConfig(eval_size=eval_size)) for t in tasks}
    got: dict[str, dict] = {t: {} for t in tasks}

    def one(t, method, cf, s, seed=None):
        opts = {"method": method, "cf": cf, "sparsity": s, **({"seed": seed} if seed is not None else {})}
        res = runs[t].result(folder(out, t, method, cf, s, seed), deadline, **opts)
        if res is not None:
            got[t].setdefault(label(res), {}).setdefault(s, []).append(res["metric"]["pruned"])
            got[t]["_metric"] = res["metric"]

    for t in tasks:
        for s in SPARSITIES:
            for m in PLAIN:
                one(t, m, False, s)
            for seed in seeds:
                one(t, "random", False, s, seed)
    for t in [t for t in CF_ORDER if t in tasks] + [t for t in tasks if t not in CF_ORDER]:
        for s in SPARSITIES:
            for m in WITH_CF:
                one(t, m, True, s)
    for t in tasks:
        got[t]["_skipped"] = runs[t].skipped
    return got


def cf_onset(curves: dict, method: str) -> float | None:
    """First sparsity where method+cf beats the method alone by more than random's sd there."""
    alone, cf, rnd = curves.get(method, {}), curves.get(method + "+cf", {}), curves.get("random", {})
    for s in SPARSITIES:
        if s in alone and s in cf and len(rnd.get(s, [])) > 1:
            if cf[s][0] - alone[s][0] > mean_sd(rnd[s])[1]:
                return s
    return None


def onset_text(curves: dict, method: str) -> str:
    """The onset, or how far the comparison was measured when CF never mattered (or was not run)."""
    s = cf_onset(curves, method)
    if s is not None:
        return f"{s:g}"
    both = [x for x in SPARSITIES if x in curves.get(method, {}) and x in curves.get(method + "+cf", {})]
    return "not run" if not both else f"none up to {max(both):g}"


def plot(task: str, curves: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = curves["_metric"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rnd = curves.get("random", {})
    xs = [s for s in SPARSITIES if rnd.get(s)]
    if xs:
        mu = [mean_sd(rnd[s])[0] for s in xs]
        sd = [mean_sd(rnd[s])[1] for s in xs]
        ax.plot(xs, mu, color="grey", lw=1.2, label="random (mean ± sd)")
        ax.fill_between(xs, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], color="grey", alpha=0.25)
    styles = {"sap": ("C0", "-"), "sap+cf": ("C0", "--"), "sapx": ("C2", "-"), "fisher": ("C3", "-"), "fisher+cf": ("C3", "--")}
    for name, (color, ls) in styles.items():
        c = curves.get(name, {})
        xs = [s for s in SPARSITIES if s in c]
        if xs:
            ax.plot(xs, [c[s][0] for s in xs], ls, color=color, marker="o", ms=3, label=name)
    for method, color in (("sap", "C0"), ("fisher", "C3")):
        s = cf_onset(curves, method)
        if s is not None:
            ax.axvline(s, color=color, ls=":", lw=1)
            ax.annotate(f"CF matters for {method}", (s, ax.get_ylim()[0]), rotation=90, fontsize=7, color=color,
                        xytext=(2, 4), textcoords="offset points", va="bottom")
    ax.axhline(m["dense"], color="black", lw=0.8, ls="-.", label=f"dense {m['dense']:.2f}")
    ax.set_xlabel("sparsity (fraction of the 72 heads removed)")
    ax.set_ylabel(f"{m['name']} x 100 ({m['split']})")
    ax.set_title(f"{task} task model: metric against sparsity", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return write_png(path, fig, tight=False)


def markdown(got: dict, tasks) -> str:
    lines = ["| task (metric) | method | dense | " + " | ".join(f"{s:g}" for s in SPARSITIES) + " |",
             "|---|---|---:|" + "---:|" * len(SPARSITIES)]
    for t in tasks:
        curves = got[t]
        if "_metric" not in curves:
            continue
        m = curves["_metric"]
        for i, name in enumerate(("sap", "sap+cf", "sapx", "fisher", "fisher+cf", "random")):
            c = curves.get(name, {})
            cells = []
            for s in SPARSITIES:
                v = c.get(s)
                cells.append("-" if not v else (f"{mean_sd(v)[0]:.1f} ± {mean_sd(v)[1]:.1f}" if name == "random" else f"{v[0]:.1f}"))
            head = f"{t} ({m['name']})" if i == 0 else ""
            dense = f"{m['dense']:.1f}" if i == 0 else ""
            lines.append(f"| {head} | {name} | {dense} | " + " | ".join(cells) + " |")
    lines += ["", "| task | CF starts to matter for sap at | for fisher at |", "|---|---:|---:|"]
    for t in tasks:
        if "_metric" in got[t]:
            lines.append(f"| {t} | " + " | ".join(onset_text(got[t], m) for m in WITH_CF) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", default="0,1,2", help="random's seeds")
    ap.add_argument("--out", type=Path, default=Path("runs/degradation"))
    ap.add_argument("--img", type=Path, default=None, help="also write the plots here (e.g. docs/img)")
    ap.add_argument("--budget-minutes", type=float, default=None, help="start no new run after this long")
    ap.add_argument("--eval-size", type=int, default=500, help="seeded dev examples per task (0: all of dev)")
    args = ap.parse_args(argv)
    tasks = args.tasks.split(",")
    t0 = time.perf_counter()
    got = collect(tasks, args.out, [int(s) for s in args.seeds.split(",")], Deadline(args.budget_minutes),
                  args.eval_size or None)
    text = markdown(got, tasks)
    missing = [f for t in tasks for f in got[t]["_skipped"]]
    if missing:
        text += f"\nNot run within the time budget: {len(missing)} runs; rerun the same command to complete them.\n"
    atomic_write_text(args.out / "table.md", text)
    for t in tasks:
        if "_metric" in got[t]:
            for d in filter(None, (args.out, args.img)):
                plot(t, got[t], d / f"degradation_{t}.png")
    atomic_write_json(args.out / "summary.json", {
        "curves": {t: {k: {f"{s:g}": v for s, v in c.items()} for k, c in got[t].items() if not k.startswith("_")} for t in tasks},
        "cf_onset": {t: {m: cf_onset(got[t], m) for m in WITH_CF} for t in tasks}, "missing": missing,
        "seconds": round(time.perf_counter() - t0, 1)})
    print(text)
    print(f"{time.perf_counter() - t0:.0f} s; wrote {args.out / 'table.md'}, summary.json and the plots")
    return got


if __name__ == "__main__":
    main()
