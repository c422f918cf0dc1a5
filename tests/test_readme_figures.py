"""benchmarks/readme_figures.py reads the folders the README's commands write and prints the quoted figures."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("readme_figures", Path(__file__).parents[1] / "benchmarks" / "readme_figures.py")
RF = importlib.util.module_from_spec(spec)
spec.loader.exec_module(RF)


def test_sweep_time_split(tmp_path):
    (tmp_path / "results.csv").write_text("method,cf,sparsity,seed,seconds\nsap,True,0.5,0,30\nsap,False,0.5,0,10\n"
                                          "fisher,False,0.5,0,20\n")
    line, = RF.sweep_figures(tmp_path)
    assert "the 1 +cf runs took 30 s (50%), the other 2 runs 30 s" in line


def test_explain_figures(tmp_path):
    from synprune.explain.heads import best_heads_markdown

    heads = [{"layer": l, "head": h, "sap_penalty": float(p), "entropy": float(p), "syntactic_alignment": float(-p)}
             for (l, h), p in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [1, 2, 3, 4])]
    (tmp_path / "heads.json").write_text(json.dumps({"heads": heads}))
    share = {"kept_share": 0.25}
    (tmp_path / "retention.json").write_text(json.dumps({"sap@0.5": {
        "strong_attention_mass": share, "syntactic_alignment": {"kept_share": 0.5}, "heads_kept": 2}}))
    rows = [{"relation": r, "arcs": n, "layer": l, "head": 0, "direction": "dep2head", "accuracy": 0.5,
             "baseline_offset": -1, "baseline_accuracy": 0.4} for r, n, l in [("a", 30, 1), ("b", 12, 2), ("c", 9, 0)]]
    (tmp_path / "best_heads.md").write_text(best_heads_markdown(rows, "t"))
    lines = RF.explain_figures(tmp_path)
    assert lines[0].endswith("+1.00") and lines[1].endswith("-1.00")
    assert "25.0% of the strong attention and 50.0% of the syntactic alignment" in lines[2]
    assert lines[3].endswith("2 relations; by layer 1: 1, 2: 1")
