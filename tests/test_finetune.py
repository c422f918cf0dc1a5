"""Fine-tuning on a tiny random BERT built here (no downloaded or cached model needed): it learns, it resumes
to the same weights, it refuses mismatched checkpoints, it saves a folder `load_model` reads as a classifier,
and `task_model` caches by what the model was built from."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from synprune.train import finetune as F
from synprune.errors import SynpruneError
from synprune.io import sha256_file

POS = ["good", "great", "fine", "lovely", "superb", "nice"]
NEG = ["bad", "awful", "dull", "poor", "boring", "ugly"]
FILL = ["the", "film", "was", "a", "story", "quite", "very", "plot", "cast", "and"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 4-head BERT with random weights and a word-level WordPiece vocabulary, saved as a folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *POS, *NEG, *FILL]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _sentence(rng: random.Random, positive: bool) -> str:
    words = rng.sample(FILL, 4) + [rng.choice(POS if positive else NEG)]
    rng.shuffle(words)
    return " ".join(words) + " ."


@pytest.fixture(scope="module")
def glue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SST-2 and STS-B files in GLUE format whose labels follow from a sentiment word."""
    root = tmp_path_factory.mktemp("glue")
    rng = random.Random(0)
    for split, n in (("train", 96), ("dev", 40)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            rows.append(f"{_sentence(rng, i % 2 == 0)}\t{int(i % 2 == 0)}")
        (root / "SST-2").mkdir(exist_ok=True)
        (root / "SST-2" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        rows = [head]
        for i in range(n):
            a, b = rng.random() < 0.5, rng.random() < 0.5
            score = 4.5 if a == b else 0.5
            rows.append(f"{i}\tg\tf\t2012\t{i:04d}\tnone\tnone\t{_sentence(rng, a)}\t{_sentence(rng, b)}\t{score:.3f}")
        (root / "STS-B").mkdir(exist_ok=True)
        (root / "STS-B" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


OPTS = F.FinetuneOptions(epochs=2, lr=3e-3, batch_size=8, max_length=32, warmup=0.1, seed=0)


def ft(out: Path, task: str, base: Path, opts: F.FinetuneOptions, **kw: object) -> dict:
    """`finetune` quietly on one thread (tiny models gain nothing from more; other jobs may share the cores)."""
    return F.finetune(out, task, base, opts, **{"progress": False, "quiet": True, "threads": 1, **kw})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_learns_and_saves_a_classifier_folder(tmp_path: Path, tiny_base: Path, glue: Path) -> None:
    losses: list[float] = []
    out = tmp_path / "sst2"
    opts = F.FinetuneOptions(epochs=6, lr=3e-3, batch_size=8, max_length=32, seed=0)
    record = ft(out, "sst2", tiny_base, opts, glue_dir=glue, on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == record["steps"] == 6 * 12
    assert sum(losses[-6:]) / 6 < 0.5 * sum(losses[:6]) / 6, losses
    assert record["metrics"]["dev"]["accuracy"] >= 90.0
    assert record["metric"] == "accuracy" and record["score"] == record["metrics"]["dev"]["accuracy"]
    assert record["epochs"] == 6 and record["seed"] == 0 and record["train_examples"] == 96
    assert record["time"]["train_seconds"] > 0 and record["device"] == "cpu"
    assert record["data"]["hashes"] == {f"SST-2/{s}.tsv": sha256_file(glue / "SST-2" / f"{s}.tsv") for s in ("train", "dev")}
    assert record["options"]["lr"] == 3e-3 and record["resumed_at_steps"] == []
    on_disk = json.loads((out / "finetune.json").read_text())
    assert on_disk["metrics"] == record["metrics"]
    assert not (out / ".checkpoint").exists()

    from synprune.model.load import load_model

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    tm = load_model(out)
    assert tm.kind == "classifier" and tm.model.config.num_labels == 2
    assert tm.model.config._attn_implementation in ("sdpa", "eager")  # scans switch to eager for the maps


def test_resume_after_interruption_gives_the_same_weights(tmp_path: Path, tiny_base: Path, glue: Path) -> None:
    whole = ft(tmp_path / "whole", "sst2", tiny_base, OPTS, glue_dir=glue, checkpoint_every=5)

    class Killed(Exception):
        pass

    def kill_at_13(step: int, loss: float) -> None:
        if step == 13:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        ft(out, "sst2", tiny_base, OPTS, glue_dir=glue, checkpoint_every=5,
                   on_step=kill_at_13)
    state = torch.load(out / ".checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 12  # the last checkpoint before the kill (step 10, then the epoch end at 12)
    assert not (out / "finetune.json").exists()
    steps: list[int] = []
    record = ft(out, "sst2", tiny_base, OPTS, glue_dir=glue, checkpoint_every=5,
                        on_step=lambda s, loss: steps.append(s))
    assert steps[0] == 13 and steps[-1] == 24
    assert record["resumed_at_steps"] == [12]
    assert record["history"] == whole["history"]
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert record["metrics"] == whole["metrics"]


def test_different_seed_gives_different_weights(tmp_path: Path, tiny_base: Path, glue: Path) -> None:
    """Guards the resume test against passing trivially (e.g. if training changed nothing)."""
    ft(tmp_path / "a", "sst2", tiny_base, OPTS, glue_dir=glue)
    ft(tmp_path / "b", "sst2", tiny_base, F.FinetuneOptions(**{**OPTS.__dict__, "seed": 1}), glue_dir=glue)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])


def test_mismatched_checkpoint_is_refused_until_fresh(tmp_path: Path, tiny_base: Path, glue: Path) -> None:
    out = tmp_path / "m"

    def stop(step: int, loss: float) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ft(out, "sst2", tiny_base, OPTS, glue_dir=glue, checkpoint_every=2,
                   on_step=stop)
    other = F.FinetuneOptions(**{**OPTS.__dict__, "lr": 1e-3})
    with pytest.raises(SynpruneError, match=r"lr \(0\.003 there, 0\.001 now\).*--fresh"):
        ft(out, "sst2", tiny_base, other, glue_dir=glue)
    record = ft(out, "sst2", tiny_base, other, glue_dir=glue, fresh=True)
    assert record["resumed_at_steps"] == [] and record["options"]["lr"] == 1e-3
    # A finished folder: the same options return it untouched, other options are refused.
    again = ft(out, "sst2", tiny_base, other, glue_dir=glue)
    assert again["time"] == record["time"]
    with pytest.raises(SynpruneError, match="different options"):
        ft(out, "sst2", tiny_base, OPTS, glue_dir=glue)


def test_stsb_gets_a_regression_head(tmp_path: Path, tiny_base: Path, glue: Path) -> None:
    record = ft(tmp_path / "stsb", "stsb", tiny_base, OPTS, glue_dir=glue)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "stsb")
    assert config.num_labels == 1 and config.problem_type == "regression"
    assert set(record["metrics"]["dev"]) == {"spearman", "pearson"} and record["metric"] == "spearman"


def test_task_model_builds_once_then_reads_the_cache(tmp_path: Path, tiny_base: Path, glue: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SYNPRUNE_CACHE", str(tmp_path / "cache"))
    kw = dict(glue_dir=glue, progress=False, threads=1, epochs=1, lr=3e-3, batch_size=8, max_length=32)
    path = F.task_model("sst2", tiny_base, **kw)
    err = capsys.readouterr().err
    assert "fine-tuning it now" in err and "roughly" in err  # says that it builds, and a time estimate
    assert path.parent == tmp_path / "cache" / "task-models" and path.name.startswith("sst2-")
    assert json.loads((path / "finetune.json").read_text())["options"]["epochs"] == 1

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("a cached model was fine-tuned again")

    monkeypatch.setattr(F, "finetune", no_training)
    assert F.task_model("sst2", tiny_base, **kw) == path
    assert F.cached_model_dir("sst2", tiny_base, **{k: v for k, v in kw.items() if k not in ("progress", "threads")}) == path
    assert F.cached_model_dir("sst2", tiny_base, glue_dir=glue, epochs=2) != path


def test_cli_finetune_and_one_line_errors(tmp_path: Path, tiny_base: Path, glue: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from synprune.cli import main

    args = ["finetune", "--task", "sst2", "--model", str(tiny_base), "--glue-dir", str(glue), "--out",
            str(tmp_path / "cli"), "--epochs", "1", "--lr", "0.003", "--batch-size", "8", "--threads", "1", "--no-progress"]
    with pytest.raises(SystemExit) as ok:
        main(args)
    assert ok.value.code in (0, None)
    assert "sst2 accuracy" in capsys.readouterr().out
    assert (tmp_path / "cli" / "finetune.json").is_file()
    with pytest.raises(SystemExit) as bad:
        main(args[:-1] + ["--epochs", "2", "--no-progress"])
    assert bad.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--fresh" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as no_train:
        main(["finetune", "--task", "sst2", "--glue-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert no_train.value.code == 2


def test_no_train_split_is_a_clear_error(tmp_path: Path, tiny_base: Path) -> None:
    (tmp_path / "WNLI").mkdir()
    (tmp_path / "WNLI" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta .\tb .\t1\n")
    with pytest.raises(SynpruneError, match="no labelled train split"):
        ft(tmp_path / "o", "wnli", tiny_base, OPTS, glue_dir=tmp_path)


def test_default_options() -> None:
    assert F.default_options("sst2").train_size == 20000
    assert F.default_options("sst2", train_size=0).train_size is None
    assert F.default_options("cola", lr=None).lr == F.FinetuneOptions().lr
    with pytest.raises(SynpruneError, match="unknown"):
        F.default_options("cola", learning_rate=1.0)
    with pytest.raises(SynpruneError, match="--epochs"):
        F.default_options("cola", epochs=0)


def test_length_grouped_batches_cover_every_example_once() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(3, 60) for _ in range(1000)]
    batches = F.epoch_batches(lengths, 16, seed=0, epoch=0, group=10)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) == 16 for b in batches if len(b) != 1000 % 16)
    assert batches == F.epoch_batches(lengths, 16, seed=0, epoch=0, group=10)
    assert batches != F.epoch_batches(lengths, 16, seed=0, epoch=1, group=10)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches of 16 from 3..60 spread ~50 tokens


def test_a_users_non_empty_folder_is_not_fine_tuned_into(tmp_path: Path, tiny_base: Path, glue: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("{\"mine\": true}")
    with pytest.raises(SynpruneError, match="not empty.*--fresh"):
        ft(out, "sst2", tiny_base, OPTS, glue_dir=glue)
    assert (out / "config.json").read_text() == "{\"mine\": true}"
