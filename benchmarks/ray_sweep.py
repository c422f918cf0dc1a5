"""A sweep on a local Ray instance (`synprune sweep --executor ray`) against the default two-process pool.

    python benchmarks/ray_sweep.py [--model PATH] [--task stsb] [--methods magnitude,random,fisher]
        [--sparsities 0.25,0.5] [--calib-size 32] [--eval-size 100] [--num-cpus 2] [--address ADDR]
        [--out benchmarks/results/ray_sweep.json]

Needs Ray (`pip install 'synprune[ray]'`). Starts `ray.init(num_cpus=N)` here (or joins the cluster at
--address), runs the same sweep three times into fresh folders: the default pool, Ray, and Ray again into
Ray's folder (a resume: every run must be read back, no job submitted). It checks that Ray's runs prune the
same heads with the same metrics as the pool's, that every run folder and the report files were written, and
prints the wall-clock seconds of each, measured side by side in this one process. The pool shares one
calibration context over all runs; each Ray task builds its own (and pays for the workers' imports), so on
one machine Ray is slower: it is for runs spread over several machines.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder or name (default: the bundled MiniLM)")
    p.add_argument("--task", default="stsb")
    p.add_argument("--methods", default="magnitude,random,fisher")
    p.add_argument("--sparsities", default="0.25,0.5")
    p.add_argument("--calib-size", type=int, default=32)
    p.add_argument("--eval-size", type=int, default=100)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--address", default=None, help="a running Ray cluster (default: start a local instance)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_sweep.json"))
    args = p.parse_args(argv)
    try:
        import ray
    except ImportError:
        print("ray is not installed: pip install 'synprune[ray]'", file=sys.stderr)
        return 2
    from synprune.progress import set_quiet
    from synprune.run.sweep import sweep

    set_quiet(True)
    common = dict(task=args.task, methods=args.methods.split(","), sparsities=[float(s) for s in args.sparsities.split(",")],
                  seeds=[0], calib_size=args.calib_size, eval_size=args.eval_size)
    tmp = Path(tempfile.mkdtemp(prefix="ray_sweep."))
    seconds = {}

    def timed(name, **kw):
        t = time.perf_counter()
        result = sweep(args.model, **common, **kw)
        seconds[name] = round(time.perf_counter() - t, 1)
        return result

    pool = timed("pool", out=tmp / "pool")
    t = time.perf_counter()
    ray.init(address=args.address, num_cpus=None if args.address else args.num_cpus, include_dashboard=False,
             log_to_driver=False)
    seconds["ray.init"] = round(time.perf_counter() - t, 1)
    try:
        on_ray = timed("ray", out=tmp / "ray", executor="ray")
        resumed = timed("ray resume", out=tmp / "ray", executor="ray")
    finally:
        ray.shutdown()

    def picked(result):
        return {n: (r.pruned_heads, r.metric["pruned"]) for n, r in result.results.items()}

    checks = {
        "same heads and metrics as the pool": picked(on_ray) == picked(pool),
        "every run folder written": all((tmp / "ray" / r["run"] / "result.json").is_file() for r in on_ray.rows),
        "results and report written": all((tmp / "ray" / f).is_file() for f in ("results.csv", "results.json", "report.html")),
        "resume read every run back": sorted(resumed.summary["reused_runs"]) == sorted(on_ray.results),
    }
    record = {"runs": len(pool.rows), "sweep": common, "num_cpus": args.num_cpus, "address": args.address,
              "seconds": seconds, "checks": checks, "ray": ray.__version__,
              "rows": [{k: r[k] for k in ("method", "sparsity", "n_pruned", "dense", "pruned")} for r in on_ray.rows]}
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print("wall-clock seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
