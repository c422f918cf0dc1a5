"""GLUE loaders on small files in the exact GLUE formats, and metrics against scipy/scikit-learn."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from synprune.data import metrics as M
from synprune.errors import SynpruneError
from synprune.io import sha256_file
from synprune.data.tasks import GLUE, load_task

MNLI_COLS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]


def _write(path: Path, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join("\t".join(r) + "\n" for r in rows)
    path.write_bytes(("\ufeff" if bom else "").encode("utf-8") + text.encode("utf-8"))


def _mnli_row(i: int, s1: str, s2: str, label: str) -> list[str]:
    return [str(i), "1", f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s1, s2, label, label]


@pytest.fixture()
def glue(tmp_path: Path) -> Path:
    """A glue_data folder with two or three rows per split of every task, as the GLUE download has them."""
    root = tmp_path / "glue"
    # CoLA: no header; source, label, original mark, sentence.
    _write(root / "CoLA/train.tsv", [["gj04", "1", "", "The sailors rode the breeze."], ["gj04", "0", "*", "Rode the."]])
    _write(root / "CoLA/dev.tsv", [["cj99", "0", "*", "He a book."], ["cj99", "1", "", 'She said "hi".']])
    # SST-2: header, sentence then label; text may hold quotes, kept verbatim.
    _write(root / "SST-2/train.tsv", [["sentence", "label"], ["a charming journey ", "1"], ['" bleak " ', "0"]])
    _write(root / "SST-2/dev.tsv", [["sentence", "label"], ["it 's good ", "1"], ["dull ", "0"]])
    # MRPC: UTF-8 byte-order mark before the header; a string may start with an unbalanced quote.
    mrpc_h = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    _write(root / "MRPC/train.tsv", [mrpc_h, ["1", "11", "12", "He said it.", '"It was said.'], ["0", "13", "14", "A b.", "C d."]], bom=True)
    _write(root / "MRPC/dev.tsv", [mrpc_h, ["0", "21", "22", "X y.", "Z w."], ["1", "23", "24", "Same.", "Same!"]], bom=True)
    # STS-B: ten columns, score a float in [0, 5].
    sts_h = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
    _write(root / "STS-B/train.tsv", [sts_h, ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
                                              "A plane is taking off.", "An air plane is taking off.", "5.000"]])
    _write(root / "STS-B/dev.tsv", [sts_h, ["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none",
                                            "A man is dancing.", "A man wearing a hat is dancing.", "3.800"],
                                    ["1", "main-news", "x", "2014", "0002", "none", "none", "A.", "B.", "0.000"]])
    # QQP: id, qid1, qid2, question1, question2, is_duplicate.
    qqp_h = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    _write(root / "QQP/train.tsv", [qqp_h, ["0", "1", "2", "How do I learn?", "How can I learn?", "1"]])
    _write(root / "QQP/dev.tsv", [qqp_h, ["5", "9", "10", "Why?", "What?", "0"], ["6", "11", "12", "Who?", "Who is?", "1"]])
    # MNLI: train.tsv, dev_matched.tsv, dev_mismatched.tsv; string labels in gold_label.
    _write(root / "MNLI/train.tsv", [MNLI_COLS, _mnli_row(0, "A cat sat.", "An animal sat.", "entailment")])
    _write(root / "MNLI/dev_matched.tsv", [MNLI_COLS, _mnli_row(1, "P.", "H.", "neutral"),
                                           _mnli_row(2, "P2.", "H2.", "contradiction")])
    _write(root / "MNLI/dev_mismatched.tsv", [MNLI_COLS, _mnli_row(3, "Q.", "G.", "entailment")])
    # QNLI and RTE: string labels entailment / not_entailment.
    _write(root / "QNLI/train.tsv", [["index", "question", "sentence", "label"], ["0", "What?", "That.", "entailment"]])
    _write(root / "QNLI/dev.tsv", [["index", "question", "sentence", "label"], ["0", "Who?", "Nobody.", "not_entailment"],
                                   ["1", "Where?", "Here.", "entailment"]])
    _write(root / "RTE/train.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "A.", "B.", "not_entailment"]])
    _write(root / "RTE/dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "C.", "D.", "entailment"]])
    # WNLI: integer labels.
    _write(root / "WNLI/train.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "It fell.", "The cup fell.", "1"]])
    _write(root / "WNLI/dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "The drain is clogged.", "Hair is.", "0"]])
    return root


def test_cola_has_no_header(glue: Path) -> None:
    d = load_task("cola", glue)
    assert [(e.text_a, e.text_b, e.label) for e in d.splits["train"]] == [
        ("The sailors rode the breeze.", None, 1), ("Rode the.", None, 0)]
    assert d.splits["dev"][1].text_a == 'She said "hi".'
    assert d.metrics == ("matthews",) and d.num_labels == 2 and not d.is_pair


def test_sst2(glue: Path) -> None:
    d = load_task("SST-2", glue)
    assert [(e.text_a, e.label) for e in d.splits["train"]] == [("a charming journey ", 1), ('" bleak " ', 0)]
    assert d.metrics == ("accuracy",) and d.eval_splits == ("dev",)


def test_mrpc_bom_header_and_quotes(glue: Path) -> None:
    d = load_task("mrpc", glue)
    first = d.splits["train"][0]
    assert (first.text_a, first.text_b, first.label) == ("He said it.", '"It was said.', 1)
    assert len(d.splits["train"]) == 2 and [e.label for e in d.splits["dev"]] == [0, 1]
    assert d.metrics == ("f1", "accuracy") and d.is_pair


def test_stsb_regression(glue: Path) -> None:
    d = load_task("sts-b", glue)
    assert [e.label for e in d.splits["dev"]] == [3.8, 0.0]
    assert isinstance(d.splits["dev"][0].label, float) and d.is_regression
    assert d.splits["dev"][0].text_b == "A man wearing a hat is dancing."
    assert set(d.metrics) == {"pearson", "spearman"}


def test_qqp(glue: Path) -> None:
    d = load_task("qqp", glue)
    assert [(e.text_a, e.text_b, e.label) for e in d.splits["dev"]] == [("Why?", "What?", 0), ("Who?", "Who is?", 1)]
    assert d.metrics == ("accuracy", "f1")


def test_mnli_matched_and_mismatched(glue: Path) -> None:
    d = load_task("mnli", glue)
    assert d.eval_splits == ("dev", "dev_mismatched")
    assert [e.label for e in d.splits["dev"]] == [1, 2]
    assert [(e.text_a, e.text_b, e.label) for e in d.splits["dev_mismatched"]] == [("Q.", "G.", 0)]
    assert d.splits["train"][0].label == 0 and d.num_labels == 3 and d.metrics == ("accuracy",)
    assert set(d.hashes) == {"MNLI/train.tsv", "MNLI/dev_matched.tsv", "MNLI/dev_mismatched.tsv"}


@pytest.mark.parametrize("task", ["qnli", "rte"])
def test_string_labels(glue: Path, task: str) -> None:
    d = load_task(task, glue)
    mapping = {"entailment": 0, "not_entailment": 1}
    folder = GLUE[task].folder
    raw = [line.rsplit("\t", 1)[1].strip() for line in (glue / folder / "dev.tsv").read_text().splitlines()[1:]]
    assert [e.label for e in d.splits["dev"]] == [mapping[r] for r in raw]
    assert d.metrics == ("accuracy",)


def test_wnli(glue: Path) -> None:
    d = load_task("wnli", glue)
    assert d.splits["dev"][0].label == 0 and d.splits["train"][0].text_b == "The cup fell."


def test_hashes_are_of_the_files(glue: Path) -> None:
    d = load_task("sst2", glue)
    assert d.hashes == {"SST-2/train.tsv": sha256_file(glue / "SST-2/train.tsv"),
                        "SST-2/dev.tsv": sha256_file(glue / "SST-2/dev.tsv")}


def test_unknown_label_is_an_error_not_a_silent_none(glue: Path) -> None:
    _write(glue / "RTE/dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "C.", "D.", "entailed"]])
    with pytest.raises(SynpruneError, match="entailed"):
        load_task("rte", glue)


def test_missing_dev_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "CoLA").mkdir()
    with pytest.raises(SynpruneError, match="dev"):
        load_task("cola", tmp_path)


# ------------------------------------------------------------------------------------------ metrics

P = np.array([1, 1, 0, 0, 1, 0, 1, 1])
Y = np.array([1, 0, 0, 0, 1, 1, 1, 1])


def test_metrics_match_sklearn_and_hand_values() -> None:
    got = M.compute(["accuracy", "f1", "matthews"], P, Y)
    assert got["accuracy"] == pytest.approx(100 * 6 / 8)
    # TP=4 FP=1 FN=1 TN=2: F1 = 2*4 / (2*4 + 1 + 1); MCC = (4*2 - 1*1) / sqrt(5*5*3*3)
    assert got["f1"] == pytest.approx(100 * 8 / 10)
    assert got["matthews"] == pytest.approx(100 * 7 / 15)
    assert got["f1"] == pytest.approx(100 * skm.f1_score(Y, P))
    assert got["matthews"] == pytest.approx(100 * skm.matthews_corrcoef(Y, P))


def test_metrics_accept_float_predictions_from_argmax() -> None:
    """`evaluate.predict` returns floats (argmax cast to float) against float64 labels."""
    got = M.compute(["accuracy", "f1", "matthews"], P.astype(float), Y.astype(float))
    assert got == M.compute(["accuracy", "f1", "matthews"], P, Y)


def test_correlations_match_scipy() -> None:
    p = np.array([0.1, 0.4, 0.35, 0.8, 2.0])
    y = np.array([0.0, 1.0, 2.0, 3.0, 5.0])
    got = M.compute(["pearson", "spearman"], p, y)
    assert got["pearson"] == pytest.approx(100 * stats.pearsonr(p, y).statistic)
    assert got["spearman"] == pytest.approx(100 * 0.9)  # ranks 1,3,2,4,5 vs 1..5: 1 - 6*2/(5*24)
    assert got["spearman"] == pytest.approx(100 * stats.spearmanr(p, y).statistic)


def test_constant_prediction_scores_zero_not_nan() -> None:
    got = M.compute(["pearson", "spearman", "matthews"], np.ones(4), np.array([0.0, 1.0, 0.0, 1.0]))
    assert got == {"pearson": 0.0, "spearman": 0.0, "matthews": 0.0}


def test_empty_input_is_nan() -> None:
    assert math.isnan(M.compute(["accuracy"], [], [])["accuracy"])


@pytest.mark.parametrize("task,names", [
    ("cola", ("matthews",)), ("sst2", ("accuracy",)), ("mrpc", ("f1", "accuracy")), ("stsb", ("spearman", "pearson")),
    ("qqp", ("accuracy", "f1")), ("mnli", ("accuracy",)), ("qnli", ("accuracy",)), ("rte", ("accuracy",)),
    ("wnli", ("accuracy",)),
])
def test_official_metric_names(task: str, names: tuple[str, ...]) -> None:
    assert GLUE[task].metrics == names
    assert all(n in M.METRICS for n in names)
