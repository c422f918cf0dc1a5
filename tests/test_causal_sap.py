"""SAP on causal attention: only visible word pairs count, arcs are read in their visible direction, and
the start token (the attention sink) is outside every word, as [CLS] is in an encoder."""
from __future__ import annotations

import numpy as np
import torch

from _tiny_lm import tiny_lm
from synprune.calibrate.attention import AttentionBatch, Arcs, calibration_items, scan
from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.methods import get_method
from synprune.calibrate.summary import MeanAttention
from synprune.syntax.parse import Parse
from synprune.data.tasks import Example

# "Dogs chase cats ." : chase is the root; dogs (0) <- chase (1) -> cats (2); punct (3) <- chase
TEXT = "Dogs chase cats."
PARSE = Parse(((0, 4), (5, 10), (11, 15), (15, 16)), (1, 1, 1, 1), ("nsubj", "ROOT", "dobj", "punct"))


def _batch(causal: bool) -> AttentionBatch:
    W = torch.arange(16, dtype=torch.float32).reshape(1, 1, 1, 4, 4) / 16  # W[i, j] = (4i + j) / 16, exact
    arcs = Arcs(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([0, 2]), torch.tensor([0, 1]))  # nsubj, dobj
    return AttentionBatch(W.clone(), torch.ones(1, 4, dtype=torch.bool), W, torch.ones(1, 4, dtype=torch.bool), arcs, [],
                          causal=causal)


def test_causal_arcs_are_read_from_their_later_word():
    enc, dec = _batch(False), _batch(True)
    # nsubj: head 1 after dep 0 -> visible direction is head2dep W[1, 0]; dobj: head 1 before dep 2 -> W[2, 1]
    assert (enc.arc_attention("dep2head")[:, 0, 0] * 16).tolist() == [1, 9]  # W[0,1], W[2,1]
    assert (enc.arc_attention("head2dep")[:, 0, 0] * 16).tolist() == [4, 6]  # W[1,0], W[1,2] (future: ignored)
    for direction in ("dep2head", "head2dep", "max"):
        assert (dec.arc_attention(direction)[:, 0, 0] * 16).tolist() == [4, 9]  # W[1,0], W[2,1]


def test_causal_pairs_are_the_visible_triangle():
    enc, dec = _batch(False).pair_mask()[0], _batch(True).pair_mask()[0]
    assert int(enc.sum()) == 12 and int(dec.sum()) == 6
    assert dec.tolist() == torch.ones(4, 4, dtype=torch.bool).tril(-1).tolist()
    stats = MeanAttention((1, 1))
    stats.update(_batch(True))
    expected = np.mean([(4 * i + j) / 16 for i in range(4) for j in range(i)])
    assert stats.count == 6 and float(stats.threshold("global-mean")[0, 0]) == expected


class _Keep:
    def __init__(self):
        self.batches = []

    def update(self, batch):
        self.batches.append(batch)


def test_scan_of_a_decoder_is_causal_and_leaves_the_start_token_out_of_the_words():
    tm = tiny_lm()
    items = calibration_items(tm, [TEXT, TEXT + " Cats sleep."], [PARSE, PARSE])
    keep = _Keep()
    scan(tm, items, [keep], {"nsubj": 0, "dobj": 1, "punct": 2, "ROOT": 3}, batch_size=2)
    (batch,) = keep.batches
    assert batch.causal and bool(batch.special_mask[:, 0].all())  # the start token is special
    W = batch.word_attn[:, :, :, :4, :4]
    assert float(W.triu(1).abs().max()) < 1e-6  # no attention to later words
    # rows over words sum to less than 1: the mass on the start token (the sink) is not on any word
    row_mass = W.sum(-1)[..., 1:]
    assert float(row_mass.max()) < 1 - 1e-4
    visible = batch.arc_attention()
    assert visible.shape == (len(batch.arcs), 2, 4) and float(visible.min()) > 0  # every arc is read where it is visible


def test_sap_runs_on_a_decoder_with_given_parses():
    tm = tiny_lm()
    texts = [TEXT] * 3
    ctx = Calibration(tm, [Example(t) for t in texts], PruneConfig(batch_size=2, k=1),
                      parses=([PARSE] * 3, [None] * 3))
    scores = get_method("sap")(ctx, ctx.config)
    assert scores.scores.shape == (2, 4) and len(scores.order) == 8
    assert scores.details["n_arcs"] == 3 * 2  # nsubj + dobj per sentence (punct dropped)


def test_explain_runs_on_a_decoder_and_sees_the_attention_sink(tmp_path):
    from synprune.explain.heads import explain_model

    f = tmp_path / "t.txt"
    f.write_text("\n".join([TEXT, "The old man saw a dog in the park.", "Birds sing loudly at dawn."] * 4), encoding="utf-8")
    ex, written = explain_model(tiny_lm(), str(f), tmp_path / "out", calib_size=6, batch_size=3, min_arcs=1, sentences=1)
    assert (tmp_path / "out" / "best_heads.md").is_file() and written["best_heads"]
    assert ex.special_share.shape == (2, 4) and float(ex.special_share.min()) > 0  # every head puts some mass on the start token
