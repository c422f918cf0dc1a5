"""Causal language models: loading rules, language-modelling tasks, perplexity, zero-shot label scoring and
each metric's direction."""
from __future__ import annotations

import copy

import math

import numpy as np
import pytest
import torch

from _tiny_lm import smollm2_tokenizer, tiny_lm
from synprune.data import metrics as M
from synprune.cf.filter import metric_floor
from synprune.config import PruneConfig
from synprune.errors import SynpruneError
from synprune.evaluation.evaluate import evaluate, loss, predict, prepare, task_metrics
from synprune.evaluation.lm import PROMPTS
from synprune.model.load import load_model, with_bos
from synprune.report.table import summarize
from synprune.data.tasks import Example, TaskData, load_task, make_split

CONLLU = """# text = {text}
1\t{w1}\t_\tNOUN\t_\t_\t2\tnsubj\t_\t_
2\t{w2}\t_\tVERB\t_\t_\t0\troot\t_\tSpaceAfter=No
3\t.\t_\tPUNCT\t_\t_\t2\tpunct\t_\t_

"""


def _treebank(path, words):
    path.write_text("".join(CONLLU.format(text=f"{a} {b}.", w1=a, w2=b) for a, b in words), encoding="utf-8")


@pytest.fixture
def ud_dir(tmp_path, monkeypatch):
    _treebank(tmp_path / "en_ewt-ud-dev.conllu", [(f"dog{i}", "runs") for i in range(20)])
    _treebank(tmp_path / "en_ewt-ud-test.conllu", [(f"cat{i}", "sleeps") for i in range(30)])
    monkeypatch.setenv("SYNPRUNE_UD_DIR", str(tmp_path))
    return tmp_path


def test_ewt_calibrates_on_dev_and_evaluates_on_test(ud_dir):
    data = load_task("ewt")
    assert data.lm and data.metrics == ("perplexity", "window_perplexity") and data.can_evaluate and not data.has_labels
    split = make_split(data, calib_size=8, seed=3, eval_size=12)
    assert len(split.calibration) == 8 and all(e.text_a.startswith("dog") for e in split.calibration)
    test = split.evaluation["test"]
    assert len(test) == 12 and all(e.text_a.startswith("cat") for e in test)
    assert test == make_split(data, 8, 3, 12).evaluation["test"]  # seeded
    assert [int(e.text_a.split()[0][3:]) for e in test] == sorted(int(e.text_a.split()[0][3:]) for e in test)
    assert "--eval-size" in split.note
    assert len(make_split(data, 8, 3).evaluation["test"]) == 30  # uncapped by default


def test_ewt_without_the_treebank_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNPRUNE_UD_DIR", str(tmp_path))
    with pytest.raises(SynpruneError, match="SYNPRUNE_UD_DIR"):
        load_task("ewt")


