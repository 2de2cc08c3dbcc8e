"""`editharm report RUN_ID ...`: read the runs back, draw, tabulate, and log it all under `report/`.

    report/abilities.png|.svg     one panel per task + edit efficacy/generalization/locality + perplexity
    report/likelihood.png|.svg    the gold answer's paired log-probability change per task (where logged)
    report/paper.png|.svg         retention beside the paper's own numbers (experiments that name a figure)
    report/report.md, report.html the tables (score per step, paired Δ with its 95 % interval, verdict)
    report/lines.json             the points drawn, for anyone who wants to redraw them
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from importlib import resources
from pathlib import Path

import yaml

from editharm import tracking
from editharm.report import document, figures
from editharm.report.collect import Collected, collect

FOLDER = "report"
CAPTIONS = {
    "abilities": "Ability scores, edit metrics and perplexity against {x}; bands: 95 % bootstrap intervals.",
    "likelihood": "Change of the gold answer's mean log-probability from the unedited model on the same examples "
                  "(paired bootstrap 95 % band); below 0: the model finds the right answer less likely.",
    "paper": "Retention (score / unedited score) of these runs (solid) beside the paper's figure (dashed; values "
             "read off its images).",
}


def paper_numbers() -> dict:
    """The paper's numbers (`gu2024.yaml` beside this module, with its source)."""
    return yaml.safe_load(resources.files("editharm.report").joinpath("gu2024.yaml").read_text(encoding="utf-8"))


def write(got: Collected, out: Path) -> list[str]:
    """Draw and write the report of `got` into `out`; returns the figure names written."""
    paper = paper_numbers()
    drawn = {"abilities": figures.abilities(got), "likelihood": figures.likelihood(got),
             "paper": figures.paper(got, paper["figures"][got.paper]) if got.paper else None}
    drawn = {k: v for k, v in drawn.items() if v is not None}
    x = "edits applied" if got.x == "step" else got.x
    pngs = []
    for name, fig in drawn.items():
        fig.savefig(out / f"{name}.png", dpi=90)
        fig.savefig(out / f"{name}.svg")
        pngs.append((name, (out / f"{name}.png").read_bytes(), CAPTIONS[name].format(x=x)))
    source = paper["source"] if "paper" in drawn else None
    (out / "report.md").write_text(document.markdown(got, [(f"{n}.png", c) for n, _, c in pngs], source), encoding="utf-8")
    (out / "report.html").write_text(document.page(got, pngs, source), encoding="utf-8")
    (out / "lines.json").write_text(json.dumps([dataclasses.asdict(ln) for ln in got.lines], indent=1), encoding="utf-8")
    return list(drawn)


def report(run_ids: list[str], uri: str | None = None, into: str | None = None, got: Collected | None = None) -> str:
    """Report on `run_ids` (an experiment's parent run, or edit runs; `got`: their lines, when read back already)
    and log it under `report/` of `into` (default: the parent run, else a new `report` run in the first run's
    experiment); returns that run's id."""
    from mlflow import MlflowClient

    uri = uri or tracking.tracking_uri()
    got = got or collect(uri, run_ids)
    client = MlflowClient(uri)
    first = client.get_run(run_ids[0])
    created = None
    if into is None and first.data.tags.get("kind") == "experiment":
        into = first.info.run_id
    if into is None:
        created = client.create_run(first.info.experiment_id, run_name=f"report-{first.info.run_name}",
                                    tags={"kind": "report", "report.runs": ",".join(run_ids)})
        into = created.info.run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            names = write(got, Path(tmp))
            client.log_artifacts(into, tmp, FOLDER)
        client.set_tag(into, "report.figures", ",".join(names))
    except BaseException:
        if created is not None:
            client.set_terminated(into, "FAILED")
        raise
    if created is not None:
        client.set_terminated(into, "FINISHED")
    return into
