"""A model spread by an accelerate device map over the CPU and disk offload prunes, repairs, evaluates and exports
exactly as the same model on one device (`synprune.devices`): same units pruned, same metrics, same weights."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("accelerate")

from _tiny_lm import smollm2_tokenizer, tiny_llama  # noqa: E402
from conftest import tiny_model, write_stsb  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from synprune.errors import SynpruneError  # noqa: E402
from synprune.run.prune import prune  # noqa: E402

# Layer 1 and 2 on disk (their weights are on `meta` outside a forward pass), the rest on the CPU. Tied input
# and output embeddings share one device, as accelerate needs.
DECODER_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
               "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
ENCODER_MAP = {"embeddings": "cpu", "encoder.layer.0": "disk", "encoder.layer.1": "cpu", "encoder.layer.2": "disk",
               "pooler": "disk"}


def _random_biases(model: torch.nn.Module) -> None:
    with torch.no_grad():  # zero biases would hide a bias read from the wrong place
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)


@pytest.fixture(scope="module")
def llama_task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dm_llama")
    model = tiny_llama(layers=3)
    model.config.attention_bias = model.config.mlp_bias = True
    model = type(model)(model.config).eval()  # rebuilt with biases
    _random_biases(model)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(tmp / "llama")
    smollm2_tokenizer().save_pretrained(tmp / "llama")
    text = tmp / "notes.txt"
    text.write_text("\n".join(f"Line {i} says something about the weather today." for i in range(30)), encoding="utf-8")
    return tmp / "llama", text


def _same(a, b, export_a=None, export_b=None) -> None:
    assert a.pruned_heads == b.pruned_heads and a.pruned_neurons == b.pruned_neurons
    assert a.metric["dense"] == pytest.approx(b.metric["dense"], rel=1e-6)
    assert a.metric["pruned"] == pytest.approx(b.metric["pruned"], rel=1e-6)
    if a.repair is not None:
        ra, rb = a.repair, b.repair
        for x, y in ((ra.head_scales, rb.head_scales), (ra.neuron_scales, rb.neuron_scales)):
            assert (x is None) == (y is None) and (x is None or torch.allclose(x, y, atol=1e-8))
        for x, y in ((ra.attn_bias, rb.attn_bias), (ra.ffn_bias, rb.ffn_bias)):
            assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)
    if export_a is not None:
        wa, wb = load_file(export_a / "model.safetensors"), load_file(export_b / "model.safetensors")
        assert wa.keys() == wb.keys()
        assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_decoder_gradient_scores_neurons_and_ls_repair_across_cpu_and_disk(llama_task, tmp_path):
    folder, text = llama_task
    kw = dict(task=str(text), sparsity=0.25, calib_size=4, eval_size=5, method="fisher", units="heads,neurons",
              repair="ls+bias")
    one = prune(str(folder), export=tmp_path / "one", **kw)
    split = prune(str(folder), export=tmp_path / "split", device_map=DECODER_MAP, **kw)
    assert split.model["device_map"]["model.layers.1"] == "disk" and "device_map" not in one.model
    assert one.pruned_neurons and one.repair.attn_bias  # the run prunes neurons and writes bias vectors
    _same(one, split, tmp_path / "one", tmp_path / "split")


def test_cli_device_map_file_with_candidate_filtering(llama_task, tmp_path):
    from synprune.cli import main

    folder, text = llama_task
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(DECODER_MAP))
    one = prune(str(folder), task=str(text), sparsity=0.25, calib_size=4, eval_size=5, method="flap", cf=True)
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(folder), "--task", str(text), "--method", "flap", "--cf", "--sparsity", "0.25",
              "--calib-size", "4", "--eval-size", "5", "--device-map", str(mapping), "--out", str(tmp_path / "p"), "-q"])
    assert e.value.code in (0, None)
    r = json.loads((tmp_path / "p" / "result.json").read_text())
    assert r["model"]["device_map"]["model.layers.2"] == "disk"
    assert [tuple(h) for h in r["pruned_heads"]] == one.pruned_heads
    assert r["metric"]["pruned"] == pytest.approx(one.metric["pruned"], rel=1e-6)


def test_encoder_masked_heads_neurons_and_repair_across_cpu_and_disk(tmp_path):
    tm = tiny_model("bert")
    _random_biases(tm.model)
    tm.model.save_pretrained(tmp_path / "bert")
    tm.tokenizer.save_pretrained(tmp_path / "bert")
    glue = write_stsb(tmp_path / "glue")
    kw = dict(task="stsb", glue_dir=glue, sparsity=0.5, calib_size=6, method="michel", units="heads,neurons", repair="ls+bias")
    one = prune(str(tmp_path / "bert"), export=tmp_path / "one", **kw)
    split = prune(str(tmp_path / "bert"), export=tmp_path / "split", device_map=ENCODER_MAP, **kw)
    _same(one, split, tmp_path / "one", tmp_path / "split")


def test_offloaded_weights_are_read_back_and_gathered(llama_task):
    from transformers import AutoModelForCausalLM

    from synprune.arch import attention_handles, weight_rows
    from synprune.devices import dispatched, gathered, input_device
    from synprune.devices import placement

    folder, _ = llama_task
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    split = AutoModelForCausalLM.from_pretrained(folder, **placement(DECODER_MAP)).eval()
    h = attention_handles(split)[1]
    assert h.out_proj.weight.device.type == "meta" and dispatched(split) and not dispatched(plain)
    assert torch.equal(weight_rows(h.out_proj), weight_rows(attention_handles(plain)[1].out_proj))
    assert input_device(split) == torch.device("cpu")
    copy = gathered(split)
    assert copy.lm_head.weight is copy.model.embed_tokens.weight  # tied weights stay one parameter
    ids = torch.randint(5, 100, (2, 7))
    assert torch.equal(copy(input_ids=ids).logits, plain(input_ids=ids).logits)
    assert h.out_proj.weight.device.type == "meta"  # the dispatched model is left as it was


def test_forward_swaps_give_back_accelerates_wrapper(llama_task):
    from transformers import AutoModelForCausalLM

    from synprune.devices import placement
    from synprune.model.activations import forward_replaced

    folder, _ = llama_task
    split = AutoModelForCausalLM.from_pretrained(folder, **placement(DECODER_MAP)).eval()
    block = split.model.layers[1]
    wrapper = block.__dict__["forward"]  # accelerate's hook wrapper is an instance attribute
    with forward_replaced([block], lambda m: (lambda *a, **k: None)):
        assert block.forward is not wrapper
    assert block.__dict__["forward"] is wrapper


def test_bad_device_map_options_are_one_line_errors(tmp_path):
    from synprune.devices import parse_device_map, parse_max_memory, placement

    assert parse_device_map("balanced") == "balanced" and parse_device_map(None) is None
    with pytest.raises(SynpruneError, match="--device-map nowhere"):
        parse_device_map("nowhere")
    bad = tmp_path / "map.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SynpruneError, match="JSON object of module name"):
        parse_device_map(str(bad))
    assert parse_max_memory("0=20GiB, cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    with pytest.raises(SynpruneError, match="DEVICE=AMOUNT"):
        parse_max_memory("20GiB")
    with pytest.raises(SynpruneError, match="add --device-map"):
        placement(None, {0: "1GiB"})
    with pytest.raises(SynpruneError, match="device_map places a model that synprune loads"):
        prune(tiny_model("bert"), task="stsb", device_map="auto")
    pytest.importorskip("gguf")
    from synprune.model.load import load_model

    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(SynpruneError, match="cannot offload a GGUF model to disk"):  # transformers' own error is a RuntimeError
        load_model(str(tmp_path / "m.gguf"), device_map={"model.layers.0": "disk"})
