"""Tasks in the loop (edit runs) and on their own (`evaluate`)."""
import json

from editharm.runs import edit, evaluate
from tests.conftest import TINY, client, read_artifact

TASKS = ["tasks.names=[rte,sst2,samsum,conll03]", "tasks.limit=null"]


def _steps(run_id, key):
    return [m.step for m in client().get_metric_history(run_id, key)]


def test_tasks_run_in_the_validation_loop(env, tmp_path):
    """Each task plots four series (headline score, gold log-probability, each with its paired difference); every
    figure of an evaluation, intervals and secondary scores included, is in its table `evaluations/edits_<k>.json`."""
    run_id = edit([*TINY, *TASKS, "edits.n=2", "edits.eval_every=1", "tracking.log_checkpoint=false"])
    run = client().get_run(run_id)
    m = run.data.metrics
    headlines = {"rte": "accuracy", "sst2": "accuracy", "samsum": "rouge_avg", "conll03": "f1"}
    for task, score in headlines.items():
        series = {k.split("/")[-1] for k in m if k.startswith(f"ability/{task}/")}
        assert series == {score, f"{score}_delta", "gold_logprob", "gold_logprob_delta"}, task
        assert _steps(run_id, f"ability/{task}/{score}") == [0, 1, 2]
        assert _steps(run_id, f"ability/{task}/{score}_delta") == [1, 2]  # paired from step 0, which has none
    tables = {k: json.loads(read_artifact(run_id, f"evaluations/edits_{k}.json", tmp_path / str(k)).read_text())
              for k in (0, 1, 2)}
    for key in ("ability/rte/accuracy_ci_low", "ability/rte/valid_rate", "ability/conll03/gold_logprob_ci_high",
                "ability/conll03/precision", "ability/samsum/rouge1"):
        assert key in tables[0] and key in tables[2], key
    for key in ("ability/rte/accuracy_delta_ci_low", "ability/samsum/rouge_avg_delta_ci_high"):
        assert key not in tables[0] and key in tables[2], key
    for step, table in tables.items():  # the series are the table's own figures
        for key in m:
            if key.startswith("ability/") and key in table:
                assert table[key] == [h.value for h in client().get_metric_history(run_id, key) if h.step == step][0]
    assert not any(k.rsplit("/", 1)[-1] in ("n", "chance", "majority") for k in m)  # constants: params, once
    p = run.data.params
    assert p["ability/rte/n"] == "2" and p["ability/conll03/n"] == "8" and p["ability/rte/chance"] == "0.5"
    assert p["ability/rte/majority"] == "0.5" and "ability/samsum/majority" not in p
    assert run.data.tags["task.rte.version"] == "1" and run.data.tags["protocol"] == "gu2024"
    rows = [json.loads(line) for line in read_artifact(run_id, "predictions/rte/edits_2.jsonl", tmp_path).read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    assert set(rows[0]) == {"index", "prompt", "output", "parsed", "gold", "score", "gold_logprob"}
    assert rows[0]["gold"] == "true" and rows[0]["gold_logprob"] < 0


def test_evaluate_a_run_checkpoint_by_uri(env):
    source = edit([*TINY, "edits.n=2", "edits.eval_every=2"])
    run_id = evaluate(["model=tiny-llama", "tasks.protocol=harness", "tasks.names=[rte,mutual]", "tasks.limit=null",
                       "probe.n_tokens=512", "probe.chunk_tokens=128", f"checkpoint=runs:/{source}"])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "evaluate"
    assert run.data.tags["checkpoint"] == f"runs:/{source}"
    assert _steps(run_id, "ability/mutual/accuracy") == [0] and run.data.params["ability/mutual/chance"] == "0.25"
    m = run.data.metrics
    assert "ability/mutual/gold_mass" not in m and m["ability/mutual/gold_logprob"] < 0
    assert not any(k.endswith("_delta") for k in m)  # one evaluation: no baseline to differ from
    edited = client().get_metric_history(source, "probe/perplexity")[-1].value
    assert abs(run.data.metrics["probe/perplexity"] - edited) < 1e-6 * edited  # the edited weights were scored


def test_portability_is_scored_like_generalization(env, tmp_path):
    """`edit/<data>/portability_token_acc` at step 0 is the mean over requests of each request's mean token
    accuracy of its portability answers, as `scoring.score` computes it on the unedited model."""
    import torch

    from editharm import config, models, scoring
    from tests.conftest import write_jsonl

    pairs = [[("Peru's capital city is", " Lima"), ("Lima is the capital of", " Peru")],
             [("The Eiffel Tower stands in", " Paris")]]
    records = [{"prompt": "The capital of Peru is", "subject": "Peru", "target_new": " Cusco", "portability": pairs[0]},
               {"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": " Rome",
                "portability": pairs[1]}]
    path = write_jsonl(tmp_path / "port.jsonl", records)
    run_id = edit([*TINY, f"edits.dataset={path}", "edits.n=2", "edits.eval_every=2", "tracking.log_checkpoint=false",
                   "tracking.log_model=false"])
    model, tok = models.load(config.load(["model=tiny-llama"]).model, models.cache_root())
    with torch.no_grad():
        means = [sum(s.token_acc for s in scoring.score(model, tok, [q for q, _ in p], [a for _, a in p], 8)) / len(p)
                 for p in pairs]
    history = {m.step: m.value for m in client().get_metric_history(run_id, "edit/port/portability_token_acc")}
    assert set(history) == {0, 2} and abs(history[0] - sum(means) / 2) < 1e-9
    rows = [json.loads(line) for line in read_artifact(run_id, "predictions/edit/edits_2.jsonl",
                                                       tmp_path / "p").read_text().splitlines()]
    assert [len(r["portability"]) for r in rows] == [2, 1]
