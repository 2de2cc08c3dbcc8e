"""Every command of the README is run by a test (here, or by the test named for it), the first example as written on
the real data; and the shipped tiny models fit every real task prompt (a 512-position tiny model once refused RTE's
679-byte prompt and no test noticed)."""
import re
import shlex
from pathlib import Path

import pytest

from editharm import config, limits, models
from editharm.__main__ import main
from editharm.tasks.spec import task_names
from editharm.tasks.task import load_task
from tests.conftest import client

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def _readme_commands(prefix: str) -> list[list[str]]:
    return [shlex.split(line)[len(shlex.split(prefix)):] for line in _readme_lines() if line.startswith(prefix)]


# Commands another test (or CI itself) runs, by prefix; every other README command runs in
# test_every_other_readme_command_runs, on the tiny model where the README's would be slow.
ELSEWHERE = {
    "bash scripts/setup.sh": ".ci/run -> scripts/test.sh -> scripts/setup.sh",
    "source .venv/bin/activate": ".ci/run's environment",
    "bash scripts/test.sh": ".ci/run",
    "bash scripts/main.sh": "the main job: scripts/setup.sh (CI) then `editharm edit` (the first example's code path "
                            "on the embedded model; measured on the docs' main-job page)",
    "editharm edit method=ft model=tiny-llama": "test_readme_first_edit_example_runs_as_written",
    "mlflow run .": "tests/test_mlproject.py::test_the_readmes_mlflow_run_creates_exactly_one_finished_run",
    "mlflow ui": "tests/test_browser.py (mlflow ui in headless Chromium)",
}
FAST = ["tasks.names=[sst2]", "tasks.limit=2", "probe.n_tokens=512", "probe.chunk_tokens=128",
        "tracking.log_model=false"]


@pytest.mark.slow
def test_every_other_readme_command_runs(shared_data, tracking, tmp_path, monkeypatch):
    """The README's recipes, in order, with the tiny model and few examples appended (later keys win): its own
    edits file, a model folder through `hf:`, the checkpoint of a run, the paper's Instance-Sequential grid."""
    import subprocess

    monkeypatch.setenv("EDITHARM_DATA_DIR", str(shared_data))
    model, tok = models.load(config.load(["model=tiny-llama"]).model, models.cache_root())
    folder = tmp_path / "your" / "checkpoint"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    last_run, ran = None, []
    for line in _readme_lines():
        if any(line.startswith(prefix) for prefix in ELSEWHERE):
            continue
        if line.startswith("printf "):
            subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True)
        elif line.startswith("editharm checkpoint"):
            argv = [a.replace("<RUN_ID>", last_run) for a in shlex.split(line)[1:]]
            assert main(argv) == 0 and (tmp_path / "edited" / "config.json").is_file()
        elif line.startswith("editharm "):
            argv = [a.replace("/path/to/your/checkpoint", str(folder)) for a in shlex.split(line)[1:]]
            small = [*([] if any(a.startswith("model=") for a in argv) else ["model=tiny-llama"]),
                     *(["edits.n=2", "edits.eval_every=2"] if argv[0] == "experiment" else []),
                     *(["method.mom2_n_samples=50"] if "method=memit" in argv else [])]
            assert main([*argv, *FAST, *small]) == 0, line
            last_run = client().search_runs([e.experiment_id for e in client().search_experiments()],
                                            order_by=["start_time DESC"])[0].info.run_id
        else:
            raise AssertionError(f"README command with no test: {line!r} (run it here or name its test in ELSEWHERE)")
        ran.append(" ".join(line.split()[:1 if line.startswith("printf") else 2]))
    assert ran == ["printf", "editharm edit", "editharm edit", "editharm checkpoint", "editharm experiment"], ran


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("protocol", ["gu2024", "harness"])
def test_tiny_models_fit_every_full_task(shared_data, model, protocol):
    m, tok = models.load(config.load([f"model={model}"]).model, models.cache_root())
    limit = limits.context_length(m)
    tasks = [load_task(name, protocol, shared_data, limit=None) for name in task_names(protocol)]
    truncated = limits.fit_tasks(tasks, tok, limit)  # raises for a task that may not truncate
    assert set(truncated) <= {t.spec.name for t in tasks if t.spec.truncate == "left"}


@pytest.mark.slow
def test_readme_first_edit_example_runs_as_written(shared_data, tracking, monkeypatch):
    tiny = [argv for argv in _readme_commands("editharm edit") if "model=tiny-llama" in argv]
    assert tiny, "the README's first example (editharm edit ... model=tiny-llama ...) is gone"
    monkeypatch.setenv("EDITHARM_DATA_DIR", str(shared_data))
    assert main(["edit", *tiny[0], "tracking.log_model=false"]) == 0
    (run,) = client().search_runs([e.experiment_id for e in client().search_experiments()])
    assert run.info.status == "FINISHED"
    for task in config.load([]).tasks.names:  # every default task scored, at each evaluation
        key = next(k for k in run.data.metrics if k.startswith(f"ability/{task}/"))
        assert [m.step for m in client().get_metric_history(run.info.run_id, key)] == [0, 2, 4]


@pytest.mark.slow
def test_readme_python_example_runs_as_written(shared_data, monkeypatch, capsys):
    """The README's Python block, executed as written on the embedded model and the real data."""
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    monkeypatch.setenv("EDITHARM_DATA_DIR", str(shared_data))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    after, editor = scope["after"], scope["editor"]
    assert list(editor.deltas) == [] and editor.steps == []  # the `with` block reverted the edit on exit
    assert set(after.scores) == {"rte", "sst2", "perplexity"} and "accuracy_delta" in after.scores["rte"]
    printed = capsys.readouterr().out
    assert f"['model.layers.{editor.hparams.layer}.mlp.down_proj.weight']" in printed  # smollm2's ROME layer
    assert "efficacy_success" in printed and printed.count("rte ") == 1
