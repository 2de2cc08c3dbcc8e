"""benchmarks/paired_runs.py: runs against a reference run, per case, only when they edited the same cases."""
import importlib.util
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


def _run(c, exp: str, name: str, specificity: list[int], status: str = "FINISHED", seed: int = 0) -> str:
    """A single-mode run as the module logs it: running means of every edit metric after each edit."""
    run_id = c.create_run(exp, run_name=name).info.run_id
    for k, v in {"edits.dataset": "counterfact", "edits.n": 4, "edits.seed": seed, "edits.mode": "single"}.items():
        c.log_param(run_id, k, v)
    for key in paired_runs.KEYS.values():
        c.log_metric(run_id, key, 0.0, step=0)  # the unedited model: not a case
    for s in range(1, len(specificity) + 1):
        for key in paired_runs.KEYS.values():
            c.log_metric(run_id, key, sum(specificity[:s]) / s if key.endswith("locality_success") else 1.0, step=s)
        c.log_metric(run_id, "time/edit_s", float(s), step=s)
        c.log_metric(run_id, "value/loss_evals", [25, 11, 13, 25][s - 1], step=s)
    c.set_terminated(run_id, status)
    return run_id


def test_per_case_values_come_back_from_the_running_means(tracking):
    c = client()
    run = _run(c, c.create_experiment("paired"), "fp32", [1, 0, 1, 1])
    assert paired_runs.per_case(c, run, "edit/counterfact/locality_success") == pytest.approx([1, 0, 1, 1])


def test_compare_pairs_on_the_cases_all_runs_reached_and_refuses_other_edits(tracking):
    c = client()
    exp = c.create_experiment("paired")
    ref = _run(c, exp, "fp32", [1, 1, 0, 0])
    fast = _run(c, exp, "bf16", [1, 0, 0], status="KILLED")  # stopped after 3 of 4 cases
    lines = paired_runs.compare(c, ref, [fast]).splitlines()
    assert lines[2] == "| fp32 | FINISHED | 3 | 1.00 | 1.00 | 0.67 | 1.00 | 1.00 | 1.00 | 2.0 | 16.3 |"
    assert lines[-1].startswith("| bf16 | +0.00 [+0.00, +0.00] | +0.00 [+0.00, +0.00] | -0.33 [")
    assert lines[-1].endswith("| +0.00 [+0.00, +0.00] |")
    other = _run(c, exp, "reseeded", [1, 1, 0, 0], seed=1)
    with pytest.raises(SystemExit, match="not paired"):
        paired_runs.compare(c, ref, [other])
