"""Stopping and resuming: SIGTERM inside a long edit stops the run within seconds (KILLED, with the reason);
`resume=<run_id>` continues the same run to the same final numbers as an uninterrupted one, after a SIGTERM
or a SIGKILL, with no metric step logged twice."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from editharm import resume, stopping
from editharm.errors import ConfigError, EditharmError
from editharm.methods.ft import FT
from editharm.runs import edit
from tests.conftest import TINY, client

# Tiny FT with two ability tasks (a choice and a generation task: their step-0 baselines must survive the
# resume for the paired deltas) and the locality baseline of the edit metrics; 6 edits evaluated every 2.
ARGS = [*TINY, "tasks.names=[sst2,samsum]", "edits.n=6", "edits.eval_every=2", "tracking.log_checkpoint=false",
        "tracking.log_model=false"]
REPO = Path(__file__).resolve().parents[1]


def _metrics(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's (step, value) history, timings left out (they differ between any two runs)."""
    c = client()
    keys = [k for k in c.get_run(run_id).data.metrics if not k.startswith("time/")]
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k)) for k in keys}


def _same_as_reference(run_id: str, reference: str) -> None:
    got, want = _metrics(run_id), _metrics(reference)
    assert sorted(got) == sorted(want)
    for key in want:
        steps = [s for s, _ in got[key]]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def _wait_for_state(uri: str, step: int, proc, other: str, timeout: float = 120) -> str:
    """The id of `proc`'s run (the edit run that is not `other`) once it logged its state at `step` edits (its
    time/eval_s at `step`: logged right after the state)."""
    import mlflow

    c = mlflow.MlflowClient(uri)
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "the run ended before it was stopped"
        runs = c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.kind = 'edit'")
        for r in (r for r in runs if r.info.run_id != other):
            if step in {m.step for m in c.get_metric_history(r.info.run_id, "time/eval_s")}:
                return r.info.run_id
        time.sleep(0.2)
    raise AssertionError(f"no state at {step} edits after {timeout} s")


@pytest.fixture
def reference(env):
    return edit(ARGS)


