"""prune() end to end on a tiny random encoder with real spaCy parses of a tiny STS-B folder."""
import json

import numpy as np
import pytest
import torch

import synprune
from synprune.errors import SynpruneError
from synprune.run.prune import prune

from conftest import STSB_ROWS, tiny_model


def test_prune_writes_result_with_spec_fields(glue_dir, tmp_path):
    tm = tiny_model("bert")
    res = prune(tm, task="stsb", sparsity=0.5, glue_dir=glue_dir, out=tmp_path / "run", calib_size=6, seed=1)
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    for key in ("method", "cf", "model", "task", "split", "sparsity", "n_heads", "pruned_heads", "removed_layers",
                "metric", "head_scores", "dependency_ranking", "threshold", "config", "versions", "seed", "timings"):
        assert key in data, key
    assert data["n_heads"] == 12 and len(data["pruned_heads"]) == 6
    assert np.array(data["head_scores"]).shape == (3, 4)
    assert data["split"]["calibration"] == 6
    assert data["config"]["k"] == 5 and data["config"]["seed"] == 1
    assert {"name", "dense", "pruned"} <= set(data["metric"])
    ranking = data["dependency_ranking"]
    assert ranking and [r["count"] for r in ranking] == sorted((r["count"] for r in ranking), reverse=True)
    # the pruned heads are the top of SAP's order: every pruned head's penalty >= every kept head's
    scores = np.array(data["head_scores"])
    pruned = {tuple(h) for h in data["pruned_heads"]}
    kept = [scores[l, h] for l in range(3) for h in range(4) if (l, h) not in pruned]
    assert min(scores[l, h] for l, h in pruned) >= max(kept)
    assert res.metric["dense"] == pytest.approx(data["metric"]["dense"])


