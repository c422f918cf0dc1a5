"""Bad input: one line naming the problem and the fix, exit status 2, and no result.json left behind."""
import json

import pytest

from synprune.cli import main


def run_cli(args, capsys):
    capsys.readouterr()  # drop what fixtures printed
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.err


def _assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_unknown_task(capsys, tmp_path, tiny_folder):
    code, err = run_cli(["prune", "--model", str(tiny_folder), "--task", "nosuch", "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_error(code, err, "unknown task", "stsb")
    assert not (tmp_path / "o" / "result.json").exists()


def test_missing_glue_folder_says_how_to_point_to_it(capsys, tmp_path, tiny_folder):
    code, err = run_cli(["prune", "--model", str(tiny_folder), "--glue-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_error(code, err, "--glue-dir", "SYNPRUNE_GLUE_DIR")


def test_missing_model_folder(capsys, tmp_path, glue_dir):
    code, err = run_cli(["prune", "--model", str(tmp_path / "missing_model"), "--glue-dir", str(glue_dir),
                         "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_error(code, err, "not found")


def test_model_without_known_heads(capsys, tmp_path, glue_dir):
    from transformers import OPTConfig, OPTModel

    path = tmp_path / "opt"
    OPTModel(OPTConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=8, ffn_dim=16, word_embed_proj_dim=8, vocab_size=30522)).save_pretrained(path)
    from synprune.model.load import bundled_model_path
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(bundled_model_path()).save_pretrained(path)
    code, err = run_cli(["prune", "--model", str(path), "--glue-dir", str(glue_dir), "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_error(code, err, "opt", "no synprune adapter")


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_sparsity_out_of_range(capsys, tmp_path, value):
    code, err = run_cli(["prune", "--sparsity", value, "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_error(code, err, "sparsity", "[0, 1)")


def test_empty_file(capsys, tmp_path, tiny_folder):
    f = tmp_path / "empty.csv"
    f.write_text("text,label\n")
    code, err = run_cli(["prune", "--model", str(tiny_folder), "--task", str(f), "--text-col", "text", "--label-col", "label",
                         "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_error(code, err, "no rows")


def test_file_without_labels_is_scored_against_the_dense_model(capsys, tmp_path, tiny_folder):
    f = tmp_path / "texts.jsonl"
    texts = ["A cat sat on the mat.", "Dogs run fast.", "The sun is warm today.", "Birds sing at dawn."]
    f.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    code, err = run_cli(["prune", "--model", str(tiny_folder), "--task", str(f), "--text-col", "text", "--calib-size", "2",
                         "--method", "magnitude", "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 0, err
    metric = json.loads((tmp_path / "o" / "result.json").read_text())["metric"]
    assert metric["name"] == "cosine_to_dense" and metric["dense"] == pytest.approx(100.0)
    assert metric["pruned"] < 100.0
    code, err = run_cli(["prune", "--model", str(tiny_folder), "--task", str(f), "--text-col", "text", "--cf",
                         "--out", str(tmp_path / "o2")], capsys)
    _assert_one_line_error(code, err, "no labels", "--cf")


def test_missing_text_column(capsys, tmp_path, tiny_folder):
    f = tmp_path / "d.tsv"
    f.write_text("sentence\tlabel\nA cat sat.\t1\n")
    code, err = run_cli(["prune", "--model", str(tiny_folder), "--task", str(f), "--text-col", "text", "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_error(code, err, "no column 'text'", "sentence")


def test_bad_threshold_and_direction(capsys, tmp_path):
    code, err = run_cli(["prune", "--threshold", "median", "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_error(code, err, "--threshold")
    code, err = run_cli(["prune", "--direction", "up", "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_error(code, err, "--direction")


def test_cli_prune_runs_and_writes_result(capsys, tmp_path, tiny_folder, glue_dir):
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--model", str(tiny_folder), "--glue-dir", str(glue_dir), "--sparsity", "0.25",
              "--calib-size", "4", "--out", str(tmp_path / "o"), "-q"])
    assert exc.value.code == 0
    data = json.loads((tmp_path / "o" / "result.json").read_text())
    assert len(data["pruned_heads"]) == 3 and data["model"]["weights_sha256"]


def test_methods_command_lists_what_each_method_needs(capsys):
    from synprune.commands.methods import method_rows
    from synprune.methods import available

    with pytest.raises(SystemExit) as exc:
        main(["methods"])
    assert exc.value.code == 0
    out = capsys.readouterr()
    text = out.out + out.err
    rows = {r["method"]: r for r in method_rows()}
    assert set(rows) == set(available()) and all(name in text for name in rows)
    assert {"direction", "k", "keep_punct", "threshold"} <= set(rows["sap"]["options"])
    assert any("parses" in n for n in rows["sap"]["needs"]) and any("labels" in n for n in rows["fisher"]["needs"])
    assert rows["magnitude"]["needs"] == [] and not any("labels" in n for n in rows["output-fisher"]["needs"])
    assert all(r["about"] for r in rows.values())
