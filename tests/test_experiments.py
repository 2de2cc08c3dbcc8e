"""Experiment grids: configs expand to cells, bad cells fail before any compute, a grid resumes (finished cells
skipped, failed ones rerun), and its report has the expected panels and an HTML page that embeds them."""
import json
from pathlib import Path

import pytest

from editharm import grid, runs
from editharm.errors import ConfigError, EditharmError
from editharm.report import collect, document, figures
from tests.conftest import client, read_artifact


def test_every_experiment_config_expands():
    names = grid.experiment_names()
    assert {"smoke", "gu2024-sequential", "gu2024-batch", "gu2024-batch-sequential", "gu2024-rect"} <= set(names)
    for name in names:
        spec = grid.load(name)
        assert grid.cells(spec), name


def test_cells_are_the_product_of_the_axes_in_order():
    spec = grid.load("gu2024-batch")
    cells = grid.cells(spec, ["tasks.limit=50"])
    assert [c.name for c in cells] == [f"{m}·b{n}·batch" for m in ("memit", "mend") for n in (1, 4, 16, 64)]
    assert cells[5].argv == [*spec.overrides, "method=mend", "edits.n=4", "tasks.limit=50"]  # shared, axes, extra
    assert cells[5].values == {"method": "mend", "size": "b4"}


def test_config_hash_ignores_tracking_and_sees_everything_else():
    from editharm import config

    base = ["model=tiny-llama", "method=ft"]
    h = grid.config_hash(config.compose(base))
    assert grid.config_hash(config.compose([*base, "tracking.experiment=other", "tracking.run_name=x"])) == h
    assert grid.config_hash(config.compose([*base, "edits.n=3"])) != h


