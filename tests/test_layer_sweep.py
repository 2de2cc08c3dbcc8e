"""The layer-sweep summary reads the final single-mode metrics and the median edit time of each run."""
import importlib.util
from pathlib import Path

from tests.conftest import client

SPEC = importlib.util.spec_from_file_location("layer_sweep", Path(__file__).parents[1] / "benchmarks" / "layer_sweep.py")
layer_sweep = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(layer_sweep)


def _run(c, exp: str, layer: int, status: str, edit_s: list[float]) -> str:
    run_id = c.create_run(exp).info.run_id
    c.log_param(run_id, "method.layer", layer)
    c.log_param(run_id, "edits.n", len(edit_s))
    for step, s in enumerate(edit_s, 1):
        c.log_metric(run_id, "time/edit_s", s, step=step)
    for i, key in enumerate(layer_sweep.COLUMNS.values()):
        c.log_metric(run_id, key, 0.1 * (i + 1) + layer, step=len(edit_s))
    c.set_terminated(run_id, status)
    return run_id


def test_rows_and_table(tracking):
    c = client()
    exp = c.create_experiment("sweep")
    done = _run(c, exp, 6, "FINISHED", [3.0, 9.0, 4.0, 1.0])
    failed = _run(c, exp, 2, "FAILED", [1.0])
    r = layer_sweep.row(c, done)
    assert r["layer"] == "6" and r["n"] == "4"
    assert r["median s per edit"] == 3.5
    assert r["efficacy"] == 6.1 and r["specificity"] == 6.3
    assert layer_sweep.row(c, failed) == {"layer": "2", "status": "FAILED"}
    lines = layer_sweep.table([r, layer_sweep.row(c, failed)]).splitlines()
    assert lines[2].startswith("| 2 | FAILED") and lines[3].startswith("| 6 | 4 | 6.10 | 6.20 | 6.30")
