"""CoNLL-U reading (multiword tokens, empty nodes, SpaceAfter=No, root, subtypes) and SAP on gold trees."""
import json

import pytest

from synprune.syntax.conllu import read_conllu
from synprune.errors import SynpruneError
from synprune.io import sha256_file
from synprune.run.prune import prune

from conftest import tiny_model

SAMPLE = """\
# sent_id = 1
# text = I don't like cats, honestly.
1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tlike\tlike\tVERB\tVB\t_\t0\troot\t_\t_
5\tcats\tcat\tNOUN\tNNS\t_\t4\tobj\t_\tSpaceAfter=No
6\t,\t,\tPUNCT\t,\t_\t7\tpunct\t_\t_
7\thonestly\thonestly\tADV\tRB\t_\t4\tadvmod\t_\tSpaceAfter=No
7.1\tlike\tlike\tVERB\tVB\t_\t_\t_\t4:conj\t_
8\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2 (no text line: rebuilt from the forms and SpaceAfter)
1\tDogs\tdog\tNOUN\tNNS\t_\t3\tnsubj:pass\t_\t_
2\twere\tbe\tAUX\tVBD\t_\t3\taux:pass\t_\t_
3\twalked\twalk\tVERB\tVBN\t_\t0\troot\t_\tSpaceAfter=No
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_
"""


@pytest.fixture
def conllu(tmp_path):
    path = tmp_path / "sample.conllu"
    path.write_text(SAMPLE)
    return path


def test_reads_words_spans_heads_and_universal_labels(conllu):
    tb = read_conllu(conllu)
    assert tb.texts == ["I don't like cats, honestly.", "Dogs were walked."]
    p = tb.parses[0]
    assert [tb.texts[0][s:e] for s, e in p.words] == ["I", "do", "n't", "like", "cats", ",", "honestly", "."]
    assert p.words[1:3] == ((2, 4), (4, 7))  # the multiword token "don't" split inside its surface
    assert p.heads == (3, 3, 3, 3, 3, 6, 3, 3)  # root points at itself; the empty node 7.1 is not a word
    assert p.deps == ("nsubj", "aux", "advmod", "ROOT", "obj", "punct", "advmod", "punct")
    q = tb.parses[1]
    assert [tb.texts[1][s:e] for s, e in q.words] == ["Dogs", "were", "walked", "."]
    assert q.heads == (2, 2, 2, 2) and q.deps == ("nsubj", "aux", "ROOT", "punct")
    assert read_conllu(conllu, subtypes=True).parses[1].deps == ("nsubj:pass", "aux:pass", "ROOT", "punct")
    assert tb.unplaced_words == 0 and tb.sha256 == sha256_file(conllu)


def test_multiword_parts_that_do_not_spell_the_surface_get_empty_spans(tmp_path):
    path = tmp_path / "gonna.conllu"
    path.write_text("# text = we gonna win\n1\twe\twe\t_\t_\t_\t4\tnsubj\t_\t_\n2-3\tgonna\t_\t_\t_\t_\t_\t_\t_\t_\n"
                    "2\tgoing\tgo\t_\t_\t_\t4\taux\t_\t_\n3\tto\tto\t_\t_\t_\t4\tmark\t_\t_\n4\twin\twin\t_\t_\t_\t0\troot\t_\t_\n")
    tb = read_conllu(path)
    assert tb.unplaced_words == 1
    going, to = tb.parses[0].words[1:3]
    assert going[0] == going[1]  # empty: no sub-token maps to it, its arcs are dropped
    assert tb.texts[0][to[0]:to[1]] == "gonna" and tb.texts[0][slice(*tb.parses[0].words[3])] == "win"


@pytest.mark.parametrize("text, message", [
    ("1\tonly\tthree\n", "columns"),
    ("# text = a b\n1\ta\ta\t_\t_\t_\t5\tdep\t_\t_\n2\tb\tb\t_\t_\t_\t0\troot\t_\t_\n", "outside the sentence"),
    ("# just a comment\n", "no sentences"),
])
def test_bad_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.conllu"
    path.write_text(text)
    with pytest.raises(SynpruneError, match=message):
        read_conllu(path)
    with pytest.raises(SynpruneError, match="not found"):
        read_conllu(tmp_path / "missing.conllu")


def test_sample_is_seeded_and_keeps_file_order(conllu):
    tb = read_conllu(conllu)
    assert tb.sample(1, seed=3).texts == tb.sample(1, seed=3).texts
    assert {tuple(tb.sample(1, seed=s).texts) for s in range(20)} == {(t,) for t in tb.texts}
    assert tb.sample(5).texts == tb.texts


def test_prune_calibrates_on_gold_trees_and_records_them(conllu, glue_dir, tmp_path):
    res = prune(tiny_model("bert"), task="stsb", sparsity=0.25, glue_dir=glue_dir, parses_file=conllu,
                out=tmp_path / "run")
    data = json.loads((tmp_path / "run" / "result.json").read_text())
    info = data["details"]["parse_cache"]
    assert info["sha256"] == sha256_file(conllu) and info["source"] == str(conllu) and info["sentences"] == 2
    labels = {r["label"] for r in data["dependency_ranking"]}
    assert labels == {"nsubj", "aux", "advmod", "obj"}  # UD labels of the file, not spaCy's (dobj, neg, ...)
    assert data["split"]["calibration"] == 2 and "gold trees" in data["split"]["note"]
    assert data["versions"]["parser"] == "gold:sample.conllu"
    assert len(res.pruned_heads) == 3 and data["metric"]["split"] == "dev"  # evaluation stays on the task


def test_prune_with_gold_trees_refuses_cf(conllu, glue_dir):
    with pytest.raises(SynpruneError, match="--cf"):
        prune(tiny_model("bert"), task="stsb", glue_dir=glue_dir, parses_file=conllu, cf=True)
