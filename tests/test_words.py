"""What a new user reads first says what synprune does now: every command's --help, `synprune methods`, the report's
subtitle, and the docs' code (every `synprune ...` line names a real command and real options; the blocks marked
`<!-- docs-test -->` run)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

import synprune
from synprune import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
# What synprune once was and is no more: attention heads only.
STALE = re.compile(r"(prune|pruning) (transformer )?attention heads( of MODEL)? (without|on TASK)", re.I)


def _commands() -> dict:
    cli._load_commands()
    return typer.main.get_command(cli.app).commands


def _help(capsys, *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--help"])
    assert exc.value.code in (0, None), args
    return " ".join(capsys.readouterr().out.split())


def test_every_command_has_a_current_help(capsys):
    commands = _commands()
    assert {"prune", "sweep", "export", "methods", "explain"} <= set(commands)
    for name, command in commands.items():
        first = (command.help or "").strip().splitlines()[0]
        assert first and not STALE.search(first), (name, first)
        text = _help(capsys, name)
        assert " ".join(first.split()) in text and not STALE.search(text), (name, text[:300])
    root = _help(capsys)
    for words in ("neurons", "key/value groups", "decoder", "smaller model"):
        assert words in root and words in synprune.__doc__.replace("\n", " "), words
    assert not STALE.search(root) and "neurons" in _help(capsys, "prune")


def test_methods_about_column_holds_whole_sentences():
    from synprune.commands.methods import _first_sentence, method_rows

    for row in method_rows():
        about = row["about"]
        assert about.endswith((".", ")")) and about.count("(") == about.count(")"), row
        assert not about.endswith(("et al.", "e.g.", "i.e.")), row
    doc = 'Kwon et al. 2022\'s recipe (He et al. 2024, "A? B."). Second sentence.'
    assert _first_sentence(doc) == 'Kwon et al. 2022\'s recipe (He et al. 2024, "A? B.").'


def test_report_subtitle_is_in_words():
    from synprune.report.html import split_words

    split = {"calibration": 512, "evaluation_dev": 1500, "calibration_items": 40, "calibration_rows_cut": 0,
             "evaluation_dev_rows_cut": 0, "evaluation_test": 9, "evaluation_test_rows_cut": 3, "note": "..."}
    evaluation, calibration = split_words(split)
    assert evaluation == "1,500 dev examples, 9 test examples (3 cut to --max-length)"
    assert calibration == "512 examples"
    assert "rows_cut" not in evaluation + calibration


def _blocks(page: Path):
    """(language, code, marked) for each fenced block; marked: `<!-- docs-test -->` on the line before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            marked = i > 0 and lines[i - 1].strip() == "<!-- docs-test -->"
            yield fence.group(1), "\n".join(lines[i + 1:end]), marked
            i = end
        i += 1


def _synprune_lines(page: Path):
    """Every `synprune COMMAND ...` in a page: shell lines in code blocks (continuations joined) and inline code."""
    text = page.read_text(encoding="utf-8")
    for lang, code, _ in _blocks(page):
        if lang in ("bash", "sh", "shell", ""):
            for line in code.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("synprune "):
                    yield line
    for span in re.findall(r"`(synprune [a-z][^`]*)`", text):
        yield span


def _docs_commands():
    return [pytest.param(page, line, id=f"{page.relative_to(ROOT)}:{line[:40]}") for page in PAGES if page.is_file()
            for line in _synprune_lines(page)]


@pytest.mark.parametrize("page,line", _docs_commands())
def test_docs_name_real_commands_and_options(page, line):
    commands = _commands()
    words = shlex.split(line, comments=True)
    assert len(words) >= 2 and words[1] in commands, f"{page.name}: {line!r} names no synprune command"
    known = {o for p in commands[words[1]].params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    unknown = [w.split("=")[0] for w in words[2:] if w.startswith("--") and w.split("=")[0] not in known]
    assert not unknown, f"{page.name}: {line!r} uses options `synprune {words[1]}` does not have: {unknown}"


@pytest.mark.parametrize("page,line", [p for p in _docs_commands()
                                       if p.values[1].split("#")[0].split() in (["synprune", "methods"],)
                                       or p.values[1].split("#")[0].rstrip().endswith("--help")])
def test_cheap_docs_commands_run(page, line, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(shlex.split(line, comments=True)[1:])
    assert exc.value.code in (0, None), capsys.readouterr()


@pytest.fixture
def pruned_model(tmp_path, monkeypatch):
    """`pruned-model` in the working directory, as the docs name it: a tiny BERT with a whole attention block gone."""
    from conftest import tiny_model
    from synprune.export.checkpoint import export_pruned

    tm = tiny_model("bert")
    export_pruned(tm.model, tm.tokenizer, [(0, 1), (1, 0), (1, 1), (1, 2), (1, 3)], tmp_path / "pruned-model")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "pruned-model"


@pytest.mark.parametrize("page", [p for p in PAGES if p.is_file() and any(m for _, _, m in _blocks(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_marked_docs_python_blocks_run(page, pruned_model):
    """The marked blocks of a page run in order in one namespace (a later block uses an earlier one's names)."""
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for lang, code, marked in _blocks(page):
        if marked and lang == "python":
            exec(compile(code, f"{page.name} block", "exec"), namespace)
            ran += 1
    assert ran
    if page.name == "export.md":  # the plain-transformers recipe builds the model synprune.load_pruned builds
        import torch

        reference, _ = synprune.load_pruned(pruned_model)
        batch = namespace["tokenizer"](["a short probe"], return_tensors="pt")
        with torch.no_grad():
            got = namespace["model"](**batch).last_hidden_state
            want = reference(**batch).last_hidden_state
        assert torch.allclose(got, want, atol=1e-5)


# Claims the docs once made that are no longer true (each was fixed once; none may come back).
OUTDATED_CLAIMS = [r"SentenceTransformer\(\"[^\"]*\"\)` does not work", r"Feed-forward blocks and LayerNorms stay",
                   r"prunes? (only )?attention heads without retraining"]


@pytest.mark.parametrize("page", [p for p in PAGES if p.is_file()], ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_make_no_outdated_claims(page):
    text = " ".join(page.read_text(encoding="utf-8").split())
    for claim in OUTDATED_CLAIMS:
        assert not re.search(claim, text, re.I), (page.name, claim)