def test_second_run_reads_parses_from_cache(glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNPRUNE_CACHE", str(tmp_path / "fresh-cache"))  # other tests parse the same rows
    tm = tiny_model("bert")
    first = prune(tm, task="stsb", sparsity=0.25, glue_dir=glue_dir, calib_size=6)
    second = prune(tm, task="stsb", sparsity=0.25, glue_dir=glue_dir, calib_size=6)
    assert first.details["parse_cache"]["cached"] is False
    assert second.details["parse_cache"]["cached"] is True
    assert second.pruned_heads == first.pruned_heads


def test_pruning_nothing_keeps_the_dense_metric(glue_dir):
    res = prune(tiny_model("bert"), task="stsb", sparsity=0.0, glue_dir=glue_dir, calib_size=4)
    assert res.pruned_heads == [] and res.metric["pruned"] == pytest.approx(res.metric["dense"])


def test_embedding_model_refuses_classification_tasks(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    with pytest.raises(SynpruneError, match="sentence-embedding model"):
        prune(tiny_model("bert"), task="sst2", glue_dir=tmp_path)


def test_public_api_exposes_prune():
    assert synprune.prune is prune


def test_sdpa_model_scores_like_eager_and_keeps_its_implementation(glue_dir):
    eager = prune(tiny_model("bert"), task="stsb", sparsity=0.5, glue_dir=glue_dir, calib_size=6)
    tm = tiny_model("bert")
    tm.model.set_attn_implementation("sdpa")
    fast = prune(tm, task="stsb", sparsity=0.5, glue_dir=glue_dir, calib_size=6)
    assert tm.model.config._attn_implementation == "sdpa"
    assert fast.pruned_heads == eager.pruned_heads
    assert np.allclose(fast.head_scores, eager.head_scores)
    assert fast.metric["pruned"] == pytest.approx(eager.metric["pruned"], abs=1e-4)


def test_pair_embeddings_scored_per_distinct_sentence_match_pair_batches():
    """Scoring embeds each distinct sentence once in its own length order; cosines must equal the pair batches'."""
    from synprune.evaluation.evaluate import outputs, predict, prepare
    from synprune.data.tasks import Example

    tm = tiny_model("bert")
    rows = STSB_ROWS + [(STSB_ROWS[0][0], STSB_ROWS[2][1], 1.0)]  # a repeated sentence is embedded once
    examples = [Example(a, b, s) for a, b, s in rows]
    prepared = prepare(tm, examples, batch_size=3)
    assert sum(len(b.index) for b in prepared.sentences) == len({t for a, b, _ in rows for t in (a, b)})
    expected = np.zeros(len(examples))
    with torch.no_grad():
        for b in prepared.batches:
            expected[b.index] = outputs(tm, b).numpy()
    np.testing.assert_allclose(predict(tm, prepared), expected, atol=1e-5)


def _quick(glue_dir, out, sparsity=0.25, **options):
    return prune(tiny_model("bert"), task="stsb", sparsity=sparsity, glue_dir=glue_dir, out=out, calib_size=4,
                 method="magnitude", **options)


def test_run_without_cf_removes_an_older_cf_log(glue_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "cf_log.jsonl").write_text('{"stage": "single"}\n')
    _quick(glue_dir, out)
    assert (out / "result.json").is_file() and not (out / "cf_log.jsonl").exists()


def test_failed_export_leaves_the_previous_output_set(glue_dir, tmp_path, monkeypatch):
    import synprune.export.checkpoint as E

    out = tmp_path / "run"
    _quick(glue_dir, out)
    before = (out / "result.json").read_text()

    def broken(*a, **k):
        raise SynpruneError("disk full")

    monkeypatch.setattr(E, "export_pruned", broken)
    with pytest.raises(SynpruneError):
        _quick(glue_dir, out, sparsity=0.5, export=tmp_path / "model")
    assert (out / "result.json").read_text() == before and not (tmp_path / "model").exists()


def test_failure_while_writing_leaves_no_result_beside_a_new_cf_log(glue_dir, tmp_path, monkeypatch):
    import synprune.run.result as R

    out = tmp_path / "run"
    _quick(glue_dir, out)

    def broken(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(R, "atomic_write_json", broken)
    with pytest.raises(OSError):
        _quick(glue_dir, out, cf=True, pool_ratio=0.5)
    assert not (out / "result.json").exists()  # the old result.json no longer describes the folder


def test_options_a_method_ignores_are_refused_not_recorded(glue_dir):
    with pytest.raises(SynpruneError, match="--k, --threshold has no effect on method sapx"):
        prune(tiny_model("bert"), task="stsb", glue_dir=glue_dir, method="sapx", k=7, threshold="layer-mean")
    res = _quick(glue_dir, None)
    assert {"k", "threshold", "direction", "keep_punct"} <= set(res.details["options_not_used"])


def test_parses_switching_fisher_to_the_output_fisher_is_said(glue_dir, tmp_path):
    from test_conllu import SAMPLE

    f = tmp_path / "gold.conllu"
    f.write_text(SAMPLE)
    res = prune(tiny_model("bert"), task="stsb", sparsity=0.25, glue_dir=glue_dir, method="fisher", parses_file=f)
    assert res.details["loss"] == "output-fisher"
    assert any("output Fisher replaced the task loss" in n for n in res.details["notes"])
    plain = _quick(glue_dir, None)
    assert "notes" not in plain.details


def test_label_free_scores_for_a_classifier_on_unlabeled_text():
    from synprune.data.tasks import Example, TaskData

    texts = ["A cat sat on the mat.", "Dogs run fast.", "The sun is warm today.", "Birds sing at dawn.",
             "Rain fell all night.", "She reads a book."]
    data = TaskData("texts", {"all": [Example(t) for t in texts]}, 0, ("accuracy",), "memory", {}, ("all",))
    res = prune(tiny_model("bert", num_labels=3), task=data, sparsity=0.5, method="magnitude", calib_size=3)
    m = res.metric["all"]
    assert res.metric["name"] == "agreement_with_dense"
    assert m["dense"]["all"] == {"agreement_with_dense": 100.0, "kl_to_dense": pytest.approx(0.0, abs=1e-9)}
    assert m["pruned"]["all"]["kl_to_dense"] > 0


def test_fidelity_metrics_by_hand():
    from synprune.evaluation.fidelity import compute

    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    out = np.array([[1.0, 1.0], [0.0, -1.0]])
    r = compute(["cosine_to_dense", "agreement_with_dense", "kl_to_dense"], out, ref)
    assert r["cosine_to_dense"] == pytest.approx(100 * (np.sqrt(0.5) - 1) / 2)
    assert r["agreement_with_dense"] == 50.0  # row 0: both pick class 0 (a tie picks the first); row 1 differs
    p = np.exp(ref) / np.exp(ref).sum(1, keepdims=True)
    q = np.exp(out) / np.exp(out).sum(1, keepdims=True)
    assert r["kl_to_dense"] == pytest.approx(np.mean((p * np.log(p / q)).sum(1)))


def test_long_rows_are_counted_in_the_run_record(tmp_path):
    from synprune.data.tasks import Example, TaskData

    long = " ".join(["word"] * 400) + "."
    rows = [Example(t, t, 2.0 + i % 3) for i, t in enumerate(
        ["A man plays.", long, "A dog runs.", "Kids play.", long + " again", "Cats sleep.", "Sun shines.", "It rains."])]
    data = TaskData("long", {"all": rows}, 1, ("spearman",), "memory", {}, ("all",))
    res = prune(tiny_model("bert"), task=data, sparsity=0.25, method="entropy", calib_size=4, max_length=32, seed=3)
    split = res.split
    assert split["calibration_rows_cut"] + split["evaluation_all_rows_cut"] == 2  # each long row is in one half


def test_a_written_result_reads_back_whole(glue_dir, tmp_path):
    from synprune.run.result import PruneResult

    res = _quick(glue_dir, tmp_path / "run", cf=True, pool_ratio=0.5)
    back = PruneResult.read(tmp_path / "run")
    assert back.to_json() == json.loads((tmp_path / "run" / "result.json").read_text())
    assert back.cf_log == res.cf_log and back.pruned_heads == res.pruned_heads


@pytest.mark.parametrize("family,labels", [("bert", None), ("distilbert", 3), ("roberta", 2)])
def test_pruned_heads_are_scored_on_a_physically_pruned_copy(family, labels, monkeypatch):
    """evaluate_heads scores heads alone on a copy with them removed: the masked model's numbers, a smaller
    model, and the caller's model untouched."""
    import synprune.run.prune as P
    from synprune.evaluation.evaluate import prepare
    from synprune.repair import repaired
    from synprune.data.tasks import Example

    tm = tiny_model(family, labels)
    rows = [Example(a, b, (s if labels is None else int(s) % labels)) for a, b, s in STSB_ROWS]
    if labels is not None:
        tm.model.config.problem_type = "single_label_classification"
    prepared = {"dev": prepare(tm, rows, batch_size=4)}
    names = ["pearson", "spearman"] if labels is None else ["accuracy"]
    before = {k: v.clone() for k, v in tm.model.state_dict().items()}
    sizes = []
    real = P.evaluate
    monkeypatch.setattr(P, "evaluate", lambda t, p, n: sizes.append(sum(x.numel() for x in t.model.parameters())) or real(t, p, n))
    for pruned in ([(0, 1), (2, 3)], [(1, h) for h in range(4)] + [(0, 0)]):
        got = P.evaluate_heads(tm, prepared, names, pruned)
        with repaired(tm.model, pruned):
            masked = {"dev": real(tm, prepared["dev"], names)}
        assert got.keys() == masked.keys() and got["dev"] == pytest.approx(masked["dev"], abs=1e-6)
    full = sum(x.numel() for x in tm.model.parameters())
    assert len(sizes) == 2 and all(s < full for s in sizes) and sizes[1] < sizes[0]
    assert all(torch.equal(v, tm.model.state_dict()[k]) for k, v in before.items())
