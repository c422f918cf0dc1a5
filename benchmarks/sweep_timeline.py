"""Where the sweep's second process waited: reads a sweep's results.json (`timings.jobs`, the job timeline that
`evalpool` records) and prints each process's jobs per stage, the worker's idle gaps and the tail (from the last
job handed to the worker to the end of the sweep's jobs).

    python benchmarks/sweep_timeline.py runs/sweep/results.json [--gaps 1.0]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--gaps", type=float, default=1.0, help="list worker idle gaps longer than this (seconds)")
    args = p.parse_args(argv)
    jobs = json.loads(args.results.read_text())["timings"].get("jobs", [])
    if not jobs:
        raise SystemExit(f"{args.results} has no job timeline (a one-process sweep, or written before it was recorded)")
    end = max(j["start"] + j["seconds"] for j in jobs)
    print(f"job timeline: {len(jobs)} jobs over {end:.1f} s (from the worker pool's start)")
    for who in ("main", "worker"):
        mine = sorted((j for j in jobs if j["who"] == who), key=lambda j: j["start"])
        stages: dict[str, float] = {}
        for j in mine:
            stages[j["stage"]] = stages.get(j["stage"], 0.0) + j["seconds"]
        print(f"  {who:<6} {len(mine):3d} jobs, {sum(stages.values()):7.1f} s: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])))
        if who == "worker" and mine:
            gaps, t = [], 0.0
            for j in mine:
                if j["start"] - t > args.gaps:
                    gaps.append((t, j["start"] - t, j["what"]))
                t = max(t, j["start"] + j["seconds"])
            print(f"  worker idle: {sum(g for _, g, _ in gaps):.1f} s in {len(gaps)} gaps over {args.gaps} s; "
                  f"after its last job: {end - t:.1f} s")
            for at, gap, what in sorted(gaps, key=lambda g: -g[1])[:8]:
                print(f"    {gap:6.1f} s idle from {at:6.1f} s (then: {what})")


if __name__ == "__main__":
    main()