def test_bad_experiment_and_report_spec(tmp_path):
    with pytest.raises(ConfigError, match="unknown experiment 'nope'; valid: .*smoke"):
        grid.load("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("axes: {method: {ft: [method=ft]}}\nreport: {x: size}\n")
    with pytest.raises(ConfigError, match="report.x='size' must be `step` or one of the axes"):
        grid.load(str(bad))


def test_a_bad_cell_fails_before_the_first_cell_runs(env, tmp_path, capsys):
    path = tmp_path / "two.yaml"
    path.write_text("overrides: [model=tiny-llama, 'tasks.names=[]', edits.n=2]\n"
                    "axes: {method: {ft: [method=ft], broken: [method=ft, method.no_such_key=1]}}\n")
    with pytest.raises(ConfigError, match=r"experiment two, cell broken: .*no_such_key"):
        runs.experiment(str(path), [])
    assert not client().search_runs([e.experiment_id for e in client().search_experiments()])  # nothing started


def test_smoke_grid_resumes_reruns_a_failed_cell_and_reports(env, tmp_path, monkeypatch, capsys, caplog):
    from editharm.methods.rome import ROME

    def broken(self, requests):
        raise RuntimeError("rome broke")

    with monkeypatch.context() as patched:
        patched.setattr(ROME, "compute_deltas", broken)
        with pytest.raises(EditharmError, match=r"1 of 2 cells failed \(rome·smoke: rome broke\)"):
            runs.experiment("smoke", [])
    c = client()
    parent = c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.kind = 'experiment'")[0]
    assert parent.info.status == "FAILED"
    children = {r.data.tags["cell"]: r for r in c.search_runs([parent.info.experiment_id],
                                                              f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert {k: r.info.status for k, r in children.items()} == {"ft·smoke": "FINISHED", "rome·smoke": "FAILED"}
    assert children["ft·smoke"].info.run_name == "ft·smoke"

    stale = c.create_run(parent.info.experiment_id, tags={"mlflow.parentRunId": parent.info.run_id})  # a SIGKILLed cell
    capsys.readouterr()
    with caplog.at_level("INFO", logger="editharm"):
        again = runs.experiment("smoke", [])
    out = capsys.readouterr().out
    assert again == parent.info.run_id  # the same parent, reopened
    assert "[1/2] ft·smoke: finished already" in caplog.text and "[2/2] rome·smoke: finished in" in caplog.text
    assert caplog.text.count(": zsre format (") == 1  # said by the cell that ran, not by the check of both cells
    table = out[out.index("results of experiment smoke"):].splitlines()  # the grid's table, a line per cell
    assert [r.split()[:2] for r in table if r.startswith("sst2")] == [["sst2", "ft"], ["sst2", "rome"]]
    assert c.get_run(again).info.status == "FINISHED"
    nested = c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{again}'")
    assert sorted((r.data.tags.get("cell", "?"), r.info.status) for r in nested) == [
        ("?", "KILLED"), ("ft·smoke", "FINISHED"), ("rome·smoke", "FAILED"), ("rome·smoke", "FINISHED")]  # ft ran once
    assert c.get_run(stale.info.run_id).data.tags["error"].startswith("killed:")

    got = collect.collect(env_uri(), [again])
    assert [ln.label for ln in got.lines] == ["ft", "rome"]
    assert [p.x for p in got.lines[0].points] == [0, 2, 4]
    assert figures.panel_titles(figures.abilities(got)) == [
        "sst2 (accuracy)", "samsum (rouge_avg)", "edit efficacy", "edit generalization", "edit locality", "perplexity"]
    drawn = c.get_run(again).data.tags["report.figures"].split(",")
    assert drawn[0] == "abilities" and "paper" in drawn
    listed = {a.path for a in c.list_artifacts(again, "report")}
    assert {f"report/{n}.{ext}" for n in drawn for ext in ("png", "svg")} | {"report/report.html", "report/report.md"} <= listed
    page = read_artifact(again, "report/report.html", tmp_path).read_text()
    assert page.count("data:image/png;base64,") == len(drawn)  # self-contained: every figure embedded
    head, rows = document.ability_table(got)
    assert [r[:2] for r in rows] == [["sst2", "ft"], ["sst2", "rome"], ["samsum", "ft"], ["samsum", "rome"]]
    assert all(r[-1] in ("harm detected", "gain detected", "not detected") for r in rows)
    lines = json.loads(read_artifact(again, "report/lines.json", tmp_path / "l").read_text())
    assert lines[0]["points"][0]["step"] == 0
    # the docs' results page of this grid, regenerated from its runs
    import subprocess
    import sys

    page = tmp_path / "page"
    script = Path(__file__).resolve().parents[1] / "scripts" / "results_page.py"
    subprocess.run([sys.executable, str(script), again, "--out", str(page), "--title", "Smoke", "--command",
                    "editharm experiment smoke"], check=True, capture_output=True, timeout=300)
    text = (page / "index.md").read_text()
    assert text.startswith("# Smoke\n") and f"`{again}`" in text and "| sst2 | ft |" in text
    assert {p.name for p in page.glob("*.png")} == {"abilities.png", "likelihood.png", "paper.png"}


def test_a_grown_grid_reuses_the_cells_an_earlier_grid_finished(env, tmp_path, caplog):
    import yaml

    runs.experiment("smoke", [])
    spec = yaml.safe_load(grid.config_dir_file("smoke").read_text())
    spec["axes"]["method"]["ft5"] = [*spec["axes"]["method"]["ft"], "method.steps=5"]
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    with caplog.at_level("INFO", logger="editharm"):
        grown = runs.experiment(str(tmp_path / "smoke.yaml"), [])
    assert "2 finished already" in caplog.text and "[3/3] ft5·smoke: finished in" in caplog.text
    got = collect.collect(env_uri(), [grown])
    assert [ln.label for ln in got.lines] == ["ft", "rome", "ft5"] and not got.missing


def test_cells_that_collide_or_lack_the_report_axis_fail_before_compute(env, tmp_path):
    same = tmp_path / "same.yaml"
    same.write_text("overrides: [model=tiny-llama, 'tasks.names=[]', edits.n=2]\n"
                    "axes: {method: {a: [method=ft], b: [method=ft]}}\n")
    with pytest.raises(ConfigError, match="cells a and b resolve to the same config"):
        runs.experiment(str(same), [])
    axis = tmp_path / "axis.yaml"
    axis.write_text("overrides: [model=tiny-llama, 'tasks.names=[]', edits.n=2]\n"
                    "axes: {guard: {none: [guard=none], rect: [guard=rect]}}\nreport: {x: guard, x_key: guard.k}\n")
    with pytest.raises(ConfigError, match="cell none: report.x_key=guard.k is not a number"):
        runs.experiment(str(axis), [])


def env_uri() -> str:
    import os

    return os.environ["MLFLOW_TRACKING_URI"]


@pytest.mark.parametrize("low, high, said", [(-0.2, -0.01, "harm detected"), (0.01, 0.3, "gain detected"),
                                             (-0.1, 0.1, "not detected"), (-0.1, 0.0, "not detected"),
                                             (None, None, "n/a")])
def test_verdict_reads_the_paired_interval(low, high, said):
    assert document.verdict(low, high) == said


def test_retention_divides_by_the_unedited_score():
    assert figures.retention([0, 5, 10], [0.5, 0.25, 0.0]) == ([0, 5, 10], [1.0, 0.5, 0.0])
    assert figures.retention([0, 5], [0.0, 0.1]) == ([], [])  # nothing to divide by


@pytest.mark.own_report
def test_an_edit_run_draws_its_own_report_and_report_joins_runs(env, capsys):
    from editharm.__main__ import main
    from tests.conftest import TINY

    first = runs.edit([*TINY, "edits.n=2", "edits.eval_every=1", "tasks.names=[sst2]", "tracking.log_model=false"])
    second = runs.edit([*TINY, "edits.n=2", "edits.eval_every=2", "tasks.names=[sst2]", "tracking.log_model=false",
                        "tracking.log_report=false"])
    c = client()
    assert c.get_run(first).data.tags["report.figures"] == "abilities,likelihood"
    assert "report/report.html" in {a.path for a in c.list_artifacts(first, "report")}
    assert not c.list_artifacts(second, "report")
    assert main(["report", first, second]) == 0
    made = capsys.readouterr().out.split("report logged to run ")[1].split()[0]
    run = c.get_run(made)
    assert run.data.tags["kind"] == "report" and run.info.status == "FINISHED"
    got = collect.collect(env_uri(), [first, second])
    assert [[p.step for p in ln.points] for ln in got.lines] == [[0, 1, 2], [0, 2]]
    assert {a.path for a in c.list_artifacts(made, "report")} >= {"report/abilities.png", "report/report.md"}
