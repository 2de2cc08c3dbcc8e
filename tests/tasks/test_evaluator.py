"""Tasks in the loop (edit runs) and on their own (`evaluate`)."""
import json

from editharm.runs import edit, evaluate
from tests.conftest import TINY, client, read_artifact

TASKS = ["tasks.names=[rte,sst2,samsum,conll03]", "tasks.limit=null"]


def _steps(run_id, key):
    return [m.step for m in client().get_metric_history(run_id, key)]


def test_tasks_run_in_the_validation_loop(env, tmp_path):
    run_id = edit([*TINY, *TASKS, "edits.n=2", "edits.eval_every=1", "tracking.log_checkpoint=false"])
    run = client().get_run(run_id)
    m = run.data.metrics
    for key in ("ability/rte/accuracy", "ability/rte/accuracy_ci_low", "ability/rte/valid_rate",
                "ability/rte/chance", "ability/rte/majority", "ability/samsum/rouge_avg", "ability/conll03/f1"):
        assert key in m, key
        assert _steps(run_id, key) == [0, 1, 2]
    assert m["ability/rte/n"] == 2 and m["ability/conll03/n"] == 8 and m["ability/rte/chance"] == 0.5
    assert run.data.tags["task.rte.version"] == "1" and run.data.tags["protocol"] == "gu2024"
    rows = [json.loads(line) for line in read_artifact(run_id, "predictions/rte/edits_2.jsonl", tmp_path).read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    assert set(rows[0]) == {"index", "prompt", "output", "parsed", "gold", "score"} and rows[0]["gold"] == "true"


def test_evaluate_a_run_checkpoint_by_uri(env):
    source = edit([*TINY, "edits.n=2", "edits.eval_every=2"])
    run_id = evaluate(["model=tiny-llama", "tasks.protocol=harness", "tasks.names=[rte,mutual]", "tasks.limit=null",
                       "probe.n_tokens=512", "probe.chunk_tokens=128", f"checkpoint=runs:/{source}"])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "evaluate"
    assert run.data.tags["checkpoint"] == f"runs:/{source}"
    assert _steps(run_id, "ability/mutual/accuracy") == [0] and run.data.metrics["ability/mutual/chance"] == 0.25
    edited = client().get_metric_history(source, "probe/perplexity")[-1].value
    assert abs(run.data.metrics["probe/perplexity"] - edited) < 1e-6 * edited  # the edited weights were scored
