"""`--dependencies-from`: SAP's dependency ranking from another dataset, attention from the run's own data."""
import json

import numpy as np
import pytest
import torch

from synprune.calibrate.context import Calibration
from synprune.config import PruneConfig
from synprune.errors import SynpruneError
from synprune.run.prune import prune
from synprune.run.sweep import sweep
from synprune.data.tasks import load_task, make_split

from conftest import STSB_ROWS, tiny_model

CONLLU_DET_ONLY = """# text = The dog barked.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tdog\tdog\tNOUN\tNN\t_\t3\tdet\t_\t_
3\tbarked\tbark\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# text = A cat slept.
1\tA\ta\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tdet\t_\t_
3\tslept\tsleep\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_
"""


def test_the_runs_own_texts_as_source_reproduce_the_default(glue_dir, tmp_path):
    txt = tmp_path / "same.txt"
    txt.write_text("\n".join(t for row in STSB_ROWS for t in row[:2]) + "\n")
    tm = tiny_model("bert")
    own = prune(tm, task="stsb", sparsity=0.5, glue_dir=glue_dir, calib_size=16)  # all 8 pairs = 16 sentences
    other = prune(tm, task="stsb", sparsity=0.5, glue_dir=glue_dir, calib_size=16, dependencies_from=str(txt), out=tmp_path / "o")
    np.testing.assert_allclose(other.head_scores, own.head_scores)
    assert other.pruned_heads == own.pruned_heads
    data = json.loads((tmp_path / "o" / "result.json").read_text())
    assert data["config"]["dependencies_from"] == str(txt)
    assert data["details"]["dependencies_from"]["sentences"] == 16


def test_a_glue_task_source_is_its_seeded_calibration_sample(glue_dir):
    tm = tiny_model("bert")
    own = prune(tm, task="stsb", sparsity=0.5, glue_dir=glue_dir, calib_size=5, seed=3)
    named = prune(tm, task="stsb", sparsity=0.5, glue_dir=glue_dir, calib_size=5, seed=3, dependencies_from="sts-b")
    np.testing.assert_allclose(named.head_scores, own.head_scores)
    assert named.details["dependencies_from"]["examples"] == 5


def test_labels_the_source_never_saw_carry_no_weight(glue_dir, tmp_path):
    """A source with only `det` arcs (4 of them, k=1): the penalty counts exactly the calibration's det arcs
    whose attention falls below tau, whatever the other arcs do."""
    bank = tmp_path / "det.conllu"
    bank.write_text(CONLLU_DET_ONLY)
    tm = tiny_model("bert")
    cfg = PruneConfig(k=1, calib_size=8, dependencies_from=str(bank))
    res = prune(tm, task="stsb", sparsity=0.5, glue_dir=glue_dir, config=cfg)
    assert [(r["label"], r["count"], r["weight"]) for r in res.details["dependency_ranking"]] == [("det", 4, 1)]
    assert res.details["dependencies_from"]["parser"] == "gold:det.conllu"

    # independent count on the run's own calibration data: det arcs whose dep->head attention is below tau
    ctx = Calibration(tm, make_split(load_task("stsb", glue_dir), 8, 0).calibration, cfg)
    tau = ctx.threshold("global-mean")

    class DetMisses:
        count = torch.zeros(tm.grid, dtype=torch.float64)

        def update(self, batch):
            det = torch.tensor([label == "det" for label in own_labels])[batch.arcs.label]
            a = batch.arc_attention("dep2head")[det]
            self.count += (a < tau.float()).double().sum(0)

    own_ranking = ctx.dependency_ranking(1, False)
    own_labels = own_ranking.labels
    assert "det" in own_labels and len(own_labels) > 1  # the calibration data has other labels too
    misses = ctx.run_scan([DetMisses()])[0]
    np.testing.assert_allclose(res.head_scores, misses.count.numpy())


def test_sweep_grids_the_source_for_sap_only(glue_dir, tmp_path):
    bank = tmp_path / "det.conllu"
    bank.write_text(CONLLU_DET_ONLY)
    res = sweep(tiny_model("bert"), task="stsb", methods=["sap", "random"], sparsities=[0.5], seeds=[0, 1],
                grid={"dependencies_from": ["none", "stsb", str(bank)]}, glue_dir=glue_dir, out=None, calib_size=6)
    sap_rows = [r for r in res.rows if r["method"] == "sap"]
    assert sorted(str(r["dependencies_from"]) for r in sap_rows) == sorted(["None", "stsb", str(bank)])
    assert len([r for r in res.rows if r["method"] == "random"]) == 2
    by_source = {str(r["dependencies_from"]): res.results[r["run"].split("/", 1)[1]] for r in sap_rows}
    np.testing.assert_allclose(by_source["None"].head_scores, by_source["stsb"].head_scores)
    assert not np.allclose(by_source["None"].head_scores, by_source[str(bank)].head_scores)


@pytest.mark.parametrize("spec, needle", [("nosuch", "GLUE task"), ("missing.conllu", "not found")])
def test_bad_source_fails_before_any_work(spec, needle, glue_dir):
    with pytest.raises(SynpruneError, match=needle):
        PruneConfig(dependencies_from=spec).validate()


def test_cli_refuses_a_bad_source_in_one_line(capsys, tmp_path):
    from synprune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["prune", "--dependencies-from", "nosuch.csv", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: --dependencies-from")
    assert not (tmp_path / "o").exists()
