"""The unedited model's evaluation is scored once and replayed: a second run on the same weights, data, settings
and code gives the first run's step-0 numbers and rows exactly, without scoring; anything in the key changed
scores afresh."""
import dataclasses
import json
import logging

import pytest
import torch

from editharm import config, models, replay
from editharm.runs import edit
from tests.conftest import TINY, client, read_artifact

ARGS = [*TINY, "tasks.names=[sst2,samsum]", "tasks.limit=6", "edits.n=1", "edits.eval_every=1",
        "tracking.log_checkpoint=false", "tracking.log_model=false"]


def _step0(run_id, tmp_path, name):
    table = json.loads(read_artifact(run_id, "evaluations/edits_0.json", tmp_path / name / "t").read_text())
    rows = {task: read_artifact(run_id, f"predictions/{task}/edits_0.jsonl", tmp_path / name / task).read_text()
            for task in ("sst2", "samsum")}
    table.pop("time/eval_s", None)
    return table, rows


@pytest.mark.replay
def test_a_second_run_replays_the_first_runs_unedited_evaluation(env, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EDITHARM_CACHE_DIR", str(tmp_path / "cache"))  # nothing recorded by other tests
    caplog.set_level(logging.INFO, logger="editharm")
    first = edit(ARGS)
    assert "reused" not in caplog.text and len(list((tmp_path / "cache" / "evaluations").glob("*.pkl"))) == 3
    second = edit(ARGS)
    assert "evaluation after 0 edits: sst2, samsum, perplexity reused" in caplog.text
    assert _step0(second, tmp_path, "b") == _step0(first, tmp_path, "a")  # scores, intervals, rows: all equal
    m1, m2 = (client().get_run(r).data.metrics for r in (first, second))
    assert m2["ability/sst2/accuracy_delta"] == m1["ability/sst2/accuracy_delta"]  # paired with the same baseline
    caplog.clear()
    edit([*ARGS, "tasks.batch_tokens=1024"])  # other scoring settings: the tasks are scored afresh (the probe, in the
    assert "evaluation after 0 edits: perplexity reused" in caplog.text  # model's own dtype, is not affected)


def test_the_key_changes_with_any_column_of_the_weights_and_with_the_task_spec(env):
    """One changed element of one column (KN edits neuron columns) changes the weights' hash; a task spec that
    differs only in how answers are delimited changes the evaluator's key."""
    from editharm.tasks import load_task
    from editharm.tasks.evaluator import TaskEvaluator

    model, tok = models.load(config.load(["model=tiny-llama"]).model, models.cache_root())
    before = replay.weights_hash(model)
    with torch.no_grad():
        weight = dict(model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
        weight[3, weight.shape[1] - 1] += 1e-3
    assert replay.weights_hash(model) != before
    task = load_task("sst2", "gu2024", env, 2, 0)
    other = dataclasses.replace(task, spec=dataclasses.replace(task.spec, target_delimiter="\n"))
    assert TaskEvaluator(task, tok).replay_key() != TaskEvaluator(other, tok).replay_key()
    assert TaskEvaluator(task, tok).replay_key() == TaskEvaluator(load_task("sst2", "gu2024", env, 2, 0), tok).replay_key()
