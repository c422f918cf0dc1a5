"""Ordinary bad input and awkward data: one-line errors, nothing replaced without --overwrite, long rows cut."""
import pytest

from conftest import tiny_model
from synprune.cli import main
from synprune.config import PruneConfig
from synprune.model.load import max_positions
from synprune.errors import SynpruneError
from synprune.data.tasks import Example, align_labels, load_file, load_glue


def run_cli(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


def one_line_error(code, err, *needles):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _prune_args(tiny_folder, glue_dir, out, *extra):
    return ["prune", "--model", str(tiny_folder), "--glue-dir", str(glue_dir), "--method", "magnitude",
            "--sparsity", "0.25", "--calib-size", "4", "--out", str(out), "-q", *extra]


def test_prune_export_never_replaces_a_folder_without_overwrite(capsys, tmp_path, tiny_folder, glue_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    code, err = run_cli(_prune_args(tiny_folder, glue_dir, tmp_path / "o", "--export", str(mine)), capsys)
    one_line_error(code, err, str(mine), "--overwrite")
    assert (mine / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "o" / "result.json").exists()  # refused before any work
    code, _ = run_cli(_prune_args(tiny_folder, glue_dir, tmp_path / "o", "--export", str(mine), "--overwrite"), capsys)
    assert code == 0
    assert not (mine / "precious.txt").exists() and (mine / "synprune_pruning.json").is_file()


def test_onnx_without_export_is_refused(capsys, tmp_path, tiny_folder, glue_dir):
    code, err = run_cli(_prune_args(tiny_folder, glue_dir, tmp_path / "o", "--onnx"), capsys)
    one_line_error(code, err, "--onnx", "--export")


@pytest.mark.parametrize("args, needle", [
    (["--seed", "-1"], "--seed"),
    (["--threshold", "nan"], "--threshold"),
    (["--threshold", "quantile:nan"], "--threshold"),
    (["--tolerance-abs", "nan"], "--tolerance-abs"),
    (["--pool-ratio", "inf"], "--pool-ratio"),
])
def test_non_finite_numbers_and_negative_seeds_are_refused(capsys, tmp_path, args, needle):
    code, err = run_cli(["prune", "--out", str(tmp_path / "o"), *args], capsys)
    one_line_error(code, err, needle)


def test_sweep_refuses_negative_seeds(capsys, tmp_path):
    code, err = run_cli(["sweep", "--methods", "random", "--seeds", "0,-2", "--out", str(tmp_path / "o")], capsys)
    one_line_error(code, err, "--seed -2")


def test_max_length_above_the_models_positions_is_refused(capsys, tmp_path, tiny_folder, glue_dir):
    code, err = run_cli(_prune_args(tiny_folder, glue_dir, tmp_path / "o", "--max-length", "512"), capsys)
    one_line_error(code, err, "--max-length 512", "130")


def test_max_positions_counts_robertas_padding_offset():
    from _tiny_models import tiny_config

    assert max_positions(tiny_config("bert")) == 64
    assert max_positions(tiny_config("roberta")) == 62  # positions start after padding index 1
    with pytest.raises(SynpruneError):
        PruneConfig(max_length=63).check_model(62)


def test_malformed_jsonl_line_is_named(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": "b"\n')
    with pytest.raises(SynpruneError, match=r"d.jsonl line 3 is not valid JSON"):
        load_file(f, "text")


def test_later_row_without_the_text_key_is_named(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(SynpruneError, match=r"line 2: no 'text' value"):
        load_file(f, "text")


def test_non_utf8_file_is_named(tmp_path, capsys, tiny_folder):
    f = tmp_path / "latin.csv"
    f.write_bytes("text,label\ncaf\xe9 au lait,1\n".encode("latin-1"))
    code, err = run_cli(["prune", "--model", str(tiny_folder), "--task", str(f), "--text-col", "text",
                         "--label-col", "label", "--out", str(tmp_path / "o")], capsys)
    one_line_error(code, err, "latin.csv", "not UTF-8", "0xe9")


def test_explain_with_bad_result_json(capsys, tmp_path, tiny_folder, glue_dir):
    bad = tmp_path / "result.json"
    bad.write_text("{not json")
    code, err = run_cli(["explain", "--model", str(tiny_folder), "--glue-dir", str(glue_dir), "--result", str(bad),
                         "--out", str(tmp_path / "e"), "-q"], capsys)
    one_line_error(code, err, "result.json", "not valid JSON", "line 1")


def test_glue_rows_with_too_few_columns_are_counted(glue_dir):
    train = glue_dir / "STS-B" / "train.tsv"
    train.write_text(train.read_text() + "99\tmain\tx\n")
    data = load_glue("stsb", glue_dir)
    assert data.skipped == {"STS-B/train.tsv": 1}
    assert len(data.splits["train"]) == len(data.splits["dev"])


class _Cfg:
    def __init__(self, label2id):
        self.label2id = label2id


def test_named_labels_follow_the_models_own_ids(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label\nbad movie,negative\ngreat movie,positive\nfine,neutral\n")
    data = load_file(f, "text", label_col="label")
    assert data.label_names == ("negative", "neutral", "positive")  # alphabetical before the model is known
    model_order = {"POSITIVE": 0, "NEGATIVE": 1, "NEUTRAL": 2}
    mapped = align_labels(data, _Cfg(model_order))
    assert [e.label for e in mapped.splits["all"]] == [1, 0, 2]
    assert mapped.label_map == {"negative": 1, "neutral": 2, "positive": 0}
    default = align_labels(data, _Cfg({"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}))
    assert [e.label for e in default.splits["all"]] == [0, 2, 1]
    with pytest.raises(SynpruneError, match="'neutral'"):
        align_labels(data, _Cfg({"positive": 0, "negative": 1}))


def test_glue_nli_labels_follow_a_model_with_another_order(glue_dir):
    d = glue_dir / "RTE"
    d.mkdir()
    rows = "index\tsentence1\tsentence2\tlabel\n0\tA b.\tA.\tentailment\n1\tC d.\tE.\tnot_entailment\n"
    (d / "dev.tsv").write_text(rows)
    data = load_glue("rte", glue_dir)
    mapped = align_labels(data, _Cfg({"not_entailment": 0, "entailment": 1}))
    assert [e.label for e in mapped.splits["dev"]] == [1, 0]


def test_long_rows_are_cut_to_the_kept_tokens_before_parsing_and_alignment():
    from synprune.calibrate.context import Calibration

    tm = tiny_model("bert")
    long_text = " ".join(["word"] * 2500) + "."
    examples = [Example("A short sentence."), Example(long_text)]
    ctx = Calibration(tm, examples, PruneConfig(max_length=16, batch_size=2))
    assert ctx.texts.rows_cut == 1 and ctx.texts.texts_a[0] == "A short sentence."
    assert len(ctx.texts.texts_a[1]) < 100
    shapes = []

    class Probe:
        def update(self, batch):
            shapes.append(tuple(batch.word_attn.shape))

    ctx.run_scan([Probe()])
    assert shapes and all(s[-1] <= 16 for s in shapes)  # word slots bounded by the tokens kept, not 2,500 words


def test_cut_keeps_a_pairs_both_sides_as_the_model_reads_them():
    from synprune.data.truncation import cut_to_kept

    tok = tiny_model("bert").tokenizer
    a, b = " ".join(["alpha"] * 200), "a short second text"
    cut = cut_to_kept(tok, [a], [b], 24, together=True)
    assert cut.rows_cut == 1 and cut.texts_b == [b] and cut.texts_a[0].split() == ["alpha"] * len(cut.texts_a[0].split())
    enc_full = tok(a, b, truncation=True, max_length=24)["input_ids"]
    enc_cut = tok(cut.texts_a[0], b, truncation=True, max_length=24)["input_ids"]
    assert enc_full == enc_cut


def test_a_text_beyond_spacys_length_limit_is_a_one_line_error(monkeypatch):
    import synprune.syntax.parse as P

    class TinyLimit:
        meta = {"lang": "en", "name": "tiny", "version": "0"}
        max_length = 20

        def pipe(self, texts, batch_size=64):
            raise AssertionError("must refuse before parsing")

    monkeypatch.setattr(P, "load_parser", lambda name: TinyLimit())
    with pytest.raises(SynpruneError, match="21 characters is longer than spaCy parses"):
        P.parse_texts(["short", "x" * 21])
