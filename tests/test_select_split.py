"""Selection under a budget, the calibration/evaluation split, data files, and the pair-classifier scan."""
import pytest
import torch

from conftest import tiny_model
from synprune.errors import SynpruneError
from synprune.syntax.parse import Parse
from synprune.selection.select import n_to_prune, select
from synprune.data.tasks import Example, TaskData, load_file, make_split


@pytest.mark.parametrize("sparsity, n, expected", [
    (0.5, 12, 6), (0.125, 12, 2), (0.375, 4, 2), (0.625, 4, 3), (0.0, 12, 0), (0.99, 12, 12), (0.25, 144, 36),
])
def test_n_to_prune_rounds_halves_up(sparsity, n, expected):
    assert n_to_prune(sparsity, n) == expected


def test_select_takes_the_top_of_the_order():
    order = [(1, 2), (0, 3), (1, 0), (0, 0), (0, 1)]
    sel = select(order, (2, 4), 3)
    assert sel.pruned == [(0, 3), (1, 0), (1, 2)] and sel.removed_layers == []


def test_layer_fraction_takes_the_whole_layer_and_counts_it():
    order = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    sel = select(order, (2, 4), 5, layer_fraction=0.5)
    assert sel.pruned == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)] and sel.removed_layers == [0]


def test_a_removal_that_would_overshoot_the_budget_is_skipped():
    order = [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2), (1, 3)]
    sel = select(order, (2, 4), 4, layer_fraction=0.5)
    # (0, 1) or (1, 1) would take a whole layer (3 more heads): 5 > 4, so both are passed over
    assert sel.pruned == [(0, 0), (1, 0)]


def test_a_full_layer_is_recorded_as_removed():
    sel = select([(1, 0), (1, 1), (1, 2), (1, 3), (0, 0)], (2, 4), 4)
    assert sel.removed_layers == [1]


def _task(train, dev):
    return TaskData("t", {"train": train, "dev": dev}, 2, ("accuracy",), "memory", {}, ("dev",))


TRAIN = [Example(f"train sentence {i}", None, i % 2) for i in range(40)]
DEV = [Example(f"dev sentence {i}", None, i % 2) for i in range(15)]


def test_calibration_comes_from_train_and_evaluation_is_all_of_dev():
    split = make_split(_task(TRAIN, DEV), calib_size=10, seed=4)
    assert len(split.calibration) == 10 and all(e.text_a.startswith("train") for e in split.calibration)
    assert split.evaluation == {"dev": DEV}
    assert not {e.text_a for e in split.calibration} & {e.text_a for e in split.evaluation["dev"]}
    assert split.calibration == make_split(_task(TRAIN, DEV), 10, 4).calibration  # seeded
    assert split.calibration != make_split(_task(TRAIN, DEV), 10, 5).calibration


def test_without_train_the_halves_of_dev_never_overlap():
    data = TaskData("t", {"dev": DEV}, 2, ("accuracy",), "memory", {}, ("dev",))
    split = make_split(data, calib_size=100, seed=1)
    calib, evaluation = {e.text_a for e in split.calibration}, {e.text_a for e in split.evaluation["dev"]}
    assert not calib & evaluation and calib | evaluation == {e.text_a for e in DEV}
    assert len(calib) == 7 and len(evaluation) == 8
    capped = make_split(data, calib_size=3, seed=1)
    assert len(capped.calibration) == 3 and not {e.text_a for e in capped.calibration} & {e.text_a for e in capped.evaluation["dev"]}


def test_load_file_csv_with_pairs_and_scores(tmp_path):
    f = tmp_path / "sts.csv"
    f.write_text('a,b,score\n"One, two",Three,4.5\nFour,"Five ""quoted""",1.25\n')
    data = load_file(f, "a", "b", "score")
    assert [(e.text_a, e.text_b, e.label) for e in data.splits["all"]] == [("One, two", "Three", 4.5),
                                                                         ("Four", 'Five "quoted"', 1.25)]
    assert data.num_labels == 1 and data.metrics == ("spearman", "pearson") and data.is_pair
    assert data.hashes and data.eval_splits == ("all",)


def test_load_file_tsv_and_jsonl_classes(tmp_path):
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\nyes\t2\nno\t0\nmaybe\t1\n")
    data = load_file(tsv, "text", label_col="label")
    assert [e.label for e in data.splits["all"]] == [2, 0, 1] and data.num_labels == 3
    assert data.metrics == ("accuracy",) and not data.is_pair
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"t": "a", "y": 1}\n{"t": "b", "y": 0}\n')
    data = load_file(jl, "t", label_col="y")
    assert data.num_labels == 2 and data.metrics == ("accuracy", "f1")
    unlabeled = load_file(jl, "t")
    assert not unlabeled.has_labels and unlabeled.num_labels == 0


def test_load_file_refuses_empty_labels_and_bad_columns(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label\na,1\nb,\n")
    with pytest.raises(SynpruneError, match="empty label"):
        load_file(f, "text", label_col="label")
    with pytest.raises(SynpruneError, match="no column 'lbl'"):
        load_file(f, "text", label_col="lbl")
    gz = tmp_path / "d.csv.gz"
    gz.write_text("x")
    with pytest.raises(SynpruneError, match="unsupported file type"):
        load_file(gz, "text")


def _parse(text: str) -> Parse:
    """Words split on spaces; every word depends on the first (a hand-made tree, no parser)."""
    spans, pos = [], 0
    for w in text.split(" "):
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    heads = tuple(0 for _ in spans)
    deps = tuple("ROOT" if i == 0 else "dep" for i in range(len(spans)))
    return Parse(tuple(spans), heads, deps)


def test_a_pair_classifier_reads_both_texts_as_one_input():
    from synprune.calibrate.attention import calibration_items, scan

    tm = tiny_model("bert", num_labels=2)
    a, b = "the cat sat", "a dog ran home"
    items = calibration_items(tm, [a], [_parse(a)], [b], [_parse(b)])
    assert len(items) == 1 and items[0].text_b == b  # an embedding model would read two inputs
    assert len(calibration_items(tiny_model("bert"), [a], [_parse(a)], [b], [_parse(b)])) == 2
    seen = []

    class Probe:
        def update(self, batch):
            seen.append(batch)

    n_arcs = scan(tm, items, [Probe()], {"dep": 0}, batch_size=4, max_length=32)
    batch, = seen
    assert n_arcs == 2 + 3  # text A's 2 arcs and text B's 3, B's words numbered after A's 3
    assert sorted(zip(batch.arcs.head.tolist(), batch.arcs.dep.tolist())) == [(0, 1), (0, 2), (3, 4), (3, 5), (3, 6)]
    assert batch.word_mask[0].sum() == 7
    # word-level attention of B's words is pooled from the tokens of the second segment
    enc = tm.tokenizer(a, b, return_offsets_mapping=True)
    seq = enc.sequence_ids()
    tokens = {}
    for t, ((s, e), q) in enumerate(zip(enc["offset_mapping"], seq)):
        if q is None:
            continue
        spans = _parse(a if q == 0 else b).words
        w = next(i for i, (ws, we) in enumerate(spans) if ws <= s < we)
        tokens.setdefault(w + (0 if q == 0 else 3), []).append(t)
    A = batch.token_attn[0]  # (L, H, T, T)
    for wi, wj in [(3, 4), (5, 0), (1, 6)]:
        expected = A[:, :, tokens[wi]][:, :, :, tokens[wj]].sum(-1).mean(-1)
        assert torch.allclose(batch.word_attn[0, :, :, wi, wj], expected, atol=1e-6)
