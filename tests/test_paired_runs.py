"""benchmarks/paired_runs.py: runs against a reference run, per case, only when they edited the same cases."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import client

BENCH = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # paired_runs imports layer_sweep as a sibling script
SPEC = importlib.util.spec_from_file_location("paired_runs", BENCH / "paired_runs.py")
paired_runs = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(paired_runs)
sys.path.remove(str(BENCH))


def _run(c, exp: str, name: str, specificity: list[int], prompts: list[str]) -> str:
    run_id = c.create_run(exp, run_name=name).info.run_id
    c.log_param(run_id, "edits.n", len(prompts))
    for key in paired_runs.COLUMNS.values():
        c.log_metric(run_id, key, 0.5, step=len(prompts))
    for step, evals in enumerate([25, 11, 13, 25], 1):
        c.log_metric(run_id, "time/edit_s", float(step), step=step)
        c.log_metric(run_id, "value/loss_evals", evals, step=step)
    rows = [{"index": i, "prompt": p, "efficacy_success": 1.0, "generalization_success": 1.0,
             "locality_success": float(s)} for i, (p, s) in enumerate(zip(prompts, specificity))]
    c.log_text(run_id, "\n".join(map(json.dumps, rows)), f"predictions/edit/edits_{len(prompts)}.jsonl")
    c.set_terminated(run_id, "FINISHED")
    return run_id


def test_compare_pairs_on_the_same_cases_and_refuses_others(tracking):
    c = client()
    exp = c.create_experiment("paired")
    prompts = ["a", "b", "c", "d"]
    ref = _run(c, exp, "fp32", [1, 1, 0, 0], prompts)
    fast = _run(c, exp, "bf16", [1, 0, 0, 0], prompts)
    lines = paired_runs.compare(c, ref, [fast]).splitlines()
    assert lines[2].startswith("| fp32 | 4 | 0.50") and lines[2].endswith("| 2.50 | 18.50 |")
    assert lines[-1].startswith("| bf16 | +0.00 [+0.00, +0.00] | +0.00 [+0.00, +0.00] | -0.25 [")
    other = _run(c, exp, "shuffled", [1, 1, 0, 0], ["b", "a", "c", "d"])
    with pytest.raises(SystemExit, match="not paired"):
        paired_runs.compare(c, ref, [other])
