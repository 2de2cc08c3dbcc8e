"""Bad input: one clear message, exit status 2, no traceback, any opened run marked FAILED."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from editharm.__main__ import main
from tests.conftest import TINY, client

REPO = Path(__file__).resolve().parents[1]


def _fails(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("editharm: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("argv,words", [
    (["edit", "method=nope"], ["unknown method 'nope'", "ft"]),
    (["edit", "model=nope"], ["unknown model 'nope'", "smollm2-135m", "tiny-llama"]),
    (["edit", "edits=nope"], ["unknown edits 'nope'", "zsre"]),
    (["edit", "edits.nope=1"], ["edits.nope", "batch_size"]),
    (["edit", "edits.n=ten"], ["edits.n"]),
    (["edit", "edits.mode=sometimes"], ["instance-sequential"]),
    (["evaluate", "tasks.protocol=bogus"], ["gu2024", "harness"]),
    (["evaluate", "tasks.names=[rte,nope]"], ["unknown task 'nope'", "samsum"]),
    (["evaluate", "tasks.dtype=float8"], ["tasks.dtype", "bfloat16"]),
    (["evaluate", "tasks.limit=0"], ["tasks.limit"]),
    (["evaluate", "model=tiny-llama", "checkpoint=/no/such/ckpt", "tasks.names=[]"], ["checkpoint", "config.json"]),
])
def test_bad_config(capsys, env, argv, words):
    _fails(capsys, argv, *words)


def test_no_data_directory(capsys, tracking, monkeypatch):
    monkeypatch.delenv("EDITHARM_DATA_DIR", raising=False)
    _fails(capsys, ["edit", *TINY], "no data directory", "EDITHARM_DATA_DIR")
    _fails(capsys, ["edit", *TINY, "data_dir=/no/such/dir"], "/no/such/dir", "does not exist")


@pytest.mark.parametrize("record,words", [
    ({"prompt": "Paris is the capital of", "subject": "Paris"}, ["line 2", "target_new"]),
    ({"prompt": "Paris is the capital of", "subject": "London", "target_new": "Italy"}, ["line 2", "'London' does not occur"]),
    ({"prompt": "Paris is the capital of", "subject": "Paris", "target_new": ""}, ["line 2", "empty target"]),
])
def test_bad_records(capsys, env, tmp_path, record, words):
    good = {"prompt": "Rome is the capital of", "subject": "Rome", "target_new": "Spain"}
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    _fails(capsys, ["edit", *TINY, f"edits.dataset={path}", "edits.n=1"], *words)
    assert not client().search_runs(["0"])  # rejected before any run was opened


def test_failure_inside_a_run_marks_it_failed(capsys, env, tmp_path):
    _fails(capsys, ["edit", "model=gpt2-xl", f"model.path={tmp_path / 'absent'}", "edits.n=1", "tasks.names=[]"],
           "cannot load model")
    exp = client().get_experiment_by_name("editharm")
    (run,) = client().search_runs([exp.experiment_id])
    assert run.info.status == "FAILED" and "cannot load model" in run.data.tags["error"]
    assert "config/resolved.yaml" in [a.path for a in client().list_artifacts(run.info.run_id, "config")]


def test_bad_input_marks_the_run_handed_down_by_mlflow_run_failed(capsys, env, tmp_path, monkeypatch):
    run = client().create_run("0")
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps({"prompt": "a", "subject": "b", "target_new": "c"}) + "\n")
    _fails(capsys, ["edit", *TINY, f"edits.dataset={path}", "edits.n=1"], "does not occur")
    got = client().get_run(run.info.run_id)
    assert got.info.status == "FAILED" and "does not occur" in got.data.tags["error"]


def test_checkpoint_of_unknown_run(capsys, tracking, tmp_path):
    assert main(["checkpoint", "0123456789abcdef", "--out", str(tmp_path / "x")]) == 2
    assert "cannot fetch the checkpoint" in capsys.readouterr().err


def test_real_process_prints_no_traceback(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run([sys.executable, "-m", "editharm", "edit", "method=nope"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "editharm: error: unknown method 'nope'; valid: ft, kn, memit, mend, rome"
