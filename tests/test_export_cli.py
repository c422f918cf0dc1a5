"""`synprune export` end to end on tiny saved checkpoints, its errors, atomicity, and the docs' plain recipe."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import transformers as tf
from typer.testing import CliRunner

import synprune
import synprune.commands.export  # noqa: F401  (registers the subcommand)
import synprune.export.checkpoint as export_mod
from _tiny_models import n_params, padded_batch, tiny_model
from synprune.cli import app, main
from synprune.errors import SynpruneError
from synprune.io import sha256_dir
from synprune.model.masking import HeadMask
from synprune.model.pruned import load_source_model

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"tok{a}{b}" for a in "abcdefghij" for b in "abcdefghij"][:95]


def save_checkpoint(folder: Path, family: str = "bert", head: str = "cls") -> torch.nn.Module:
    model = tiny_model(family, head)
    model.save_pretrained(folder)
    if family == "bert":
        vocab = folder / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
        tf.BertTokenizer(vocab=str(vocab)).save_pretrained(folder)
    return model


def write_result(path: Path, model_dir: Path, pruned, removed=()) -> Path:
    path.write_text(json.dumps({"method": "random", "model": {"name": model_dir.name, "path": str(model_dir),
                                                              "weights_sha256": sha256_dir(model_dir)},
                                "pruned_heads": [list(h) for h in pruned], "removed_layers": list(removed)}))
    return path


def masked(model, heads, batch):
    with torch.no_grad(), HeadMask.pruning(model, heads):
        return model(**batch)[0]


def test_cli_export_classifier_with_removed_layer(tmp_path):
    src = tmp_path / "src"
    model = save_checkpoint(src)
    # layer 1 is listed in removed_layers only: export must take all its heads
    result = write_result(tmp_path / "result.json", src, [(0, 1), (0, 3), (2, 2), (1, 0)], removed=[1])
    run = CliRunner().invoke(app, ["export", str(result), "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    assert "5/12 heads kept" in run.output
    assert "do not match the hash" not in run.output
    loaded, tokenizer = synprune.load_pruned(tmp_path / "out")
    assert type(loaded).__name__ == "BertForSequenceClassification"
    info = json.loads((tmp_path / "out" / "synprune_pruning.json").read_text())
    assert info["kept_heads"] == [[0, 2], [], [0, 1, 3]]
    assert info["removed_layers"] == [1]
    assert info["auto_class"] == "AutoModelForSequenceClassification"
    assert info["meta"]["method"] == "random"
    assert info["source"]["hash"] == info["source"]["result_hash"] == sha256_dir(src)
    all_pruned = [(0, 1), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 2)]
    batch = padded_batch()
    with torch.no_grad():
        assert (loaded(**batch).logits - masked(model, all_pruned, batch)).abs().max() < 1e-5
    assert n_params(model) - n_params(loaded) == 7 * 1048 + 32
    enc = tokenizer(["tokaa tokbc", "tokcd"], padding=True, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == [2, 5, 17, 3]


def test_cli_export_bare_encoder_without_tokenizer(tmp_path):
    src = tmp_path / "src"
    model = save_checkpoint(src, "mpnet", "base")
    result = write_result(tmp_path / "result.json", src, [(0, 0), (2, 1), (2, 3)])
    data = json.loads(result.read_text())
    data["model"]["weights_sha256"] = "0" * 64  # heads chosen for other weights: warn, but export
    result.write_text(json.dumps(data))
    run = CliRunner().invoke(app, ["export", str(result), "--out", str(tmp_path / "out")])
    assert run.exit_code == 0 and "do not match the hash" in run.output
    loaded, tokenizer = synprune.load_pruned(tmp_path / "out")
    assert tokenizer is None and type(loaded).__name__ == "MPNetModel"
    batch = padded_batch(seed=2)
    with torch.no_grad():
        assert (loaded(**batch)[0] - masked(model, [(0, 0), (2, 1), (2, 3)], batch)).abs().max() < 1e-5


def run_main(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    save_checkpoint(src)
    assert "does not exist" in run_main(["export", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")], capsys)
    (tmp_path / "bad.json").write_text("{")
    assert "not valid JSON" in run_main(["export", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")], capsys)
    (tmp_path / "other.json").write_text("{}")
    assert "pruned_heads" in run_main(["export", str(tmp_path / "other.json"), "--out", str(tmp_path / "o")], capsys)
    result = write_result(tmp_path / "r.json", src, [(0, 4)])
    assert "outside" in run_main(["export", str(result), "--out", str(tmp_path / "o")], capsys)
    result = write_result(tmp_path / "r.json", src, [(0, 1)])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert "not empty" in run_main(["export", str(result), "--out", str(tmp_path / "full")], capsys)
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_overwrite_replaces_and_failed_check_writes_nothing(tmp_path, monkeypatch):
    model = tiny_model("bert")
    out = export_mod.export_pruned(model, None, [(0, 1)], tmp_path / "m")
    export_mod.export_pruned(model, None, [(0, 1), (0, 2)], out, overwrite=True)
    assert json.loads((out / "synprune_pruning.json").read_text())["kept_heads"][0] == [0, 3]

    real = export_mod.remove_units
    monkeypatch.setattr(export_mod, "remove_units", lambda m, heads, neurons: real(m, [(0, 0)]))  # cuts the wrong head
    with pytest.raises(SynpruneError, match="differ"):
        export_mod.export_pruned(model, None, [(0, 1)], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folders left behind


def test_load_pruned_rejects_other_folders_and_mismatched_weights(tmp_path):
    with pytest.raises(SynpruneError, match="not a synprune export"):
        synprune.load_pruned(tmp_path)
    out = export_mod.export_pruned(tiny_model("bert"), None, [(0, 1)], tmp_path / "m")
    info = json.loads((out / "synprune_pruning.json").read_text())
    info["kept_heads"][0] = [0, 1, 2, 3]  # claims more heads than the weights have
    (out / "synprune_pruning.json").write_text(json.dumps(info))
    with pytest.raises(SynpruneError, match="do not fit"):
        synprune.load_pruned(out)


def recipe_code() -> str:
    text = (ROOT / "docs" / "export.md").read_text()
    section = text.split("## Loading it with plain transformers", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_docs_plain_transformers_recipe(tmp_path, family):
    src = tmp_path / "src"
    model = save_checkpoint(src, family, "cls")
    heads = [(0, 1), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    model_loaded, tokenizer = load_source_model(str(src))
    out = export_mod.export_pruned(model_loaded, tokenizer, heads, tmp_path / "pruned")
    if tokenizer is None:  # the recipe loads a tokenizer: give roberta/electra the bert one
        tf.BertTokenizer(vocab=str(_vocab(tmp_path))).save_pretrained(out)
    code = recipe_code().replace('path = "pruned-model"', f'path = {str(out)!r}')
    scope: dict = {}
    exec(compile(code, "docs/export.md", "exec"), scope)
    batch = padded_batch(seed=4)
    with torch.no_grad():
        assert (scope["model"](**batch)[0] - masked(model, heads, batch)).abs().max() < 1e-5


def _vocab(tmp_path: Path) -> Path:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return vocab


@pytest.mark.integration  # slow: torch's dynamo ONNX exporter takes 10-30 s even for a tiny model on 2 cores
def test_onnx_export_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import numpy as np
    import onnxruntime as ort

    out = export_mod.export_pruned(tiny_model("bert", "cls"), None, [(0, 1), (1, 0), (1, 1), (1, 2), (1, 3)],
                                   tmp_path / "m", onnx=True)
    info = json.loads((out / "synprune_pruning.json").read_text())
    assert info["onnx"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    loaded, _ = synprune.load_pruned(out)
    batch = padded_batch(seed=9, batch=2, length=13)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {k: v.numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        ref = loaded(**batch).logits.numpy()
    assert np.abs(got - ref).max() < 1e-4
