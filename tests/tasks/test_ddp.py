"""The validation loop gives the same numbers under DDP (2 CPU processes, gloo) as in one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONLL, write_jsonl

SCRIPT = Path(__file__).resolve().parents[1] / "ddp_eval.py"


def _data(root: Path) -> Path:
    """Odd-sized task files, so the two processes get uneven shards."""
    write_jsonl(root / "sst2" / "dev.jsonl", [{"sentence": f"film number {i} was {'good' if i % 2 else 'bad'} .", "label": i % 2}
                                              for i in range(9)])
    write_jsonl(root / "mutual" / "dev.jsonl", [{"answers": "ABCD"[i % 4], "article": f"m : hello {i} ? f : yes .",
                                                 "options": [f"m : option {j} for {i} ." for j in range(4)], "id": str(i)}
                                                for i in range(5)])
    write_jsonl(root / "samsum" / "validation.jsonl", [{"id": str(i), "summary": f"Anna brings {i} cakes.",
                                                       "dialogue": f"Anna: I bring {i} cakes.\r\nBen: ok"} for i in range(3)])
    write_jsonl(root / "conll2003" / "valid.jsonl", CONLL + [{**CONLL[1], "id": "2"}])
    write_jsonl(root / "rte" / "gu2024_test-NLI.jsonl", [{"index": str(i), "sentence1": f"A {i}.", "sentence2": f"B {i}.",
                                                         "label": ["entailment", "not_entailment"][i % 2]} for i in range(5)])
    return root


def _run(tmp_path: Path, devices: int) -> dict:
    out = tmp_path / f"metrics-{devices}.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices), str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_ddp_two_processes_equal_one(tmp_path):
    _data(tmp_path / "data")
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert one["ability/sst2/n"] == 9 and one["ability/conll03/n"] == 12
    assert one["ability/sst2/gold_mass_delta"] == 0.0 and one["ability/samsum/rouge_avg_delta_ci_high"] == 0.0
    assert set(one) == set(two)
    for key in one:  # likelihoods are float32 sums whose batches (padding) differ between the shardings
        tol = 1e-5 * max(1.0, abs(one[key])) if "/gold_" in key else 1e-9
        assert abs(one[key] - two[key]) < tol, (key, one[key], two[key])



def test_editharm_evaluate_devices_2_logs_one_processs_numbers(tmp_path, tracking, monkeypatch):
    """`editharm evaluate devices=2` (spawned ranks, gloo) logs to the run the command opened the metrics and the
    per-example predictions of `devices=1`; an edit run refuses several devices before anything loads."""
    from editharm.errors import ConfigError
    from editharm.runs import edit, evaluate
    from tests.conftest import client

    monkeypatch.setenv("EDITHARM_DATA_DIR", str(_data(tmp_path / "data")))
    keys = ["model=tiny-llama", "tasks.names=[sst2,samsum]", "tasks.dtype=float32", "probe.perplexity=false"]
    runs = {n: client().get_run(evaluate([*keys, f"devices={n}"])) for n in (1, 2)}
    assert len(client().search_runs([runs[1].info.experiment_id])) == 2  # the spawned ranks opened no run
    one, two = (json.loads(Path(client().download_artifacts(runs[n].info.run_id, "evaluations/edits_0.json",
                                                            str(tmp_path / f"t{n}"))).read_text()) for n in (1, 2))
    assert runs[2].info.status == "FINISHED"  # every figure of the evaluation, intervals included, as one process
    assert set(one) == set(two) and "ability/samsum/rouge_avg_ci_low" in one
    for key in one:
        if not key.startswith("time/"):
            assert abs(one[key] - two[key]) <= 1e-5 * max(1.0, abs(one[key])), key
    rows = {n: [json.loads(line) for line in Path(client().download_artifacts(
        runs[n].info.run_id, "predictions/samsum/edits_0.jsonl", str(tmp_path / str(n)))).read_text().splitlines()]
        for n in (1, 2)}
    assert [r["output"] for r in rows[1]] == [r["output"] for r in rows[2]] and len(rows[2]) == 3
    with pytest.raises(ConfigError, match="an edit run is one process"):
        edit([*keys, "devices=2"])
