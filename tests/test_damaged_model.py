"""A model that cannot be read (damaged or missing weights, a config naming an unknown class, a tokenizer that
fails to load) is one SynpruneError line naming the file and what to do, from the library and the command line."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from conftest import tiny_model
from synprune.cli import main
from synprune.errors import SynpruneError
from synprune.model.load import load_model


def _truncate(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "model.safetensors"


def _garbage(folder):
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    return "model.safetensors"


def _no_weights(folder):
    (folder / "model.safetensors").unlink()
    return "no weights"


def _missing_tensors(folder):
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.1." not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return "model.safetensors lacks"


def _unknown_class(folder):
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="nosuchmodel", architectures=["NoSuchModelForSequenceClassification"])
    (folder / "config.json").write_text(json.dumps(config))
    return "config.json"


def _broken_config(folder):
    (folder / "config.json").write_text("{not json")
    return "config.json"


def _broken_tokenizer(folder):
    (folder / "tokenizer.json").write_text("{not json")
    return "tokenizer.json"


def _tokenizer_of_unknown_kind(folder):
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["model"]["type"] = "NoSuchModel"
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    return "tokenizer.json"


def _no_tokenizer(folder):
    for f in list(folder.iterdir()):
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            f.unlink()
    return "no tokenizer files"


DAMAGE = [_truncate, _garbage, _no_weights, _missing_tensors, _unknown_class, _broken_config, _broken_tokenizer,
          _tokenizer_of_unknown_kind, _no_tokenizer]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tm = tiny_model("bert")
    path = tmp_path_factory.mktemp("model") / "tiny"
    tm.model.save_pretrained(path)
    tm.tokenizer.save_pretrained(path)
    return path


def _one_line(message: str, *needles: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, message
    for n in needles:
        assert n in message, (n, message)


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_model_folder_is_one_line_naming_the_file(saved, tmp_path, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(saved, folder)
    needle = damage(folder)
    with pytest.raises(SynpruneError) as e:
        load_model(folder)
    _one_line(str(e.value), str(folder), needle)
    assert any(word in str(e.value) for word in ("download", "copy", "export", "fix", "newer")), str(e.value)


def test_the_undamaged_folder_loads(saved):
    assert load_model(saved).n_heads == 12  # the damage above, not the folder, is what fails


def test_a_truncated_pruned_export_is_one_line(saved, tmp_path):
    from synprune.export.checkpoint import export_pruned

    tm = load_model(saved)
    folder = export_pruned(tm.model, tm.tokenizer, [(0, 1), (2, 3)], tmp_path / "pruned")
    assert load_model(folder).n_heads == 12
    _truncate(folder)
    with pytest.raises(SynpruneError) as e:
        load_model(folder)
    _one_line(str(e.value), str(folder / "model.safetensors"), "download or export")


def test_the_command_line_prints_the_one_line(saved, tmp_path, capsys, glue_dir):
    folder = tmp_path / "damaged"
    shutil.copytree(saved, folder)
    _truncate(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--model", str(folder), "--glue-dir", str(glue_dir), "--method", "magnitude", "-q",
              "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: could not read "), err
    assert str(folder / "model.safetensors") in err[0]