def test_sigterm_inside_a_long_edit_stops_within_seconds_and_resume_finishes_it(reference, monkeypatch):
    """In-process: the third edit hangs (a 60 s loop); SIGTERM stops it in well under 10 s."""
    real = FT.compute_deltas
    sent = []

    def hanging(self, requests):
        if self.n_edits == 2:  # after the state at 2 edits was written
            threading.Timer(0.5, lambda: (sent.append(time.time()), os.kill(os.getpid(), signal.SIGTERM))).start()
            t0 = time.time()
            while time.time() - t0 < 60:
                time.sleep(0.01)
        return real(self, requests)

    monkeypatch.setattr(FT, "compute_deltas", hanging)
    with pytest.raises(stopping.Stopped) as stopped:
        edit(ARGS)
    assert time.time() - sent[0] < 10
    assert stopped.value.signum == signal.SIGTERM and "resume=" in stopped.value.message
    run = [r for r in client().search_runs([e.experiment_id for e in client().search_experiments()])
           if r.info.run_id != reference][0]
    assert run.info.status == "KILLED"
    assert run.data.tags["stop_reason"].startswith("stopped by SIGTERM after 2 of 6 edits; resumable from the state at 2")
    assert max(m.step for m in client().get_metric_history(run.info.run_id, "time/edit_s")) == 2  # nothing after it
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run

    monkeypatch.setattr(FT, "compute_deltas", real)
    assert edit([f"resume={run.info.run_id}"]) == run.info.run_id
    resumed = client().get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert "stop_reason" not in resumed.data.tags and resumed.data.tags["resume.count"] == "1"
    assert resumed.data.tags["resume.1.after"].startswith("stopped by SIGTERM")
    _same_as_reference(run.info.run_id, reference)


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "editharm", "edit", *args], cwd=os.getcwd(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_process_resumes_to_the_uninterrupted_numbers(reference, tracking, sig):
    """A real process: SIGTERM exits 143 within 10 s with the run KILLED; SIGKILL leaves it RUNNING. Either
    way `resume=<id>` finishes the same run with the reference's metrics."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as here
    proc = _cli(ARGS, env)
    try:
        run_id = _wait_for_state(tracking, 2, proc, other=reference)
        t0 = time.time()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.time() - t0 < 10
    run = client().get_run(run_id)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, out
        assert f"continue it with `editharm edit resume={run_id}`" in out and "Traceback" not in out
        assert run.info.status == "KILLED" and run.data.tags["stop_reason"].startswith("stopped by SIGTERM")
    else:
        assert proc.returncode == -signal.SIGKILL and run.info.status == "RUNNING"
    assert edit([f"resume={run_id}"]) == run_id  # in this process: the CLI path is `main` -> `runs.edit` as here
    assert client().get_run(run_id).info.status == "FINISHED"
    _same_as_reference(run_id, reference)


def test_resume_refuses_what_it_cannot_continue(reference):
    with pytest.raises(ConfigError, match="the run is FINISHED"):
        edit([f"resume={reference}"])
    with pytest.raises(ConfigError, match="no such run"):
        edit(["resume=0123456789abcdef"])
    client().set_terminated(reference, "KILLED")
    with pytest.raises(ConfigError, match=r"edits.n=9 \(the run has edits.n=6\)"):
        edit([f"resume={reference}", "edits.n=9"])
    with pytest.raises(ConfigError, match=r"method=rome \(the run has method.name=ft\)"):
        edit([f"resume={reference}", "method=rome", "model=tiny-llama"])  # agreeing picks are fine, others not
    with pytest.raises(ConfigError, match="one run id"):
        edit(["resume=a", "resume=b"])


def test_a_run_without_state_cannot_resume(env):
    run_id = edit([*ARGS, "tracking.log_state=false"])
    client().set_terminated(run_id, "KILLED")
    with pytest.raises(EditharmError, match="no resumable state"):
        edit([f"resume={run_id}"])


def test_rng_state_round_trips():
    import random

    import numpy as np
    import torch

    state = resume.rng_state()
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    resume.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_sigterm_stops_a_grid_and_marks_parent_and_cell_killed(env, monkeypatch):
    from editharm.runs import experiment

    real = FT.compute_deltas

    def stop_once(self, requests):
        if self.n_edits == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, requests)

    monkeypatch.setattr(FT, "compute_deltas", stop_once)
    with pytest.raises(stopping.Stopped) as stopped:
        experiment("smoke", [])
    assert "run the same command again" in stopped.value.message
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()])
    status = {r.data.tags.get("kind"): r.info.status for r in runs}
    assert status == {"experiment": "KILLED", "edit": "KILLED"}  # the first cell (ft) stopped; rome never began
    assert all(r.data.tags["stop_reason"].startswith("stopped by SIGTERM") for r in runs)


def test_stopped_after_its_last_evaluation_only_the_end_is_left(reference, monkeypatch):
    """SIGTERM while the edited model is being logged: the state at 6 edits resumes without editing again."""
    from editharm import tracking

    real = tracking.log_edited_model

    def stop(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(tracking, "log_edited_model", stop)
    with pytest.raises(stopping.Stopped):
        edit(ARGS)
    run = next(r for r in client().search_runs([e.experiment_id for e in client().search_experiments()])
               if r.info.run_id != reference)
    assert "after 6 of 6 edits; resumable from the state at 6" in run.data.tags["stop_reason"]
    monkeypatch.setattr(tracking, "log_edited_model", real)
    monkeypatch.setattr(FT, "compute_deltas", lambda *a: pytest.fail("a resumed run at its last state edits again"))
    edit([f"resume={run.info.run_id}"])
    assert client().get_run(run.info.run_id).info.status == "FINISHED"
    _same_as_reference(run.info.run_id, reference)
