"""explain: relation accuracy, baselines and head profiles on hand-made batches with answers worked out by
hand; retention arithmetic; the CLI end to end on a tiny saved model."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from synprune.calibrate.attention import Arcs, AttentionBatch, CalibItem
from synprune.errors import SynpruneError
from synprune.explain.heads import (CSV_COLUMNS, OFFSETS, Explanation, HeadProfile, RelationAccuracy, parse_heads,
                              relations_csv, retention)
from synprune.syntax.parse import Parse

from conftest import tiny_model
from test_conllu import SAMPLE

NSUBJ, OBJ = 0, 1


def _relation_batch() -> AttentionBatch:
    """1 sentence, 3 valid words (a 4th slot is padding), 1 layer, 2 heads; arcs 0->1 nsubj and 2->1 obj (dep->head).

    Head 0's most-attended other words: 0->1, 1->2, 2->0. Head 1's: 0->2, 1->0, 2->1. The diagonal and the
    padding column hold the largest values, which must be ignored."""
    W = torch.full((1, 1, 2, 4, 4), 0.05)
    W[0, 0, :, torch.arange(4), torch.arange(4)] = 0.9
    W[0, 0, :, :, 3] = 0.95
    for head, targets in ((0, (1, 2, 0)), (1, (2, 0, 1))):
        for row, col in enumerate(targets):
            W[0, 0, head, row, col] = 0.6
    a = torch.tensor([[0, 1, 0, NSUBJ], [0, 1, 2, OBJ]])
    return AttentionBatch(torch.zeros(1, 1, 2, 6, 6), torch.ones(1, 6, dtype=torch.bool), W,
                          torch.tensor([[True, True, True, False]]), Arcs(a[:, 0], a[:, 1], a[:, 2], a[:, 3]), [None])


def test_relation_accuracy_counts_most_attended_other_word_both_directions():
    rel = RelationAccuracy((1, 2), ["nsubj", "obj"])
    rel.update(_relation_batch())
    rel.update(_relation_batch())  # running sums: twice the same batch doubles every count
    dep2head, head2dep = rel.correct[0, :, 0].numpy(), rel.correct[1, :, 0].numpy()
    # nsubj (dep 0, head 1): head 0 row 0 -> 1 right; head 1 row 1 -> 0 right (head2dep)
    # obj (dep 2, head 1): head 1 row 2 -> 1 right; head 0 row 1 -> 2 right (head2dep)
    np.testing.assert_array_equal(dep2head, [[2, 0], [0, 2]])
    np.testing.assert_array_equal(head2dep, [[0, 2], [2, 0]])
    np.testing.assert_array_equal(rel.count.numpy(), [2, 2])
    hits = rel.offset_hits.numpy()
    assert hits[NSUBJ, OFFSETS.index(1)] == 2 and hits[OBJ, OFFSETS.index(-1)] == 2 and hits.sum() == 4


def _profile_batch() -> AttentionBatch:
    """Tokens [CLS] Hi ! [SEP] [PAD]; words "Hi" (0) and "!" (1, punct)."""
    A = torch.zeros(1, 1, 1, 5, 5)
    A[0, 0, 0, :4, :4] = torch.tensor([[0.25, 0.25, 0.25, 0.25],
                                       [0.50, 0.50, 0.00, 0.00],
                                       [0.00, 0.00, 0.00, 1.00],
                                       [0.10, 0.20, 0.30, 0.40]])
    A[0, 0, 0, 4, 0] = 1.0  # a padding row: ignored
    token_mask = torch.tensor([[True, True, True, True, False]])
    special = torch.tensor([[True, False, False, True, True]])  # the tokenizer marks padding special too
    W = torch.tensor([[0.5, 0.5], [0.2, 0.0]]).reshape(1, 1, 1, 2, 2)
    item = CalibItem("Hi!", Parse(((0, 2), (2, 3)), (0, 0), ("ROOT", "punct")))
    empty = torch.zeros(0, dtype=torch.long)
    return AttentionBatch(A, token_mask, W, torch.tensor([[True, True]]), Arcs(empty, empty, empty, empty), [item], special)


def test_head_profile_special_punct_entropy_and_strong_attention():
    prof = HeadProfile(torch.full((1, 1), 0.3, dtype=torch.float64))
    prof.update(_profile_batch())
    assert prof.special[0, 0] / prof.token_rows == pytest.approx((0.5 + 0.5 + 1.0 + 0.5) / 4)  # [CLS] + [SEP] columns, real rows only
    entropies = [math.log(4), math.log(2), 0.0, -sum(p * math.log(p) for p in (0.1, 0.2, 0.3, 0.4))]
    assert prof.entropy[0, 0] / prof.token_rows == pytest.approx(sum(entropies) / 4, rel=1e-5)
    assert prof.punct[0, 0] / prof.word_rows == pytest.approx(0.5 / 2)  # "Hi" -> "!" only; the diagonal is not "other"
    assert prof.strong_count[0, 0] == 1 and prof.strong_mass[0, 0] == pytest.approx(0.5)  # 0.5 > tau = 0.3 > 0.2
    assert prof.pairs == 2


def _explanation(strong: np.ndarray, correct: np.ndarray, labels=("nsubj", "punct")) -> Explanation:
    z = np.zeros(strong.shape)
    R = len(labels)
    return Explanation(labels=tuple(labels), counts=np.full(R, 10.0), accuracy=correct / 10.0,
                       baseline_offset=np.ones(R, dtype=int), baseline_accuracy=np.full(R, 0.5), special_share=z,
                       punct_share=z, entropy=z, strong_count=strong, strong_mass=strong, correct=correct,
                       sap_penalty=z, sap_penalty_per_pair=z, threshold={})


def test_retention_splits_totals_between_kept_and_pruned_heads():
    strong = np.array([[4.0, 1.0], [3.0, 2.0]])
    correct = np.zeros((2, 2, 2, 2))
    correct[0, 0] = [[6, 0], [1, 1]]  # nsubj dep2head
    correct[1, 0] = [[2, 0], [0, 0]]  # nsubj head2dep
    correct[:, 1] = 50  # punct: left out of syntactic alignment by default
    r = retention(_explanation(strong, correct), {(0, 1), (1, 1)})
    assert r["heads_kept"] == 2 and r["heads_kept_share"] == 0.5
    assert r["strong_attention_mass"]["kept_share"] == pytest.approx(7 / 10)
    assert r["strong_attention_mass"]["pruned_per_head"] == pytest.approx(1.5)
    assert r["syntactic_alignment"]["kept_share"] == pytest.approx(9 / 10)
    with_punct = retention(_explanation(strong, correct), {(0, 1), (1, 1)}, keep_punct=True)
    assert with_punct["syntactic_alignment"]["total"] == pytest.approx(10 + 8 * 50)


def test_best_head_per_relation_and_csv_columns():
    correct = np.zeros((2, 2, 2, 2))
    correct[1, 0, 1, 0] = 9  # nsubj: best is head 1:0, head2dep
    correct[0, 1, 0, 1] = 7  # punct: best is head 0:1, dep2head
    ex = _explanation(np.zeros((2, 2)), correct)
    ex.counts = np.array([10.0, 20.0])
    ex.accuracy = correct / ex.counts[None, :, None, None]
    rows = ex.best_heads()
    assert [r["relation"] for r in rows] == ["punct", "nsubj"]  # most frequent first
    assert (rows[1]["layer"], rows[1]["head"], rows[1]["direction"], rows[1]["accuracy"]) == (1, 0, "head2dep", 0.9)
    assert ex.best_heads(min_arcs=15) == rows[:1]
    table = list(csv.reader(relations_csv(rows).splitlines()))
    assert tuple(table[0]) == CSV_COLUMNS and table[2][:4] == ["nsubj", "1", "0", "head2dep"]


def test_parse_heads_checks_the_grid():
    assert parse_heads("2:3, 0:0", (3, 4)) == [(2, 3), (0, 0)]
    for bad in ("3:0", "1-2", "0:4"):
        with pytest.raises(SynpruneError, match="LAYER:HEAD"):
            parse_heads(bad, (3, 4))


def _cli(args):
    from synprune.cli import _load_commands, app

    _load_commands()
    return CliRunner().invoke(app, args)


def test_explain_cli_end_to_end_with_gold_trees_and_a_result(tiny_folder, glue_dir, tmp_path):
    run = tmp_path / "prune"
    pruned = _cli(["prune", "--model", str(tiny_folder), "--glue-dir", str(glue_dir), "--calib-size", "4",
                   "--sparsity", "0.25", "--out", str(run), "-q"])
    assert pruned.exit_code == 0, pruned.output
    conllu = tmp_path / "s.conllu"
    conllu.write_text(SAMPLE)
    out = tmp_path / "explain"
    res = _cli(["explain", "--model", str(tiny_folder), "--parses", str(conllu), "--out", str(out), "--min-arcs", "1",
                "--result", str(run / "result.json"), "--heads", "2:3,0:1", "--sentences", "2", "-q"])
    assert res.exit_code == 0, res.output
    with open(out / "relations.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    # the gold file's relations (punct included), most frequent first; accuracies are fractions
    assert [r["relation"] for r in rows] == ["punct", "advmod", "aux", "nsubj", "obj"]
    assert all(0 <= float(r["accuracy"]) <= 1 and r["direction"] in ("dep2head", "head2dep") for r in rows)
    heads = json.loads((out / "heads.json").read_text())
    assert len(heads["heads"]) == 12 and heads["calibration"]["parses"]["parser"] == "gold:s.conllu"
    marked = {(h["layer"], h["head"]) for h in heads["heads"] if h["pruned_by"]}
    assert marked == {tuple(h) for h in json.loads((run / "result.json").read_text())["pruned_heads"]}
    ret = json.loads((out / "retention.json").read_text())
    (label, r), = ret.items()
    assert label == "sap@0.25" and r["heads_pruned"] == 3
    # the shares agree with the per-head masses of heads.json, summed over the heads the result pruned
    total = r["strong_attention_mass"]
    masses = {(h["layer"], h["head"]): h["strong_attention_mass"] for h in heads["heads"]}
    pruned_mass = sum(m for head, m in masses.items() if head in marked)
    assert total["total"] == pytest.approx(sum(masses.values()))
    assert total["pruned_share"] == pytest.approx(pruned_mass / sum(masses.values()))
    assert total["pruned_per_head"] == pytest.approx(pruned_mass / 3)
    for png in ("heatmaps.png", "heatmaps_sap_0.25.png", "attention_maps.png"):
        assert (out / png).stat().st_size > 1000
    assert "best head" in (out / "best_heads.md").read_text()


def test_explain_cli_rejects_a_result_of_another_model(tiny_folder, glue_dir, tmp_path):
    bad = tmp_path / "result.json"
    bad.write_text(json.dumps({"method": "sap", "n_heads": 144, "pruned_heads": [[7, 11]]}))
    res = _cli(["explain", "--model", str(tiny_folder), "--glue-dir", str(glue_dir), "--result", str(bad), "-q"])
    assert res.exit_code != 0 and "same model" in str(res.exception) + res.output


def test_relations_served_counts_relations_a_head_beats_the_baseline_on():
    """Three relations (baseline 0.5 each) and punct; head 0:0 beats the baseline evenly on all three (3 served),
    0:1 on one only (1 served), 1:0 on none (0), 1:1 on two unevenly (between 1 and 2). Punct never counts."""
    labels = ("nsubj", "obj", "amod", "punct")
    acc = np.full((2, 4, 2, 2), 0.4)
    acc[0, :3, 0, 0] = 0.8  # dep2head, all three relations, equally far above 0.5
    acc[1, 0, 0, 1] = 0.9  # head2dep: the better direction counts
    acc[0, 1, 1, 1], acc[0, 2, 1, 1] = 0.9, 0.6  # excess 0.4 and 0.1
    acc[:, 3] = 1.0  # punct: far above its baseline everywhere, but left out
    ex = _explanation(np.zeros((2, 2)), acc * 10, labels)
    entropy, served, total = ex.relations_served(min_arcs=1)
    assert served[0, 0] == pytest.approx(3.0) and entropy[0, 0] == pytest.approx(math.log(3))
    assert served[0, 1] == pytest.approx(1.0) and served[1, 0] == 0.0 and total[1, 0] == 0.0
    p = np.array([0.8, 0.2])
    assert served[1, 1] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    with_punct = ex.relations_served(min_arcs=1, keep_punct=True)[1]
    assert with_punct[1, 0] == pytest.approx(1.0)  # punct alone
    assert ex.relations_served(min_arcs=11)[1].max() == 0.0  # no relation has 11 arcs
    rows = {(r["layer"], r["head"]): r for r in ex.heads_json()}
    assert rows[(1, 0)]["relations_served"] == 0.0
