"""Layer-streamed pruning (`--stream`): read from files one layer at a time, it prunes the same units and
scores the same perplexities as the same layer-local recipe on the model loaded whole (every decoder
family), its export loads and computes what the recipe scored, and what cannot stream is refused."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from _tiny_models import DECODERS, padded_batch, tiny_model
from synprune.errors import SynpruneError
from synprune.model.layers import FileLayers, ModelLayers
from synprune.run.stream import Recipe, prune_layers
from synprune.selection.budget import CostModel, parse_budget

CALIB = [padded_batch(s) for s in (1, 2, 3, 4)]
EVALS = [padded_batch(s) for s in (5, 6)]


def _saved(family: str, folder) -> str:
    model = tiny_model(family, "lm", attn="eager")
    model.save_pretrained(folder)
    return str(folder)


def _loaded(folder: str) -> torch.nn.Module:
    return tf.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def _recipe(family: str, repair: str) -> Recipe:
    s = CostModel.from_model(tiny_model(family, "lm").config)
    if repair == "bias" and not (s.out_bias and s.down_bias):
        repair = "ls"  # families whose config cannot switch biases on refuse `bias` (tested below)
    return Recipe("flap", "wanda", parse_budget("params:0.6"), 0.5, repair)


@pytest.mark.parametrize("family", DECODERS)
def test_streamed_equals_in_memory(family, tmp_path):
    folder = _saved(family, tmp_path / family)
    for repair in ("none", "ls"):
        recipe = _recipe(family, repair)
        streamed = prune_layers(FileLayers(folder, attn_implementation="eager"), CALIB, EVALS, recipe)
        memory = prune_layers(ModelLayers(_loaded(folder)), CALIB, EVALS, recipe)
        assert streamed.pruned_heads == memory.pruned_heads and streamed.pruned_neurons == memory.pruned_neurons
        assert streamed.pruned_heads or streamed.pruned_neurons
        assert streamed.metrics == memory.metrics  # bit for bit: the same functions on the same float32 weights


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_dense_perplexity_is_the_models_own(family, tmp_path):
    """The carried states end where the model's own forward does: the recipe's dense perplexity is the
    model's, and a sparsity of 0 changes nothing."""
    from synprune.evaluation.lm import perplexity, token_nll

    folder = _saved(family, tmp_path / family)
    run = prune_layers(FileLayers(folder, attn_implementation="eager"), CALIB, EVALS, Recipe("flap", None, None, 0.0))
    model = _loaded(folder)
    nll, n = 0.0, 0
    with torch.no_grad():
        for b in EVALS:
            v, c = token_nll(model(**b).logits, b["input_ids"], b["attention_mask"])
            nll, n = nll + float(v), n + int(c)
    assert run.metrics["dense"] == pytest.approx(perplexity(nll, n), rel=1e-5)
    assert run.metrics["pruned"] == pytest.approx(run.metrics["dense"], rel=1e-6)
    assert run.pruned_heads == [] and run.pruned_neurons == []


