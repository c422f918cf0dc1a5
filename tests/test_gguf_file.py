"""Reading a GGUF file without gguf.GGUFReader's numpy views (synprune.model.gguf_file): the same metadata
values, tensors and row ranges as gguf's reader, the same config and tokenizer through transformers, and a
GGUF model streamed layer by layer prunes and scores as the same file loaded whole (the families whose GGUF
config transformers reads whole, and Qwen3's, whose head_dim `model.gguf_file.gguf_config` fills in from the file)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from _tiny_gguf import SAMPLES, byte_level_tokenizer, llama_cpp_config
from _tiny_models import padded_batch, tiny_config
from synprune.errors import SynpruneError
from synprune.model.gguf_file import GGUFFile, gguf_config, lean_config_reader
from synprune.model.layers import FileLayers, ModelLayers
from synprune.run.stream import Recipe, prune_layers
from synprune.selection.budget import parse_budget

gguf = pytest.importorskip("gguf")


def _written(tmp_path, family: str, gtype: str):
    from synprune.export.gguf import write_gguf

    tok = byte_level_tokenizer()
    cfg = llama_cpp_config(family, tok)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    path = tmp_path / f"{family}.gguf"
    write_gguf(model, tok, path, gtype, verify=False)
    return path


def _batches(vocab: int, seeds) -> list[dict]:
    out = []
    for s in seeds:
        b = padded_batch(s)
        b["input_ids"] = (b["input_ids"] * 37) % vocab
        out.append(b)
    return out


@pytest.mark.parametrize("gtype", ["f32", "q8_0"])
def test_fields_and_tensors_are_gguf_readers(tmp_path, gtype):
    from transformers.integrations.ggml import _gguf_parse_value

    path = _written(tmp_path, "llama", gtype)
    theirs, ours = gguf.GGUFReader(str(path)), GGUFFile(path)
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]  # gguf's own pseudo-fields (version, counts)
    assert keys == list(ours.fields)
    for k in keys:
        a, b = theirs.fields[k], ours.fields[k]
        assert [int(t) for t in a.types] == b.types
        assert [_gguf_parse_value(a.parts[i], a.types) for i in a.data] == \
            [_gguf_parse_value(b.parts[i], b.types) for i in b.data]
    assert ours.value("general.architecture") == "llama" and len(ours.value("tokenizer.ggml.tokens")) > 300
    assert [t.name for t in theirs.tensors] == [t.name for t in ours.tensors]
    for a, b in zip(theirs.tensors, ours.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(ours.array(b), a.data)
        if len(b.shape) == 2:
            assert np.array_equal(ours.array(b, slice(3, 10)), a.data[3:10])
    assert any(t.tensor_type.name == gtype.upper() for t in ours.tensors)


def test_config_and_tokenizer_through_the_lean_reader(tmp_path):
    path = _written(tmp_path, "qwen2", "q8_0")
    folder, name = str(path.parent), path.name
    config, tok = tf.AutoConfig.from_pretrained(folder, gguf_file=name), tf.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with lean_config_reader():
        config2 = tf.AutoConfig.from_pretrained(folder, gguf_file=name)
        tok2 = tf.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    assert gguf.GGUFReader is not None and not isinstance(gguf.GGUFReader, type(lambda: 0))  # restored
    assert config.to_dict() == config2.to_dict()
    assert type(tok) is type(tok2) and [tok(s)["input_ids"] for s in SAMPLES] == [tok2(s)["input_ids"] for s in SAMPLES]


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(SynpruneError, match="not a GGUF file"):
        GGUFFile(bad)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"])
def test_streamed_gguf_equals_the_file_loaded_whole(tmp_path, family, monkeypatch):
    """A Q8_0 file streamed (its embedding and head read a few rows at a time) and the same file loaded by
    transformers: the same units, the same perplexities, bit for bit."""
    import synprune.model.layers as layers

    path = _written(tmp_path, family, "q8_0")
    source = FileLayers(path, attn_implementation="eager")
    vocab = source.model.config.vocab_size
    monkeypatch.setattr(layers, "CHUNK_BYTES", 4 * source.model.config.hidden_size * 50)
    calib, evals = _batches(vocab, (1, 2, 3, 4)), _batches(vocab, (5, 6))
    recipe = Recipe("flap", "wanda", parse_budget("params:0.6"), 0.5, "ls")
    streamed = prune_layers(source, calib, evals, recipe)
    whole = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                    config=gguf_config(path), attn_implementation="eager").eval()
    memory = prune_layers(ModelLayers(whole), calib, evals, recipe)
    assert streamed.pruned_heads or streamed.pruned_neurons
    assert (streamed.pruned_heads, streamed.pruned_neurons, streamed.metrics) == \
        (memory.pruned_heads, memory.pruned_neurons, memory.metrics)


def test_synprune_loads_a_qwen3_gguf_with_its_head_dim(tmp_path):
    """transformers alone reads a Qwen3 GGUF with head_dim = hidden / heads (wrong for Qwen3, whose head_dim is
    its own); synprune's loader takes it from the file, so the loaded model computes the written one."""
    from synprune.export.gguf import write_gguf
    from synprune.model.load import load_model

    tok = byte_level_tokenizer()
    cfg = tiny_config("qwen3")
    cfg.vocab_size = len(tok)
    cfg.head_dim = 2 * cfg.hidden_size // cfg.num_attention_heads  # not hidden / heads, as in real Qwen3 models
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    path = tmp_path / "qwen3.gguf"
    write_gguf(model, tok, path, "f32", verify=False)
    plain = tf.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    assert getattr(plain, "head_dim", None) != cfg.head_dim  # what this test guards against
    tm = load_model(str(path))
    assert tm.model.config.head_dim == cfg.head_dim
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        assert torch.allclose(tm.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)