def test_text_file_split_is_seeded_and_never_overlaps(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("\n".join(f"line number {i}" for i in range(41)) + "\n\n   \n", encoding="utf-8")
    data = load_task(str(f))
    assert data.lm and len(data.splits["all"]) == 41  # blank lines skipped
    split = make_split(data, calib_size=100, seed=1)
    calib = {e.text_a for e in split.calibration}
    evals = {e.text_a for e in split.evaluation["all"]}
    assert not calib & evals and len(calib | evals) == 41
    assert split.calibration == make_split(data, 100, 1).calibration
    assert split.calibration != make_split(data, 100, 2).calibration
    assert len(make_split(data, 5, 1).calibration) == 5


def test_text_file_errors(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("only one line\n\n", encoding="utf-8")
    with pytest.raises(SynpruneError, match="at least 2"):
        load_task(str(one))
    with pytest.raises(SynpruneError, match="not found"):
        load_task(str(tmp_path / "missing.txt"))


def test_with_bos_starts_every_text_with_a_special_token_once():
    tok = with_bos(smollm2_tokenizer())
    enc = tok(["The cat sat."], return_offsets_mapping=True, return_special_tokens_mask=True)
    assert enc["input_ids"][0][0] == tok.convert_tokens_to_ids("<|endoftext|>")
    assert enc["special_tokens_mask"][0][:2] == [1, 0] and enc["offset_mapping"][0][0] == (0, 0)
    assert enc.sequence_ids(0)[0] is None
    assert with_bos(tok) is tok  # already starts with it: unchanged
    assert smollm2_tokenizer()("a")["input_ids"] != tok("a")["input_ids"]  # the original is not modified
    own = copy.deepcopy(smollm2_tokenizer())  # not the cached one
    assert with_bos(own, copy=False) is own and own("a")["input_ids"] == tok("a")["input_ids"]  # changed in place


def _manual_nll(model, ids: list[int]) -> tuple[float, int]:
    x = torch.tensor([ids])
    logp = model(input_ids=x).logits[0, :-1].double().log_softmax(-1)
    return float(-logp.gather(-1, x[0, 1:, None]).sum()), len(ids) - 1


def test_perplexity_is_token_weighted_over_unpadded_texts():
    tm = tiny_lm()
    examples = [Example("A short one."), Example("A much longer sentence that needs padding for the other text to fit."),
                Example("Mid length text here.")]
    prepared = prepare(tm, examples, batch_size=2, max_length=64)
    assert any(int(b.inputs["attention_mask"].min()) == 0 for b in prepared.batches)  # padding happened
    got = evaluate(tm, prepared, ["perplexity"])["perplexity"]
    with torch.no_grad():
        parts = [_manual_nll(tm.model, tm.tokenizer(e.text_a)["input_ids"]) for e in examples]
    expected = math.exp(sum(n for n, _ in parts) / sum(t for _, t in parts))
    assert got == pytest.approx(expected, rel=1e-5)
    mean_of_means = math.exp(np.mean([n / t for n, t in parts]))
    assert abs(mean_of_means - expected) > 1e-3 * expected  # the test tells the two apart


def test_lm_loss_is_the_mean_next_token_loss_and_has_gradients():
    tm = tiny_lm()
    prepared = prepare(tm, [Example("One text."), Example("And another, longer text.")], batch_size=8)
    (batch,) = prepared.batches
    assert batch.lm and batch.labels is None
    value = loss(tm, batch)
    with torch.no_grad():
        parts = [_manual_nll(tm.model, tm.tokenizer(t)["input_ids"]) for t in ("One text.", "And another, longer text.")]
    assert float(value.detach()) == pytest.approx(sum(n for n, _ in parts) / sum(t for _, t in parts), rel=1e-5)
    value.backward()
    assert tm.model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_zero_shot_scores_are_label_word_log_likelihoods():
    tm = tiny_lm(seed=2)
    data = TaskData("sst2", {"dev": [Example("great fun", None, 1), Example("dull and far too long", None, 0),
                                     Example("fine", None, 1)]}, 2, ("accuracy",), "mem")
    assert task_metrics(tm, data) == ("accuracy",)
    prompt = PROMPTS["sst2"]
    prepared = prepare(tm, data.splits["dev"], batch_size=8)
    (batch,) = prepared.batches
    from synprune.evaluation.evaluate import outputs

    with torch.no_grad():
        scores = outputs(tm, batch)
        assert scores.shape == (3, 2)
        for row, i in enumerate(batch.index):
            e = data.splits["dev"][i]
            prefix = tm.tokenizer(prompt.text(e.text_a))["input_ids"]
            for label, word in enumerate(prompt.words):
                w = tm.tokenizer(word, add_special_tokens=False)["input_ids"]
                x = torch.tensor([prefix + w])
                logp = tm.model(input_ids=x).logits[0, :-1].double().log_softmax(-1)
                expected = float(logp[len(prefix) - 1:].gather(-1, x[0, len(prefix):, None]).sum())
                assert float(scores[row, label]) == pytest.approx(expected, abs=1e-4)
        preds = predict(tm, prepared)
    assert preds.tolist() == [float(scores[list(batch.index).index(i)].argmax()) for i in range(3)]
    assert 0 <= evaluate(tm, prepared, ["accuracy"])["accuracy"] <= 100


def test_lm_on_a_task_without_a_prompt_or_an_encoder_on_text_is_refused():
    tm = tiny_lm()
    cola = TaskData("cola", {"dev": [Example("a", None, 1)]}, 2, ("matthews",), "mem")
    with pytest.raises(SynpruneError, match="zero-shot only on sst2"):
        task_metrics(tm, cola)
    text = TaskData("notes", {"all": [Example("a"), Example("b")]}, 0, ("perplexity",), "mem", lm=True)
    from synprune.model.load import TaskModel

    encoder = TaskModel(tm.model, tm.tokenizer, "embedding", "enc", "", None)
    with pytest.raises(SynpruneError, match="needs a causal LM"):
        task_metrics(encoder, text)


def test_metric_direction_is_known_in_one_place():
    assert M.higher_is_better("accuracy") and not M.higher_is_better("perplexity")
    assert M.best("perplexity", [12.0, 10.0, 11.0]) == 10.0 and M.best("spearman", [1.0, 3.0]) == 3.0
    cfg = PruneConfig(tolerance=0.9)
    # in goodness units: perplexity 20 may rise to 22 (10% worse), accuracy 80 may fall to 72
    assert M.goodness("perplexity", 22.0) == pytest.approx(metric_floor(M.goodness("perplexity", 20.0), cfg))
    assert metric_floor(M.goodness("accuracy", 80.0), cfg) == pytest.approx(72.0)


def test_summary_table_marks_the_lowest_perplexity_best():
    rows = [{"method": m, "cf": False, "sparsity": 0.25, "seed": 0, "metric_name": "perplexity", "dense": 10.0,
             "pruned": v, "n_pruned": 3} for m, v in (("a", 14.0), ("b", 12.0), ("c", 30.0))]
    table = summarize(rows)
    best = {label: cells[0].best for label, cells in table.rows}
    assert best == {"a": False, "b": True, "c": False}
    assert "lower is better" in table.rich().title


def test_gguf_paths_that_do_not_exist_fail_cleanly(tmp_path):
    with pytest.raises(SynpruneError, match="GGUF file"):
        load_model(str(tmp_path / "nope.gguf"))


@pytest.mark.integration
def test_smollm2_loads_from_its_gguf_with_a_fast_tokenizer_and_scores_ewt_text():
    from synprune.arch import attention_handles, kv_grid

    tm = load_model("smollm2")
    assert tm.kind == "lm" and tm.tokenizer.is_fast and tm.grid == (30, 9) and kv_grid(tm.model) == (30, 3)
    assert tm.weights_hash and len(tm.weights_hash) == 64 and tm.path.endswith(".gguf")
    assert next(tm.model.parameters()).dtype == torch.float32
    assert len(attention_handles(tm.model)) == 30
    texts = ["The cat sat on the mat.", "I would like to book a table for two tonight.", "Thanks for your help!"]
    prepared = prepare(tm, [Example(t) for t in texts], batch_size=8)
    ppl = evaluate(tm, prepared, ["perplexity"])["perplexity"]
    assert 1 < ppl < 1000  # a trained model: far below the vocabulary size (49152) of a random one


def test_cli_prunes_and_sweeps_a_causal_lm_folder_on_a_text_file(tmp_path):
    import json

    from _tiny_lm import tiny_llama
    from synprune.cli import main

    folder = tmp_path / "llama"
    model = tiny_llama(layers=2)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(folder)
    smollm2_tokenizer().save_pretrained(folder)
    text = tmp_path / "notes.txt"
    text.write_text("\n".join(f"Line {i} says something about the weather today." for i in range(30)), encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(folder), "--task", str(text), "--method", "magnitude", "--sparsity", "0.25",
              "--calib-size", "4", "--eval-size", "5", "--out", str(tmp_path / "p"), "-q"])
    assert e.value.code in (0, None)
    r = json.loads((tmp_path / "p" / "result.json").read_text())
    assert r["metric"]["name"] == "perplexity" and r["model"]["kind"] == "lm" and len(r["pruned_heads"]) == 2
    assert r["split"]["evaluation_all"] == 5 and r["config"]["eval_size"] == 5
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--model", str(folder), "--task", str(text), "--methods", "magnitude,flap,attn-drop",
              "--sparsities", "0.25", "--calib-size", "4", "--eval-size", "5", "--out", str(tmp_path / "s"), "-q"])
    assert e.value.code in (0, None)
    html = (tmp_path / "s" / "report.html").read_text()
    assert "lower is better" in html


def test_ewt_with_gold_trees_calibrates_on_the_same_dev_sentences_and_cf_may_run(ud_dir):
    from synprune.run.prune import prune

    tm = tiny_lm(layers=2)
    r = prune(tm, None, "ewt", 0.25, method="sap", parses_file=str(ud_dir / "en_ewt-ud-dev.conllu"), cf=True,
              calib_size=6, eval_size=5, batch_size=3, k=1)
    assert r.metric["name"] == "perplexity" and len(r.pruned_heads) == 2 and r.cf_log
    assert r.split["calibration"] == 6 and r.split["evaluation_test"] == 5
    assert r.details["parse_cache"]["parser"].startswith("gold:") and r.details["n_arcs"] == 6  # nsubj per sentence
    from synprune.syntax.conllu import read_conllu

    gold = read_conllu(ud_dir / "en_ewt-ud-dev.conllu").sample(6, 0).texts
    assert gold == [e.text_a for e in make_split(load_task("ewt"), 6, 0).calibration]  # the same dev sentences
