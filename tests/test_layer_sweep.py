"""The layer-sweep summary reads the final single-mode metrics and the median edit time of each run."""
import importlib.util
import json
from pathlib import Path

import torch

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
        c.log_metric(run_id, key, 0.01 * (i + 1), step=0)
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
    b = layer_sweep.before(c, done)
    assert b["efficacy"] == 0.01 and b["generalization token acc"] == 0.05  # the step-0 values, not the final
    lines = layer_sweep.table([r, b, layer_sweep.row(c, failed)]).splitlines()
    assert lines[2].startswith("| before editing | 4 | 0.01 | 0.02 | 0.03")
    assert lines[3].startswith("| 2 | FAILED") and lines[4].startswith("| 6 | 4 | 6.10 | 6.20 | 6.30")


def test_paired_difference():
    a = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    mean, lo, hi = layer_sweep.paired_difference(a, b)
    assert mean.tolist() == [0.5, 0.75]
    assert 0.0 <= lo[0] < 0.5 < hi[0] <= 1.0
    mean, lo, hi = layer_sweep.paired_difference(b + 1, b)  # the same difference on every case: no spread
    assert mean.tolist() == lo.tolist() == hi.tolist() == [1.0, 1.0]


def test_difference_table_reads_case_rows(tracking):
    c = client()
    exp = c.create_experiment("sweep")
    ids = {}
    for layer, spec in ((4, [1, 1, 0, 0]), (8, [1, 0, 0, 0])):
        ids[layer] = _run(c, exp, layer, "RUNNING", [1.0] * 4)
        rows = [{"index": i, "efficacy_success": 1.0, "generalization_success": 1.0, "locality_success": float(s)}
                for i, s in reversed(list(enumerate(spec)))]  # written out of order: read back by index
        c.log_text(ids[layer], "\n".join(map(json.dumps, rows)), "predictions/edit/edits_4.jsonl")
        c.set_terminated(ids[layer], "FINISHED")
    assert layer_sweep.case_successes(c, ids[8])[:, 2].tolist() == [1.0, 0.0, 0.0, 0.0]
    run_ids = [ids[8], ids[4]]
    text = layer_sweep.difference_table(c, [layer_sweep.row(c, r) for r in run_ids], run_ids, reference=4)
    assert text.splitlines()[2].startswith("| 8 | +0.00 [+0.00, +0.00] | +0.00 [+0.00, +0.00] | -0.25 [")