@pytest.mark.parametrize("family,repair", [("llama", "bias"), ("qwen2", "ls"), ("gemma3", "none")])
def test_sharded_export_loads_and_computes_the_recipe(family, repair, tmp_path, monkeypatch):
    """The export (one shard per layer; the embedding and head written 7 rows at a time) loads with
    load_pruned and its perplexity is the recipe's."""
    import synprune.model.layers as layers
    from synprune.evaluation.lm import perplexity, token_nll
    from synprune.model.pruned import load_pruned
    from synprune.export.shards import ShardedExport

    monkeypatch.setattr(layers, "CHUNK_BYTES", 4 * tiny_model(family, "lm").config.hidden_size * 7)
    folder = _saved(family, tmp_path / family)
    source = FileLayers(folder, attn_implementation="eager")
    writer = ShardedExport(tmp_path / "out", source.n_layers + 1)
    run = prune_layers(source, CALIB, EVALS, Recipe("flap", "wanda", parse_budget("params:0.6"), 0.5, repair),
                       write=writer.write)
    from synprune.export.checkpoint import pruning_info
    from synprune.model.remove import pruning_state

    writer.write(source.n_layers, source.outside_tensors())
    state = pruning_state(source.model)
    writer.finish(source.model, None, pruning_info(source.model, state, run.pruned_heads, run.pruned_neurons,
                                                   None, 0, None, {}, {}))
    small, _ = load_pruned(tmp_path / "out", attn_implementation="eager")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in _loaded(folder).parameters())
    nll, n = 0.0, 0
    with torch.no_grad():
        for b in EVALS:
            v, c = token_nll(small(**b).logits, b["input_ids"], b["attention_mask"])
            nll, n = nll + float(v), n + int(c)
    assert perplexity(nll, n) == pytest.approx(run.metrics["pruned"], rel=1e-5)


def test_states_spill_to_disk_and_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNPRUNE_CACHE", str(tmp_path / "cache"))
    folder = _saved("llama", tmp_path / "llama")
    recipe = Recipe("layer-fisher", "layer-fisher", parse_budget("params:0.6"), 0.5, "ls")
    memory = prune_layers(FileLayers(folder, attn_implementation="eager"), CALIB, EVALS, recipe)
    spilled = prune_layers(FileLayers(folder, attn_implementation="eager"), CALIB, EVALS, recipe, memory_bound=0,
                           spill_key="k")
    assert spilled.spilled and not memory.spilled
    assert (spilled.pruned_heads, spilled.pruned_neurons, spilled.metrics) == (memory.pruned_heads, memory.pruned_neurons, memory.metrics)
    assert not (tmp_path / "cache" / "stream" / "k").exists()  # removed after the run


def test_every_layer_meets_the_budget(tmp_path):
    from synprune.selection.budget import budget_report

    folder = _saved("qwen2", tmp_path / "q")
    for heads in ("flap", "layer-fisher"):
        neurons = "wanda" if heads == "flap" else "layer-fisher"
        run = prune_layers(FileLayers(folder, attn_implementation="eager"), CALIB, [], Recipe(heads, neurons, parse_budget("params:0.5")))
        model = _loaded(folder)
        for layer in range(3):
            rep = budget_report(model, [(0, h) for l, h in run.pruned_heads if l == layer], "params:0.5",
                                neurons=[(0, u) for l, u in run.pruned_neurons if l == layer])
            assert rep["params_kept"] <= 1 - 0.5 / 3 + 1e-9  # the layer, a third of the cost, saves at least half of it
        assert budget_report(model, run.pruned_heads, "params:0.5", neurons=run.pruned_neurons)["met"]


@pytest.mark.parametrize("method,word", [("fisher", "backward"), ("sap", "parses"), ("kwon", "backward"),
                                         ("attn-drop", "blocks")])
def test_methods_that_cannot_stream_are_refused(method, word):
    from synprune.config import PruneConfig

    with pytest.raises(SynpruneError, match=word):
        Recipe.of(PruneConfig(method=method, units="heads,neurons", budget="params:0.5"))
    with pytest.raises(SynpruneError, match="cannot stream"):
        Recipe.of(PruneConfig(method="flap", units="heads,neurons", neuron_score="fisher"))
    with pytest.raises(SynpruneError, match="--cf"):
        Recipe.of(PruneConfig(method="flap", cf=True))


def test_bias_refused_where_the_family_cannot_hold_it(tmp_path):
    folder = _saved("mistral", tmp_path / "m")
    with pytest.raises(SynpruneError, match="--repair ls"):
        prune_layers(FileLayers(folder), CALIB, [], Recipe("flap", "wanda", None, 0.5, "bias"))


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    from _tiny_lm import smollm2_tokenizer, tiny_llama

    folder = tmp_path_factory.mktemp("tinylm") / "model"
    model = tiny_llama(seed=0, layers=2)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(folder)
    smollm2_tokenizer().save_pretrained(folder)
    text = tmp_path_factory.mktemp("text") / "corpus.txt"
    text.write_text("".join(f"The {w} dog runs to the park number {i} today.\n" for i, w in
                            enumerate(["red", "big", "old", "new", "fast", "slow", "small", "tall"] * 3)))
    return folder, text


