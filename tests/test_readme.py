"""The README's first example, as written, on the real data; and the shipped tiny models fit every real task
prompt (a 512-position tiny model once refused RTE's 679-byte prompt and no test noticed)."""
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


def _readme_commands(prefix: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[len(shlex.split(prefix)):] for line in lines if line.startswith(prefix)]


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
    """The "Use from Python" block, executed as written on the embedded model and the real data."""
    section = README.read_text().split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.setenv("EDITHARM_DATA_DIR", str(shared_data))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    after, editor = scope["after"], scope["editor"]
    assert list(editor.deltas) == [] and editor.steps == []  # the `with` block reverted the edit on exit
    assert set(after.scores) == {"rte", "sst2", "perplexity"} and "accuracy_delta" in after.scores["rte"]
    printed = capsys.readouterr().out
    assert f"['model.layers.{editor.hparams.layer}.mlp.down_proj.weight']" in printed  # smollm2's ROME layer
    assert "efficacy_success" in printed and printed.count("rte ") == 1
