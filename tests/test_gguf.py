"""GGUF export (synprune.export.gguf): written files read back by transformers' GGUF loader give the model's logits
(Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3; Gemma 1, which transformers cannot read, tensor by tensor), for
whole tiny models and uniformly pruned ones; the tokenizer survives; the refusals; the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from typer.testing import CliRunner

import synprune.commands.export  # noqa: F401  (registers the subcommand)
import synprune.export.gguf as gguf_mod
from _tiny_gguf import SAMPLES, byte_fallback_tokenizer, byte_level_tokenizer, llama_cpp_config
from _tiny_models import padded_batch, tiny_config, tiny_model
from synprune.cli import app
from synprune.errors import SynpruneError
from synprune.export.checkpoint import export_pruned
from synprune.export.gguf import TOLERANCE, gguf_config, write_gguf

pytest.importorskip("gguf")

READABLE = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"]
# Every layer keeps heads 0 and 2 (one per key/value group) and 32 of 37 neurons: a uniform layout.
UNIFORM_HEADS = [(l, h) for l in range(3) for h in (1, 3)]
UNIFORM_NEURONS = [(l, n) for l in range(3) for n in (0, 5, 11, 20, 36)]
# Every layer keeps heads 0 and 1 (key/value group 0 only): one KV head left.
ONE_GROUP_HEADS = [(l, h) for l in range(3) for h in (2, 3)]


def tiny_decoder(family: str, tokenizer=None, seed: int = 0) -> torch.nn.Module:
    """The family's tiny config with the tokenizer's vocabulary, no biases where llama.cpp has none, no sliding
    window where llama.cpp's architecture has none; random norm weights (ones would hide a norm offset)."""
    tokenizer = tokenizer or byte_level_tokenizer()
    cfg = llama_cpp_config(family, tokenizer)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "self_attn" in name:  # sharp attention: a wrong rotary layout or scale shows in the logits
                p.normal_(0, 0.3)
    return model.eval()


def batch(vocab: int) -> dict[str, torch.Tensor]:
    b = padded_batch()
    b["input_ids"] = (b["input_ids"] * 37) % vocab
    return b


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits.float()


def read(path: Path, plain: bool = False) -> torch.nn.Module:
    """transformers' GGUF loader; `plain`: the file's own config, nothing filled in."""
    extra = {} if plain else {"config": gguf_config(path)}
    return tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                   **extra).eval()


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor, gtype: str) -> float:
    m = mask.bool()
    diff = float((ours - theirs)[m].abs().max())
    assert diff <= TOLERANCE[gtype] * max(1.0, float(ours[m].abs().max())), diff
    return diff