def test_prune_layerwise_end_to_end(lm_folder, tmp_path):
    """`prune_layerwise` from the files and in memory: the same units, the same perplexities, a result.json,
    and an export that synprune loads and that scores what the streamed run said."""
    from synprune.evaluation.evaluate import evaluate, prepare
    from synprune.data.tasks import load_task, make_split
    from synprune.model.load import load_model
    from synprune.run.stream import prune_layerwise

    folder, text = lm_folder
    kw = dict(calib_size=8, eval_size=8, max_length=32, batch_size=4, method="flap", units="heads,neurons",
              budget="flops:0.7", repair="ls")
    s = prune_layerwise(str(folder), str(text), stream=True, export=tmp_path / "exp", out=tmp_path / "s", **kw)
    m = prune_layerwise(str(folder), str(text), stream=False, out=tmp_path / "m", **kw)
    assert (s.pruned_heads, s.pruned_neurons) == (m.pruned_heads, m.pruned_neurons) and s.pruned_neurons
    assert s.metric["dense"] == m.metric["dense"] and s.metric["pruned"] == m.metric["pruned"]
    assert s.details["budget"]["met"] and (tmp_path / "s" / "result.json").is_file()
    tm = load_model(str(tmp_path / "exp"))
    split = make_split(load_task(str(text)), 8, 0, 8)
    got = evaluate(tm, prepare(tm, split.evaluation[next(iter(split.evaluation))], 64, 32), ("perplexity",))
    assert got["perplexity"] == pytest.approx(s.metric["pruned"], rel=1e-4)


def test_cli_refuses_what_cannot_stream(lm_folder, capsys):
    from synprune.cli import main

    folder, text = lm_folder
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--model", str(folder), "--task", str(text), "--method", "fisher", "--stream"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "cannot stream" in err[0]


