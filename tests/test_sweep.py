"""sweep(): many methods, budgets and seeds on one calibration context; results files, plots and report.html.

Runs on a tiny random BERT with real spaCy parses of a tiny STS-B folder. Besides SAP, a seeded `fake-random`
method is registered here (the real baselines live on other branches).
"""
import base64
import csv
import json
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import synprune.calibrate.context
import synprune.cli
import synprune.run.prune
from synprune import methods as M
from synprune.errors import SynpruneError
from synprune.report.table import summarize
from synprune.config import PruneConfig
from synprune.run.sweep import RESULT_COLUMNS, parse_grid, plan_sweep, sweep

from conftest import tiny_model, write_stsb

FAKE = "fake-random"


def fake_random(ctx, cfg) -> M.HeadScores:
    fake_random.calls.append(cfg.seed)
    L, H = ctx.tm.grid
    rank = np.random.default_rng(cfg.seed).permutation(L * H).reshape(L, H).astype(float)
    return M.HeadScores(rank, M.order_by(rank, highest_first=False))


class Counter:
    """Wrap a function and count its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _register_fake(mp: pytest.MonkeyPatch) -> None:
    M.available()  # load the real methods first, so the fake is removed cleanly afterwards
    fake_random.calls = []
    mp.setitem(M.METHODS, FAKE, fake_random)
    mp.setitem(M.USES, FAKE, frozenset({"seed"}))


def _run_counted(mp, tmp, **kwargs):
    """A sweep with parse, attention scan and evaluation calls counted."""
    _register_fake(mp)
    mp.setenv("SYNPRUNE_CACHE", str(tmp / "cache"))
    counters = {name: Counter(getattr(mod, name)) for mod, name in
                ((synprune.calibrate.context, "parse_texts"), (synprune.calibrate.context, "scan"), (synprune.run.prune, "evaluate_heads"))}
    mp.setattr(synprune.calibrate.context, "parse_texts", counters["parse_texts"])
    mp.setattr(synprune.calibrate.context, "scan", counters["scan"])
    mp.setattr(synprune.run.prune, "evaluate_heads", counters["evaluate_heads"])
    result = sweep(tiny_model("bert"), task="stsb", glue_dir=write_stsb(tmp / "glue"), out=tmp / "sweep", calib_size=6,
                   **kwargs)
    return result, {k: c.calls for k, c in counters.items()}, list(fake_random.calls)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        result, calls, fake_calls = _run_counted(mp, tmp, methods=["sap", FAKE], sparsities=[0.75, 0.25, 0.5], seeds=[0, 1, 2])
    return result, calls, fake_calls


@pytest.fixture(scope="module")
def gridded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as mp:
        return _run_counted(mp, tmp, methods=["sap", FAKE], sparsities=[0.5], seeds=[0, 1], grid={"k": [1, 3]})


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_row_per_method_sparsity_and_seed(swept):
    result, _, _ = swept
    got = sorted((r["method"], r["sparsity"], r["seed"]) for r in result.rows)
    want = sorted([("sap", s, 0) for s in (0.25, 0.5, 0.75)] + [(FAKE, s, seed) for s in (0.25, 0.5, 0.75) for seed in (0, 1, 2)])
    assert got == want
    assert {r["n_pruned"] for r in result.rows if r["sparsity"] == 0.5} == {6}  # round(0.5 * 12) of a 3x4 model
    assert len({r["dense"] for r in result.rows}) == 1


def test_parses_attention_scores_and_dense_evaluation_are_shared(swept):
    result, calls, fake_calls = swept
    assert calls["parse_texts"] == 1
    assert calls["scan"] == 2  # SAP's threshold pass and penalty pass, not once per sparsity
    assert sorted(fake_calls) == [0, 1, 2]  # scored once per seed, not per sparsity
    assert calls["evaluate_heads"] == 1 + len(result.rows)  # dense once, then each pruned model


def test_results_files_agree_with_each_run(swept):
    result, _, _ = swept
    out = result.out
    rows = _csv(out / "results.csv")
    assert tuple(rows[0]) == RESULT_COLUMNS + ("run",)
    assert len(rows) == 12
    for row in rows:
        run = json.loads((out / row["run"] / "result.json").read_text())
        assert float(row["pruned"]) == pytest.approx(run["metric"]["pruned"])
        assert int(row["n_pruned"]) == len(run["pruned_heads"]) and run["method"] == row["method"]
        assert int(row["seed"]) == run["seed"] and float(row["sparsity"]) == run["sparsity"]
    seeds = {tuple(map(tuple, json.loads((out / r["run"] / "result.json").read_text())["pruned_heads"]))
             for r in rows if r["method"] == FAKE and r["sparsity"] == "0.5"}
    assert len(seeds) > 1  # different seeds prune different heads
    summary = json.loads((out / "results.json").read_text())
    # results.json's rows say what results.csv says (both written from the runs, read back independently)
    assert [(r["method"], r["sparsity"], r["seed"], r["n_pruned"], r["run"]) for r in summary["rows"]] == \
        [(r["method"], float(r["sparsity"]), int(r["seed"]), int(r["n_pruned"]), r["run"]) for r in rows]
    assert [r["pruned"] for r in summary["rows"]] == pytest.approx([float(r["pruned"]) for r in rows])
    assert summary["sweep"]["config"]["calib_size"] == 6 and summary["sweep"]["seeded_methods"] == [FAKE]
    assert {"model", "task", "split", "versions", "timings"} <= set(summary)
    assert "data_sha256" in summary["task"] and summary["split"]["calibration"] == 6


def test_report_embeds_every_plot_and_nothing_external(swept):
    result, _, _ = swept
    out = result.out
    html = (out / "report.html").read_text()
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.stem for p in pngs} == {"metric_vs_sparsity", "head_scores", "dependency_ranking"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert base64.b64encode(p.read_bytes()).decode() in html, p.name
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", html)
    assert "http:" not in html and "https:" not in html and "url(" not in html and "@import" not in html
    assert "<style>" in html and f"{FAKE}" in html and "calib_size" in html


def test_report_table_has_dense_first_bold_best_and_seed_spread(swept):
    result, _, _ = swept
    html = (result.out / "report.html").read_text()
    table = html[html.index("<table>"):html.index("</table>")]
    body = re.findall(r"<tr[^>]*>(.*?)</tr>", table)[1:]
    assert "dense" in body[0]
    fake = [float(r["pruned"]) for r in result.rows if r["method"] == FAKE and r["sparsity"] == 0.25]
    assert f"{np.mean(fake):.2f} ± {np.std(fake, ddof=1):.2f} (n=3)" in table
    sap = next(r["pruned"] for r in result.rows if r["method"] == "sap" and r["sparsity"] == 0.25)
    best_is_sap = sap >= np.mean(fake)
    assert (f'<td class="num best">{sap:.2f}</td>' in table) == best_is_sap


def test_summary_table_shows_a_baseline_beating_sap_plainly():
    rows = [dict(method=m, cf=cf, sparsity=s, seed=seed, metric_name="spearman", dense=80.0, pruned=v, n_pruned=n)
            for m, cf, s, seed, v, n in [("sap", False, 0.5, 0, 70.0, 6), ("magnitude", False, 0.5, 0, 75.0, 6),
                                          ("sap", True, 0.5, 0, 74.0, 6), ("random", False, 0.5, 0, 60.0, 6),
                                          ("random", False, 0.5, 1, 64.0, 6), ("sap", False, 0.25, 0, 78.0, 3)]]
    t = summarize(rows)
    cells = {label: cs for label, cs in t.rows}
    assert t.sparsities == [0.25, 0.5] and t.heads == ["3", "6"]
    assert cells["magnitude"][1].best and not cells["sap"][1].best and not cells["sap+cf"][1].best
    assert cells["magnitude"][0] is None and cells["sap"][0].best
    assert cells["random"][1].text() == f"62.00 ± {np.std([60, 64], ddof=1):.2f} (n=2)"
    assert t.best() == [(0.25, ["sap"], 78.0), (0.5, ["magnitude"], 75.0)]


def test_grid_multiplies_only_the_runs_of_methods_that_use_it(gridded):
    result, calls, fake_calls = gridded
    rows = _csv(result.out / "results.csv")
    assert list(rows[0]) == list(RESULT_COLUMNS) + ["variant", "k", "run"]
    sap = sorted((r["variant"], r["k"], r["seed"]) for r in rows if r["method"] == "sap")
    assert sap == [("k=1", "1", "0"), ("k=3", "3", "0")]
    fake = sorted((r["variant"], r["k"], r["seed"]) for r in rows if r["method"] == FAKE)
    assert fake == [("", "", "0"), ("", "", "1")]
    assert calls["scan"] == 3  # one threshold pass, one penalty pass per k
    k_of_run = {json.loads((result.out / r["run"] / "result.json").read_text())["config"]["k"] for r in rows if r["method"] == "sap"}
    assert k_of_run == {1, 3}
    assert (result.out / "plots" / "grid_k.png").is_file()
    assert "Effect of k" in (result.out / "report.html").read_text()


def test_plan_checks_everything_before_work(monkeypatch):
    base = PruneConfig()
    with pytest.raises(SynpruneError, match=r"unknown method\(s\) nope.*available: .*sap"):
        plan_sweep(["sap", "nope"], [0.5], [0], {}, base)
    _register_fake(monkeypatch)
    with pytest.raises(SynpruneError, match="no requested method depends on k"):
        plan_sweep([FAKE], [0.5], [0], {"k": [1, 2]}, base)
    with pytest.raises(SynpruneError, match="'x' is not a valid int"):
        plan_sweep(["sap"], [0.5], [0], parse_grid(["k=1,x"]), base)
    with pytest.raises(SynpruneError, match="use --sparsities"):
        plan_sweep(["sap"], [0.5], [0], parse_grid(["sparsity=0.1,0.2"]), base)
    with pytest.raises(SynpruneError, match="--threshold"):
        plan_sweep(["sap"], [0.5], [0], parse_grid(["threshold=global-mean,bogus"]), base)
    with pytest.raises(SynpruneError, match="sparsity 1.0"):
        plan_sweep(["sap"], [0.5, 1.0], [0], {}, base)
    monkeypatch.setitem(sys.modules, "synprune.cf.filter", None)
    with pytest.raises(SynpruneError, match=r"sap\+cf: Candidate Filtering"):
        plan_sweep(["sap+cf"], [0.5], [0], {}, base)
    plan = plan_sweep(["sap", FAKE], [0.5, 0.25], [3, 4], parse_grid(["threshold=head-mean,layer-mean", "layer_fraction=1,0.5"]), base)
    sap = [r for r in plan.runs if r.spec.name == "sap"]
    fake = [r for r in plan.runs if r.spec.name == FAKE]
    assert len(sap) == 2 * 2 * 2 and {r.seed for r in sap} == {0}
    assert len(fake) == 2 * 2 * 2 and {r.seed for r in fake} == {3, 4}  # layer_fraction changes every selection
    assert all(dict(r.variant).keys() == {"layer_fraction"} for r in fake)
    plan = plan_sweep(["sap", FAKE], [0.5], [3], parse_grid(["repair=none,bias"]), base.replace(units="heads,neurons"))
    assert sorted(r.variant for r in plan.runs if r.spec.name == FAKE) == [(("repair", "bias"), ), (("repair", "none"), )]
    assert len({r.name for r in plan.runs}) == len(plan.runs)


def test_unknown_method_fails_before_loading_anything(tmp_path, monkeypatch):
    monkeypatch.setattr("synprune.calibrate.context.load_task", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(SynpruneError, match="available: "):
        sweep(tiny_model("bert"), task="stsb", methods=["sap", "nope"], out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


class Stop(Exception):
    pass


def _capture(monkeypatch, target: str) -> dict:
    seen: dict = {}

    def record(*args, **kwargs):
        seen.update(kwargs, args=args)
        raise Stop

    monkeypatch.setattr(target, record)
    return seen


def test_cli_sweep_parses_lists_grids_and_shared_options(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "synprune.run.sweep.sweep")
    with pytest.raises(Stop):
        synprune.cli.main(["sweep", "--methods", "sap,random+cf", "--sparsities", "0.1,0.3", "--seeds", "3,4",
                           "--grid", "k=1,2", "--grid", "threshold=head-mean,layer-mean", "--k", "7", "--calib-size", "10",
                           "--tolerance", "0.9", "--keep-punct", "--units", "heads,neurons", "--repair", "bias",
                           "--neuron-score", "magnitude", "--out", str(tmp_path), "-q"])
    assert seen["methods"] == ["sap", "random+cf"] and seen["sparsities"] == [0.1, 0.3] and seen["seeds"] == [3, 4]
    assert seen["grid"] == {"k": ["1", "2"], "threshold": ["head-mean", "layer-mean"]}
    assert (seen["k"], seen["calib_size"], seen["tolerance"], seen["keep_punct"]) == (7, 10, 0.9, True)
    assert (seen["units"], seen["repair"], seen["neuron_score"]) == ("heads,neurons", "bias", "magnitude")
    assert seen["task"] == "stsb" and seen["out"] == tmp_path and seen["args"] == (None,)


def test_cli_prune_still_takes_the_shared_options(monkeypatch):
    seen = _capture(monkeypatch, "synprune.run.prune.prune")
    with pytest.raises(Stop):
        synprune.cli.main(["prune", "--sparsity", "0.3", "--k", "3", "--threshold", "head-mean", "--calib-size", "9",
                           "--text-col", "t", "-q"])
    assert (seen["sparsity"], seen["k"], seen["threshold"], seen["calib_size"], seen["text_col"]) == (0.3, 3, "head-mean", 9, "t")
    # no --method: the command leaves it to prune(), which runs the recommended recipe (tests/test_recipes.py)
    assert seen["method"] is None and seen["seed"] == 0 and seen["parser"] == "en_core_web_sm"


@pytest.mark.parametrize("argv, message", [
    (["--methods", "sap,nope"], "available: "),
    (["--sparsities", "0.25,half"], "'half' is not a valid float"),
    (["--methods", "sap", "--grid", "k"], "KEY=V1,V2"),
])
def test_cli_reports_bad_input_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        synprune.cli.main(["sweep", *argv, "-q"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and "Traceback" not in err


def test_other_glue_tasks_need_a_fine_tuned_model(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "synprune.train.finetune", None)
    with pytest.raises(SynpruneError, match="pass --model a classifier fine-tuned on sst2"):
        sweep(task="sst2", methods=["sap"], out=tmp_path)
    asked = []

    def task_model(task, glue_dir=None):
        asked.append((task, glue_dir))
        raise Stop

    fake = types.ModuleType("synprune.train.finetune")
    fake.task_model = task_model
    monkeypatch.setitem(sys.modules, "synprune.train.finetune", fake)
    with pytest.raises(Stop):
        sweep(task="sst2", methods=["sap"], out=tmp_path, glue_dir=tmp_path)
    assert asked == [("sst2", tmp_path)]


# scripts/setup.sh installs chromium-headless-shell where it is missing (CI included); skipped only where no
# browser could be installed
BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-headless-shell", "google-chrome"))), None)


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium could be installed here (see scripts/setup.sh)")
def test_report_renders_in_headless_chromium(swept, tmp_path):
    shot = tmp_path / "report.png"
    subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1400,3000", (swept[0].out / "report.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    from matplotlib.image import imread

    img = (imread(shot)[..., :3] * 255).astype(int)
    assert img.shape[:2] == (3000, 1400)
    orange = np.abs(img - [255, 127, 14]).sum(-1) < 30  # the top-k bars of the dependency ranking
    red = np.abs(img - [255, 0, 0]).sum(-1) < 30  # the pruned-head crosses of the heat map
    assert orange.sum() > 2000 and red.sum() > 50, "the embedded plots did not render"


def test_stages_do_not_overlap_and_the_breakdown_adds_up(monkeypatch):
    """Nested stages count only as themselves (a fake clock: each call advances it one second)."""
    import itertools

    import synprune.calibrate.context as C
    from synprune.run.sweep import stage_breakdown

    clock = itertools.count()
    monkeypatch.setattr(C.time, "perf_counter", lambda: float(next(clock)))
    ctx = C.Calibration(types.SimpleNamespace(), [], PruneConfig())
    with ctx.timed("score"):  # reads 0
        with ctx.timed("attention"):  # 1 .. 2
            pass
        with ctx.timed("parse"):  # 3 .. 4
            pass
    with ctx.timed("attention"):  # 6 .. 7   (score closed at 5)
        pass
    assert ctx.timings == {"attention": 2.0, "parse": 1.0, "score": 3.0}
    text = stage_breakdown(ctx.timings, 10.0)
    lines = text.splitlines()
    assert lines[0] == "sweep stages (10.0 s in all):"
    assert [line.split()[0] for line in lines[1:]] == ["score", "attention", "parse", "other"]
    assert lines[-1].split()[1:] == ["4.0", "s", "40.0%"]


def test_sweep_reports_where_its_time_went(swept):
    result = swept[0]
    lines = result.breakdown.splitlines()
    total = float(lines[0].split("(")[1].split(" s")[0])
    stages = {line.split()[0]: float(line.split()[-3]) for line in lines[1:]}
    assert {"parse", "attention", "evaluate_dense", "evaluate_pruned", "write", "other"} <= set(stages)
    assert sum(stages.values()) == pytest.approx(total, abs=0.1 * len(stages))  # the stages do not overlap


def _small_sweep(tmp, **kwargs):
    return sweep(tiny_model("bert"), task="stsb", glue_dir=write_stsb(tmp / "glue"), out=tmp / "sweep", calib_size=6,
                 methods=["magnitude", FAKE], sparsities=[0.25, 0.5], seeds=[0, 1], report=False, **kwargs)


def test_interrupted_sweep_resumes_with_the_finished_runs(monkeypatch, tmp_path):
    _register_fake(monkeypatch)
    real_run = synprune.run.prune.choose_heads
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[1].method)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third run
        return real_run(*args, **kwargs)

    monkeypatch.setattr(synprune.run.prune, "choose_heads", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _small_sweep(tmp_path)
    finished = sorted(p.parent.name for p in (tmp_path / "sweep" / "runs").glob("*/result.json"))
    assert len(finished) == 2
    calls.clear()
    monkeypatch.setattr(synprune.run.prune, "choose_heads", Counter(real_run))
    resumed = _small_sweep(tmp_path)
    assert synprune.run.prune.choose_heads.calls == len(resumed.rows) - 2 == 4  # 2 magnitude + 4 fake runs, 2 reused
    assert resumed.summary["reused_runs"] == finished
    fresh = _small_sweep(tmp_path / "fresh")
    assert [(r["method"], r["sparsity"], r["seed"], r["pruned"], r["n_pruned"]) for r in resumed.rows] == \
        [(r["method"], r["sparsity"], r["seed"], r["pruned"], r["n_pruned"]) for r in fresh.rows]
    assert len(_csv(tmp_path / "sweep" / "results.csv")) == 6


def test_sweep_with_other_options_refuses_to_overwrite_run_folders(monkeypatch, tmp_path):
    _register_fake(monkeypatch)
    _small_sweep(tmp_path)
    before = (tmp_path / "sweep" / "runs" / "magnitude_s0.25_seed0" / "result.json").read_text()
    with pytest.raises(SynpruneError, match="other calib_size"):
        sweep(tiny_model("bert"), task="stsb", glue_dir=tmp_path / "glue", out=tmp_path / "sweep", calib_size=4,
              methods=["magnitude"], sparsities=[0.25], report=False)
    assert (tmp_path / "sweep" / "runs" / "magnitude_s0.25_seed0" / "result.json").read_text() == before
    other = sweep(tiny_model("bert"), task="stsb", glue_dir=tmp_path / "glue", out=tmp_path / "sweep", calib_size=4,
                  methods=["magnitude"], sparsities=[0.25], report=False, overwrite=True)
    assert other.results["magnitude_s0.25_seed0"].split["calibration"] == 4


def test_sweep_refuses_a_users_non_empty_folder(tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SynpruneError, match="--overwrite"):
        sweep(tiny_model("bert"), task="stsb", glue_dir=write_stsb(tmp_path / "glue"), out=out, methods=["magnitude"],
              sparsities=[0.25], calib_size=4, report=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_sweep_on_unlabeled_text_reports_the_label_free_score(tmp_path):
    f = tmp_path / "texts.jsonl"
    texts = ["A cat sat on the mat.", "Dogs run fast in the park.", "The sun is warm today.", "Birds sing at dawn.",
             "Rain fell all night long.", "She reads a book by the window."]
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    result = sweep(tiny_model("bert"), task=str(f), text_col="text", out=tmp_path / "s", calib_size=3,
                   methods=["sap", "magnitude", "output-fisher"], sparsities=[0.5], seeds=[0])
    assert {r["metric_name"] for r in result.rows} == {"cosine_to_dense"}
    assert all(r["dense"] == pytest.approx(100.0) and r["pruned"] < 100.0 for r in result.rows)
    assert (tmp_path / "s" / "report.html").is_file()
    with pytest.raises(SynpruneError, match="no labels"):
        sweep(tiny_model("bert"), task=str(f), text_col="text", out=tmp_path / "s2", methods=["sap+cf"], sparsities=[0.5])


def test_sweep_prunes_neurons_and_grids_the_repair(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNPRUNE_CACHE", str(tmp_path / "cache"))
    result = sweep(tiny_model("bert"), task="stsb", glue_dir=write_stsb(tmp_path / "glue"), out=tmp_path / "sweep",
                   calib_size=6, methods=["magnitude"], sparsities=[0.5], grid={"repair": ["none", "bias"]},
                   units="heads,neurons", report=False)
    runs = {r["variant"]: json.loads((result.out / r["run"] / "result.json").read_text()) for r in result.rows}
    assert set(runs) == {"repair=none", "repair=bias"}
    for variant, run in runs.items():
        assert len(run["pruned_neurons"]) == round(0.5 * run["n_neurons"])
        assert (run.get("repair") or {}).get("kind", "none") == variant.split("=")[1]
    assert runs["repair=none"]["pruned_neurons"] == runs["repair=bias"]["pruned_neurons"]