@pytest.mark.parametrize("gtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("family", READABLE)
def test_round_trip_whole_model(tmp_path, family, gtype):
    model = tiny_decoder(family)
    path = tmp_path / "m.gguf"
    info = write_gguf(model, byte_level_tokenizer(), path, gtype, verify=False)
    assert info["architecture"] == gguf_mod.FAMILIES[model.config.model_type].arch
    inputs = batch(model.config.vocab_size)
    diff = assert_close(logits(model, inputs), logits(read(path), inputs), inputs["attention_mask"], gtype)
    if gtype == "f32":
        assert diff <= 1e-5
    else:
        assert diff > 0  # the weights really were rounded
    if gtype == "q8_0":  # 2-D tensors whose rows are a multiple of 32 long are Q8_0, the rest f16
        assert info["tensor_types"].get("Q8_0", 0) > 0 and info["tensor_types"].get("float16", 0) > 0


def test_llama_reads_back_with_its_own_config_and_the_permutation_matters(tmp_path, monkeypatch):
    """Llama needs nothing filled in (transformers reads head_dim from rope.dimension_count); written without
    llama.cpp's q/k permutation, the file read back computes something else."""
    model = tiny_decoder("llama")
    inputs = batch(model.config.vocab_size)
    write_gguf(model, byte_level_tokenizer(), tmp_path / "m.gguf", "f32", verify=False)
    assert torch.allclose(logits(model, inputs), logits(read(tmp_path / "m.gguf", plain=True), inputs), atol=1e-5)
    monkeypatch.setitem(gguf_mod.FAMILIES, "llama", gguf_mod.Family("llama", permute_qk=False))
    write_gguf(model, byte_level_tokenizer(), tmp_path / "bad.gguf", "f32", verify=False)
    assert not torch.allclose(logits(model, inputs), logits(read(tmp_path / "bad.gguf"), inputs), atol=1e-3)
    with pytest.raises(SynpruneError, match="does not hold this model"):
        write_gguf(model, byte_level_tokenizer(), tmp_path / "bad2.gguf", "f32")
    assert not (tmp_path / "bad2.gguf").exists()


def test_layout_check_is_exact_under_quantization(tmp_path, monkeypatch):
    """Q8_0 moves logits, but the check compares the file with the model rounded the same way, to float32
    precision: a layout error is caught even in a Q8_0 file, and a correct one reports how far rounding moved."""
    model = tiny_decoder("qwen3")
    info = write_gguf(model, byte_level_tokenizer(), tmp_path / "ok.gguf", "q8_0")
    assert info["layout_max_abs_diff"] <= 1e-5 * info["max_abs_logit"] < info["max_abs_diff"]
    monkeypatch.setitem(gguf_mod.FAMILIES, "qwen3", gguf_mod.Family("qwen3", permute_qk=True))
    with pytest.raises(SynpruneError, match="does not hold this model"):
        write_gguf(model, byte_level_tokenizer(), tmp_path / "bad.gguf", "q8_0")


def test_gemma_norm_offset_matters(tmp_path, monkeypatch):
    model = tiny_decoder("gemma2")
    inputs = batch(model.config.vocab_size)
    monkeypatch.setitem(gguf_mod.FAMILIES, "gemma2", gguf_mod.Family("gemma2", tied_only=True, swa_pattern=2))
    write_gguf(model, byte_level_tokenizer(), tmp_path / "bad.gguf", "f32", verify=False)
    assert not torch.allclose(logits(model, inputs), logits(read(tmp_path / "bad.gguf"), inputs), atol=1e-3)


def test_gemma1_tensors_and_metadata(tmp_path):
    """transformers has no reader for llama.cpp's `gemma` architecture: check the file's tensors (norms + 1,
    no output tensor) and hyper-parameters directly."""
    import gguf

    model = tiny_decoder("gemma")
    info = write_gguf(model, byte_level_tokenizer(), tmp_path / "g.gguf", "f16")
    assert info["check"] == "tensors"
    reader = gguf.GGUFReader(str(tmp_path / "g.gguf"))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    cfg = model.config
    assert fields["general.architecture"] == "gemma"
    assert fields["gemma.attention.head_count"] == cfg.num_attention_heads
    assert fields["gemma.attention.head_count_kv"] == cfg.num_key_value_heads
    assert fields["gemma.attention.key_length"] == cfg.head_dim
    assert fields["gemma.feed_forward_length"] == cfg.intermediate_size
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors
    norm = gguf.quants.dequantize(tensors["blk.1.attn_norm.weight"].data, tensors["blk.1.attn_norm.weight"].tensor_type)
    np.testing.assert_allclose(norm, model.model.layers[1].input_layernorm.weight.detach().numpy() + 1, rtol=1e-6)


@pytest.mark.parametrize("heads", [UNIFORM_HEADS, ONE_GROUP_HEADS], ids=["one-head-per-group", "one-group"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma2", "gemma3"])
def test_uniformly_pruned_export_round_trip(tmp_path, family, heads):
    """export_pruned(..., gguf=) on a uniform layout: the GGUF file read back gives the standard checkpoint's
    logits (the pruned model's), with fewer heads / KV heads / neurons in its metadata."""
    model = tiny_decoder(family)
    tok = byte_level_tokenizer()
    out, path = tmp_path / "out", tmp_path / "p.gguf"
    export_pruned(model, tok, heads, out, neurons=UNIFORM_NEURONS, gguf=path, gguf_type="f32")
    info = json.loads((out / "synprune_pruning.json").read_text())
    assert info["standard"] and info["gguf"]["check"] == "logits"
    small = tf.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    back = read(path)
    assert back.config.num_attention_heads == 2 == small.config.num_attention_heads
    assert back.config.num_key_value_heads == small.config.num_key_value_heads == (1 if heads == ONE_GROUP_HEADS else 2)
    assert back.config.intermediate_size == 32
    inputs = batch(model.config.vocab_size)
    assert_close(logits(small, inputs), logits(back, inputs), inputs["attention_mask"], "f32")


def test_tokenizer_round_trip(tmp_path):
    """Byte-level BPE: transformers' GGUF tokenizer encodes like the original, special ids, chat template."""
    tok = byte_level_tokenizer()
    model = tiny_decoder("qwen2", tok)
    write_gguf(model, tok, tmp_path / "t.gguf", "f32", verify=False)
    back = tf.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    for text in SAMPLES:
        assert back(text)["input_ids"] == tok(text)["input_ids"], text
    assert (back.bos_token, back.eos_token, back.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)
    assert back.chat_template == tok.chat_template


def test_byte_fallback_tokenizer_round_trip(tmp_path):
    """A sentencepiece-style BPE (byte fallback) is written as llama.cpp's `llama` model with scores from the merge
    order and byte tokens typed BYTE; transformers' reader rebuilds the same merges."""
    import gguf

    tok = byte_fallback_tokenizer()
    model = tiny_decoder("llama", tok)
    write_gguf(model, tok, tmp_path / "s.gguf", "f32", verify=False)
    back = tf.AutoTokenizer.from_pretrained(tmp_path, gguf_file="s.gguf")
    for text in SAMPLES:  # none starts with a space: the prefix-space rule is the tokenizer class's, not the file's
        assert back(text)["input_ids"] == tok(text)["input_ids"], text
    fields = gguf.GGUFReader(str(tmp_path / "s.gguf")).fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[tok.convert_tokens_to_ids("<0x41>")] == gguf.TokenType.BYTE


def test_vocab_padded_to_the_embedding(tmp_path):
    """An embedding with more rows than tokens (Qwen's padding) gets unused [PAD] tokens up to its size."""
    tok = byte_level_tokenizer()
    model = tiny_decoder("qwen3", tok)
    model.resize_token_embeddings(len(tok) + 8)
    write_gguf(model, tok, tmp_path / "v.gguf", "f32")
    assert read(tmp_path / "v.gguf").config.vocab_size == len(tok) + 8


def test_refusals(tmp_path):
    tok = byte_level_tokenizer()
    with pytest.raises(SynpruneError, match="decoder LMs only"):
        write_gguf(tiny_model("bert"), tok, tmp_path / "e.gguf")
    mistral = tf.AutoModelForCausalLM.from_config(tiny_config("mistral")).eval()  # sliding window 16 of 64
    with pytest.raises(SynpruneError, match="no sliding window"):
        write_gguf(mistral, tok, tmp_path / "w.gguf")
    model = tiny_decoder("llama")
    with pytest.raises(SynpruneError, match="f32, f16, q8_0"):
        write_gguf(model, tok, tmp_path / "x.gguf", "q4_0")
    with pytest.raises(SynpruneError, match="must end in .gguf"):
        write_gguf(model, tok, tmp_path / "x.bin")
    (tmp_path / "old.gguf").write_bytes(b"mine")
    with pytest.raises(SynpruneError, match="--overwrite"):
        write_gguf(model, tok, tmp_path / "old.gguf")
    assert (tmp_path / "old.gguf").read_bytes() == b"mine"
    write_gguf(model, tok, tmp_path / "old.gguf", overwrite=True)
    assert (tmp_path / "old.gguf").read_bytes()[:4] == b"GGUF"
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_adaptive_layout_refused_and_nothing_written(tmp_path):
    """Layer 0 keeps 2 heads, layer 1 keeps 3: no GGUF form; the export writes neither the file nor the folder."""
    model = tiny_decoder("llama")
    pruned = [(0, 1), (0, 3), (1, 0)]
    with pytest.raises(SynpruneError, match="--layout uniform"):
        export_pruned(model, byte_level_tokenizer(), pruned, tmp_path / "out", gguf=tmp_path / "a.gguf")
    assert not (tmp_path / "out").exists() and not (tmp_path / "a.gguf").exists()


def test_cli_export_gguf(tmp_path):
    src = tmp_path / "src"
    model = tiny_decoder("qwen3")
    model.save_pretrained(src)
    byte_level_tokenizer().save_pretrained(src)
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"method": "random", "model": {"path": str(src), "kind": "lm"},
                                  "pruned_heads": [list(h) for h in UNIFORM_HEADS],
                                  "pruned_neurons": [list(n) for n in UNIFORM_NEURONS]}))
    args = ["export", str(result), "--out", str(tmp_path / "out"), "--gguf", str(tmp_path / "q.gguf"),
            "--gguf-type", "q8_0"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "q.gguf (q8_0" in run.output
    small = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    inputs = batch(model.config.vocab_size)
    assert_close(logits(small, inputs), logits(read(tmp_path / "q.gguf"), inputs), inputs["attention_mask"], "q8_0")
    again = CliRunner().invoke(app, [*args[:3], str(tmp_path / "out2"), *args[4:]])
    assert isinstance(again.exception, SynpruneError) and "--overwrite" in str(again.exception)
    assert not (tmp_path / "out2").exists()


@pytest.mark.integration
def test_smollm2_uniform_gguf_round_trip(smollm2, tmp_path):
    """The real SmolLM2-135M (9 query heads in 3 KV groups, 1536 neurons) pruned uniformly to 6 heads (one per
    group removed) and 1280 neurons per layer: the Q8_0 file, read back by transformers inside the export, gives
    the logits of the pruned model with its weights rounded to Q8_0 (float32 precision); the tokenizer metadata is
    the source file's, copied."""
    from transformers.integrations.gguf import read_gguf_metadata

    from synprune.model.load import smollm2_path

    model, tok = smollm2
    layers = model.config.num_hidden_layers
    heads = [(l, h) for l in range(layers) for h in (2, 5, 8)]
    neurons = [(l, n) for l in range(layers) for n in range(0, 1536, 6)]  # 256 per layer
    path = tmp_path / "smol.gguf"
    export_pruned(model, tok, heads, tmp_path / "out", neurons=neurons, gguf=path, gguf_type="q8_0",
                  meta={"source": {"path": str(smollm2_path())}})
    info = json.loads((tmp_path / "out" / "synprune_pruning.json").read_text())["gguf"]
    print(info)
    assert info["check"] == "logits" and info["layout_max_abs_diff"] <= 1e-4 * info["max_abs_logit"]
    assert 0 < info["max_abs_diff"] and info["top1_agreement"] > 0.5  # Q8_0 rounds; it does not garble
    assert info["tokenizer"].startswith("copied from")
    meta, _ = read_gguf_metadata(str(path))
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (6, 3)
    assert meta["llama.feed_forward_length"] == 1280 and meta["llama.rope.dimension_count"] == 64
    assert meta["tokenizer.ggml.pre"] == "smollm" and meta["tokenizer.ggml.model"] == "gpt2"


def test_prune_layout_uniform_writes_gguf(tmp_path):
    """The pipeline end to end: prune --layout uniform --export DIR --gguf FILE; the GGUF file reads back to the
    exported standard checkpoint's logits. --gguf without --export is refused before any work."""
    from synprune.model.load import TaskModel, with_bos
    from synprune.run.prune import prune

    tok = byte_level_tokenizer()
    tm = TaskModel(tiny_decoder("llama"), with_bos(tok), "lm", "tiny-llama", "", None)
    text = tmp_path / "t.txt"
    text.write_text("\n".join(s for s in SAMPLES * 6 if s.strip()), encoding="utf-8")
    with pytest.raises(SynpruneError, match="add --export"):
        prune(tm, None, str(text), gguf=tmp_path / "x.gguf")
    prune(tm, None, str(text), method="magnitude", calib_size=8, batch_size=4, units="heads,neurons",
          budget="params:0.7", layout="uniform", max_length=64, export=tmp_path / "small", out=tmp_path / "run",
          gguf=tmp_path / "small.gguf", gguf_type="f16")
    info = json.loads((tmp_path / "small" / "synprune_pruning.json").read_text())
    assert info["standard"] and info["gguf"]["type"] == "f16" and info["gguf"]["check"] == "logits"
    small = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "small", attn_implementation="eager").eval()
    back = read(tmp_path / "small.gguf", plain=True)
    assert back.config.num_attention_heads == small.config.num_attention_heads < 4 or \
        back.config.intermediate_size == small.config.intermediate_size < 37
    inputs = batch(small.config.vocab_size)
    assert_close(logits(small, inputs), logits(back, inputs), inputs["attention_mask"], "f16")


def test_pre_tokenizer_name_from_the_split_regex():
    """llama.cpp picks its pre-tokenizer by name: a Qwen2 / Llama 3 split regex is recognised, SmolLM's digit split
    too, a plain GPT-2 byte-level one is `gpt-2`, anything else `default`."""
    import copy

    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    def pre(pre_tokenizer) -> str:
        tok = copy.deepcopy(byte_level_tokenizer())
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizer
        return dict((k, v) for k, v, *_ in gguf_mod.tokenizer_fields(tok, len(tok)))["tokenizer.ggml.pre"]

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert pre(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), "isolated"), byte_level])) == "qwen2"
    assert pre(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])) == "smollm"
    assert pre(pre_tokenizers.ByteLevel(add_prefix_space=False)) == "gpt-2"
    assert pre(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\s+"), "isolated"), byte_level])) == "default"
