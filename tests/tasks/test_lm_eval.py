"""lm-evaluation-harness tasks as abilities (`tasks.names=[lm_eval:<task>]`): resolution and its errors, per-example
rows and paired deltas inside an edit run, generation tasks, and per-example agreement with our harness protocol.
Fixture tasks: tests/fixtures/lm_eval/ (JSONL beside each YAML, read offline)."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from editharm import config, evaluation, models
from editharm.errors import ConfigError, DataError
from editharm.module import EditModule
from editharm.tasks.task import stable_subset
from tests.conftest import TINY, client, read_artifact

pytest.importorskip("lm_eval")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval"
FAST = ["tasks.dtype=float32", "probe.perplexity=false", "tracking.log_checkpoint=false"]


@pytest.fixture(scope="module")
def tiny():
    return models.load(config.load(["model=tiny-llama"]).model, models.cache_root())


def _evaluate(model, tok, names: list[str], include=(), data_dir=None, **tasks) -> evaluation.Results:
    """`editharm.evaluate` with `tasks.lm_eval_include` (which the API call does not take)."""
    cfg = evaluation.configure(model, {"tasks": {"names": names, "lm_eval_include": [str(p) for p in include],
                                                 "dtype": "float32", **tasks}, "probe": {"perplexity": False},
                                       "data_dir": data_dir})
    loaded, _ = evaluation.load_tasks(cfg)
    evaluators = evaluation.ability_evaluators(cfg, tok, loaded, None)
    return evaluation.run(EditModule(cfg, model, tok, evaluators, n_requests=0))


def _load(names, include=(), **tasks):
    cfg = config.load(["model=tiny-llama", f"tasks.names={names}", *[f"tasks.{k}={v}" for k, v in tasks.items()],
                       f"tasks.lm_eval_include=[{','.join(map(str, include))}]"])
    return evaluation.load_tasks(cfg)


def test_edit_run_logs_per_example_rows_and_paired_deltas(env, tmp_path):
    from editharm.runs import edit

    run_id = edit([*TINY, *FAST, "tasks.names=[lm_eval:tiny_mc]", f"tasks.lm_eval_include=[{FIXTURES}]",
                   "tasks.limit=4", "edits.n=2", "edits.eval_every=2"])
    rows = {step: [json.loads(line) for line in read_artifact(
        run_id, f"predictions/lm_eval/tiny_mc/edits_{step}.jsonl", tmp_path / str(step)).read_text().splitlines()]
        for step in (0, 2)}
    docs = [json.loads(line) for line in (FIXTURES / "tiny_mc.jsonl").read_text().splitlines()]
    ids = stable_subset(len(docs), 4, "lm_eval:tiny_mc:0")  # the seeded stable subset, paired before and after
    for got in rows.values():
        assert [r["doc_id"] for r in got] == ids
        for r in got:
            doc = docs[r["doc_id"]]
            assert r["choices"] == [f" {o}" for o in doc["options"]] and r["gold"] == doc["answer"]
            assert len(r["output"]) == len(doc["options"]) and r["parsed"] == r["output"].index(max(r["output"]))
            assert r["acc"] == float(r["parsed"] == r["gold"]) and r["acc_norm"] in (0.0, 1.0)
            assert r["prompt"] == f"Question: {doc['question']}\nAnswer:"
            assert r["gold_logprob"] == r["output"][r["gold"]]
    history = {k: dict((m.step, m.value) for m in client().get_metric_history(run_id, f"ability/lm_eval/tiny_mc/{k}"))
               for k in ("acc", "acc_delta", "gold_logprob", "gold_logprob_delta")}
    mean = lambda step, key: sum(r[key] for r in rows[step]) / len(rows[step])  # noqa: E731
    assert history["acc"] == pytest.approx({0: mean(0, "acc"), 2: mean(2, "acc")})
    assert history["gold_logprob_delta"][2] == pytest.approx(mean(2, "gold_logprob") - mean(0, "gold_logprob"))
    assert history["gold_logprob_delta"][2] != 0  # the edits moved the weights the task is scored on
    table = json.loads(read_artifact(run_id, "evaluations/edits_2.json", tmp_path / "t").read_text())
    assert table["ability/lm_eval/tiny_mc/acc_delta"] == pytest.approx(mean(2, "acc") - mean(0, "acc"))
    assert table["ability/lm_eval/tiny_mc/acc_norm_delta_ci_low"] <= table["ability/lm_eval/tiny_mc/acc_norm_delta"]
    run = client().get_run(run_id)
    assert run.data.params["ability/lm_eval/tiny_mc/n"] == "4"
    assert run.data.tags["task.lm_eval/tiny_mc.version"] == "1.0"
    from editharm.report.collect import panels_of

    assert panels_of([run])[0].key == "ability/lm_eval/tiny_mc/acc"  # the report's and the results table's panel


def test_generation_task_scores_each_filter(tiny):
    model, tok = tiny
    res = _evaluate(model, tok, ["lm_eval:tiny_gen"], [FIXTURES])
    scores, rows = res.scores["lm_eval/tiny_gen"], res.rows["lm_eval/tiny_gen"]
    assert {"exact_match_number", "exact_match_raw", "gold_logprob"} <= set(scores) and len(rows) == 3
    for r in rows:  # at most 4 generated tokens, cut at the newline; the number filter's output is the prediction
        assert "\n" not in r["output"] and len(tok(r["output"], add_special_tokens=False)["input_ids"]) <= 4
        assert r["exact_match_raw"] == float(r["output"].strip().lower() == r["gold"])
        assert r["score"] == r["exact_match_number"] == float(r["parsed"] == r["gold"])


def test_per_example_predictions_equal_our_harness_tasks(tiny, shared_data, tmp_path):
    """The packaged lm-eval definitions (configs/task/lm_eval/) against our harness tasks of the same name, over the
    same first documents of the real files: the same prompts, choices, gold and predicted choice per example."""
    files = {"sst2": "sst2/dev.jsonl", "rte": "rte/dev.jsonl", "boolq": "boolq/superglue_val.jsonl"}
    for rel in files.values():
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_text("".join((shared_data / rel).read_text().splitlines(keepends=True)[:4]))
    model, tok = tiny
    names = [*files, *[f"lm_eval:{name}_local" for name in files]]
    res = _evaluate(model, tok, names, protocol="harness", limit=None, data_dir=str(tmp_path))
    for name in files:
        ours, theirs = res.rows[name], res.rows[f"lm_eval/{name}_local"]
        assert [r["index"] for r in ours] == [r["doc_id"] for r in theirs] == [0, 1, 2, 3]
        for a, b in zip(ours, theirs):
            assert (a["prompt"], a["gold"], a["parsed"]) == (b["prompt"], b["gold"], b["parsed"]), name
            assert a["output"] == pytest.approx(b["output"]) and b["acc"] == a["score"]
        assert res.scores[name]["accuracy"] == res.scores[f"lm_eval/{name}_local"]["acc"]


def test_unknown_task_is_one_error_before_any_model_loads():
    with pytest.raises(ConfigError, match=r"unknown lm-eval task 'tiny_mcq'.*lm-eval ls subtasks.*close: tiny_mc"):
        _load("[lm_eval:tiny_mcq]", [FIXTURES])


def test_without_lm_eval_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)  # an import of it fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'editharm\[lm-eval\]'"):
        _load("[sst2,lm_eval:tiny_mc]", [FIXTURES])


@pytest.mark.parametrize("change, error, match", [
    ({"metric_list": [{"metric": "f1"}]}, ConfigError, r"metric\(s\) f1 are not supported; supported: metrics that"),
    ({"output_type": "loglikelihood_rolling"}, ConfigError, r"output_type loglikelihood_rolling is not supported"),
    ({"generation_kwargs": {"do_sample": True}, "output_type": "generate_until"}, ConfigError, "sampling"),
    ({"dataset_kwargs": {"data_files": {"validation": "nowhere.jsonl"}}}, DataError, r"nowhere.jsonl is neither"),
])
def test_what_is_not_supported_fails_at_load(tmp_path, change, error, match):
    import yaml

    spec = {**yaml.safe_load((FIXTURES / "tiny_mc.yaml").read_text()), **change, "task": "tiny_odd"}
    shutil.copy(FIXTURES / "tiny_mc.jsonl", tmp_path)
    (tmp_path / "tiny_odd.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(error, match=match):
        _load("[lm_eval:tiny_odd]", [tmp_path])


def test_a_missing_include_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match="tasks.lm_eval_include: no such folder"):
        _load("[lm_eval:tiny_mc]", [tmp_path / "absent"])
