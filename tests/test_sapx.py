"""sapx's variant table: the paper's reading reproduces `sap`; the other readings on hand-made maps with known answers."""
import numpy as np
import pytest
import torch

from synprune.calibrate.attention import Arcs, AttentionBatch, CalibItem
from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.errors import SynpruneError
from synprune.methods import SCANS, get_method
from synprune.methods.sapx import SAPX, ArcTable, Variant, label_weights, score_variant, variant_scores
from synprune.syntax.parse import Parse
from synprune.data.tasks import Example

from conftest import STSB_ROWS, tiny_model


def _ctx(tm) -> Calibration:
    return Calibration(tm, [Example(a, b, s) for a, b, s in STSB_ROWS], PruneConfig(batch_size=4), ("spearman",))


@pytest.mark.parametrize("options", [{}, {"k": 2, "direction": "head2dep"}, {"threshold": "layer-mean", "keep_punct": True},
                                     {"threshold": "quantile:0.8", "direction": "max", "k": 7}])
def test_paper_variant_reproduces_sap(options):
    """The arc table must give SAP's own order (and its penalties up to the per-arc scale) for SAP's options."""
    tm = tiny_model("bert")
    ctx = _ctx(tm)
    sap = get_method("sap")(ctx, PruneConfig(**options))
    ours = score_variant(ctx, Variant(**options))
    assert ours.order == sap.order
    np.testing.assert_allclose(ours.scores * ours.details["n_arcs"], sap.scores, rtol=1e-9)


def _table(specials: bool = True) -> ArcTable:
    """1 item, 4 words (the 4th is punctuation), 1 layer, 2 heads; arcs 0->1 nsubj, 2->1 obj, 3->1 punct (dep->head)."""
    words = ((0, 1), (2, 3), (4, 5), (6, 7))
    parse = Parse(words, (1, 1, 1, 1), ("nsubj", "ROOT", "obj", "punct"))
    W = torch.full((1, 1, 2, 4, 4), 0.1)
    W[0, 0, 0, 0] = torch.tensor([0.0, 0.3, 0.1, 0.1])  # head 0: word 0 sends 0.5 to words, the rest to [CLS]/[SEP]
    W[0, 0, 1, 0] = torch.tensor([0.0, 0.1, 0.8, 0.1])  # head 1: word 0 looks at word 2
    W[0, 0, :, 2] = torch.tensor([0.2, 0.6, 0.0, 0.2])
    a = torch.tensor([[0, 1, 0, 0], [0, 1, 2, 1], [0, 1, 3, 2]])
    batch = AttentionBatch(torch.zeros(1, 1, 2, 6, 6), torch.ones(1, 6, dtype=torch.bool), W,
                           torch.ones(1, 4, dtype=torch.bool), Arcs(a[:, 0], a[:, 1], a[:, 2], a[:, 3]),
                           [CalibItem("a b c .", parse)])
    table = ArcTable((1, 2), ("nsubj", "obj", "punct"))
    table.update(batch)
    return table


def test_specials_out_renormalises_rows_over_words():
    table = _table()
    raw, words_only = table.attention("dep2head", True), table.attention("dep2head", False)
    np.testing.assert_allclose(raw[0, 0], [0.3, 0.1])
    np.testing.assert_allclose(words_only[0, 0], [0.3 / 0.5, 0.1 / 1.0])
    np.testing.assert_allclose(words_only[1, 0], [0.6 / 1.0, 0.6 / 1.0])


def test_hits_follow_the_most_attended_word():
    hits = _table().hits("dep2head")
    assert hits[0, 0].tolist() == [True, False]  # head 0's word 0 looks at its head (word 1); head 1 at word 2
    assert hits[1, 0].tolist() == [True, True]


def test_penalty_counts_misses_and_accuracy_counts_hits():
    table = _table()
    counts = {"nsubj": 5, "obj": 3, "punct": 9}
    # k=1: nsubj is top-k (weight 1), obj is not (weight 1); punct dropped. threshold 0.25.
    pen = variant_scores(table, counts, Variant(k=1, threshold="0.25"))
    # head 0: nsubj 0.3 >= 0.25 (no miss), obj 0.6 > 0.25 (miss) -> 1 of 2 arcs; head 1: nsubj 0.1 < 0.25 miss, obj 0.6 miss
    np.testing.assert_allclose(pen.scores[0], [0.5, 1.0])
    assert pen.order == [(0, 1), (0, 0)]
    acc = variant_scores(table, counts, Variant(k=1, score="accuracy"))
    np.testing.assert_allclose(acc.scores[0], [0.5, 0.0])  # only nsubj (top-k) counts; head 1 misses it
    assert acc.order == [(0, 1), (0, 0)]  # lowest accuracy pruned first
    with_punct = variant_scores(table, counts, Variant(k=1, threshold="0.25", keep_punct=True))
    assert with_punct.details["n_arcs"] == 3


def test_weight_schemes():
    w, top = label_weights(["a", "b", "c", "d"], [10, 5, 5, 1], 2, "paper")
    assert w.tolist() == [2, 1, 1, 2] and top.tolist() == [True, True, False, False]
    w, _ = label_weights(["a", "b"], [3, 1], 1, "inverse-frequency")
    np.testing.assert_allclose(w, [4 / 6, 4 / 2])
    assert label_weights(["a", "b"], [3, 1], 1, "flat")[0].tolist() == [1, 1]


def test_sentence_normalisation_weighs_each_input_equally():
    tm = tiny_model("bert")
    ctx = _ctx(tm)
    pair = score_variant(ctx, Variant())
    sent = score_variant(ctx, Variant(normalise="sentence"))
    assert pair.scores.shape == sent.scores.shape and not np.allclose(pair.scores, sent.scores)


def test_sapx_method_is_registered_and_bad_variants_fail():
    tm = tiny_model("bert")
    res = get_method("sapx")(_ctx(tm), PruneConfig())
    assert res.details["variant"] == Variant(**res.details["variant"]).__dict__ and len(res.order) == 12
    assert res.details["variant_label"] == SAPX.label()
    with pytest.raises(SynpruneError, match="weights"):
        Variant(weights="heavy").validate()


def test_planned_arc_table_shares_the_first_scan_and_changes_no_score(monkeypatch):
    """A sweep that runs sapx plans its arc table: SAP's thresholds, entropy/confidence and the table then come
    from one pass over the calibration data (SAP's penalties from a second), with the scores of separate scans."""
    import synprune.calibrate.context as C

    tm = tiny_model("bert")
    names = ("sap", "entropy", "confidence", "sapx")
    alone = {m: get_method(m)(_ctx(tm), PruneConfig()) for m in names}
    scans = []
    real = C.scan
    monkeypatch.setattr(C, "scan", lambda *a, **kw: scans.append(kw.get("description", a[7] if len(a) > 7 else "")) or real(*a, **kw))
    ctx = _ctx(tm)
    ctx.planned_scans.update(SCANS["sapx"])
    shared = {m: get_method(m)(ctx, PruneConfig()) for m in names}
    assert len(scans) == 2, scans
    for m in names:
        assert shared[m].order == alone[m].order, m
        np.testing.assert_array_equal(shared[m].scores, alone[m].scores)