def test_export_command_refuses_a_layerwise_result(tmp_path, capsys):
    import json

    from synprune.cli import main

    (tmp_path / "result.json").write_text(json.dumps({"pruned_heads": [], "details": {"layerwise": "stream"}}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "result.json"), "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and "--export" in capsys.readouterr().err


@pytest.mark.parametrize("family", DECODERS)
def test_small_ranges_of_embedding_and_head_agree(family, tmp_path, monkeypatch):
    """With the embedding and the output head read a few rows at a time (`CHUNK_BYTES` of 7 rows: many
    ranges, the last one short), streamed and in-memory runs still agree bit for bit, the dense perplexity
    is still the model's own, and the streamed model held only the embedding rows of the tokens it saw."""
    import synprune.model.layers as layers
    from synprune.evaluation.lm import perplexity, token_nll

    folder = _saved(family, tmp_path / family)
    monkeypatch.setattr(layers, "CHUNK_BYTES", 4 * tiny_model(family, "lm").config.hidden_size * 7)
    source = FileLayers(folder, attn_implementation="eager")
    seen = {}
    load = source.load_outside

    def spy(which, tokens=None):
        load(which, tokens)
        if which == "input":
            seen["rows"] = source.model.get_input_embeddings().weight.shape[0]
    source.load_outside = spy
    recipe = _recipe(family, "ls")
    streamed = prune_layers(source, CALIB, EVALS, recipe)
    whole = _loaded(folder)
    memory = prune_layers(ModelLayers(whole), CALIB, EVALS, recipe)
    assert "forward" not in vars(whole.get_output_embeddings())  # the head is the model's own again
    assert (streamed.pruned_heads, streamed.pruned_neurons, streamed.metrics) == \
        (memory.pruned_heads, memory.pruned_neurons, memory.metrics)
    used = torch.unique(torch.cat([b["input_ids"].reshape(-1) for b in CALIB + EVALS]))
    assert seen["rows"] == len(used) < source.model.config.vocab_size
    assert "forward" not in vars(source.model.get_input_embeddings())  # the lookup is the model's own again
    dense = prune_layers(FileLayers(folder, attn_implementation="eager"), CALIB, EVALS, Recipe("flap", None, None, 0.0))
    model, nll, n = _loaded(folder), 0.0, 0
    with torch.no_grad():
        for b in EVALS:
            v, c = token_nll(model(**b).logits, b["input_ids"], b["attention_mask"])
            nll, n = nll + float(v), n + int(c)
    assert dense.metrics["dense"] == pytest.approx(perplexity(nll, n), rel=1e-5)


def test_the_streamed_run_imports_no_scipy():
    """Perplexity needs neither scipy nor scikit-learn (about 40 MB resident once imported)."""
    import subprocess
    import sys

    code = ("import sys, synprune.run.stream, synprune.evaluation.evaluate, synprune.run.prune; "
            "sys.exit(any(m.split('.')[0] in ('scipy', 'sklearn') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_token_outside_the_embedding_is_one_line(tmp_path):
    folder = _saved("llama", tmp_path / "l")
    bad = [{**CALIB[0], "input_ids": CALIB[0]["input_ids"].clone().fill_(500)}]
    with pytest.raises(SynpruneError, match="outside the 100 rows"):
        prune_layers(FileLayers(folder, attn_implementation="eager"), bad, [], Recipe("flap", None, None, 0.5))


def test_save_pieces_writes_what_safetensors_reads(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from synprune.export.shards import save_pieces
    from synprune.model.layers import Pieces

    whole = {"a": torch.randn(7, 5).to(torch.bfloat16), "b": torch.randn(3), "c": torch.arange(6).reshape(2, 3)}
    big = torch.randn(10, 4)
    save_pieces({**whole, "e": Pieces((10, 4), torch.float32, lambda: (big[i:i + 3] for i in range(0, 10, 3)))},
                tmp_path / "x.safetensors", {"format": "pt"})
    got = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(got[k], v) for k, v in whole.items()) and torch.equal(got["e"], big)
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    with pytest.raises(ValueError, match="bytes"):
        save_pieces({"e": Pieces((10, 4), torch.float32, lambda: iter([big[:9]]))}, tmp_path / "y.safetensors")


@pytest.mark.parametrize("stream", [True, False])
def test_params_budget_is_reported_of_the_whole_model(lm_folder, tmp_path, stream):
    """`params:F` is F of the TOTAL parameters (embeddings included): the result's params_kept is what the
    exported model really keeps of the dense one, in both modes (the streamed skeleton holds only some
    embedding rows, so its own parameter count is not the model's)."""
    from synprune.model.load import load_model
    from synprune.run.stream import prune_layerwise
    from synprune.selection.budget import total_parameters

    folder, text = lm_folder
    model = load_model(str(folder)).model
    dense, body = total_parameters(model), CostModel.from_model(model.config).total("params")
    F = round(1 - 0.3 * body / dense, 6)  # 30% of the body: embeddings are most of a tiny model
    r = prune_layerwise(str(folder), str(text), stream=stream, export=tmp_path / "exp", out=tmp_path / "o",
                        calib_size=8, eval_size=8, max_length=32, batch_size=4, method="flap",
                        units="heads,neurons", budget=f"params:{F}", repair="none")
    kept = total_parameters(load_model(str(tmp_path / "exp")).model) / dense
    assert kept <= F + 1e-3 and kept < 1 - 0.2 * body / dense
    assert r.details["budget"]["params_kept"] == pytest.approx(kept, abs=2e-3) and r.details["budget"]["met"]
