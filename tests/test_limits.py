"""Inputs longer than the model's context fail before compute (edit records, task prompts, the probe), or, for
tasks that say so, keep their last tokens; a repeated subject is edited at its last occurrence."""
import json
import time

import pytest

from editharm import config, limits, models, runs
from editharm.data import EditRequest
from editharm.errors import DataError
from editharm.methods._shared import subject_last
from editharm.tasks import load_task
from tests.conftest import TINY, client


@pytest.fixture(scope="module")
def tiny():
    return models.load(config.load(["model=tiny-llama"]).model, models.cache_root())


def test_context_length_reads_the_model_config(tiny):
    assert limits.context_length(tiny[0]) == 2048
    gpt2, _ = models.load(config.load(["model=tiny-gpt2"]).model, models.cache_root())
    assert limits.context_length(gpt2) == gpt2.config.n_positions


def test_a_request_past_the_context_is_refused_naming_it(tiny):
    _, tok = tiny
    fine = EditRequest("The capital of France is", "France", "Rome", case_id="a")
    long = EditRequest("word " * 600 + "France is in", "France", "Asia", rephrase="short", case_id="b")
    limits.check_requests([fine], tok, 512, margin=12)
    with pytest.raises(DataError, match=r"edit request 1 \(case_id b\): its prompt and answer are \d+ tokens; with 12 "
                                        r"for the method's context templates that exceeds the model's context length of 512"):
        limits.check_requests([fine, long], tok, 512, margin=12)
    near = EditRequest("x" * 505, "x", "y", case_id="c")  # fits alone, not with ROME's templates before it
    limits.check_requests([near], tok, 512)
    with pytest.raises(DataError, match="case_id c"):
        limits.check_requests([near], tok, 512, margin=limits.request_margin(config.load(["method=rome"]).method))


def test_an_edit_run_with_a_10000_token_prompt_fails_fast_and_is_marked_failed(env, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": "blah " * 2000 + "Toko Yasuda plays the", "subject": "Toko Yasuda",
                                "target_new": "piano"}) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="context length of 2048"):
        runs.edit([*TINY, f"edits.dataset={path}", "edits.n=1", "tasks.names=[]"])
    assert time.perf_counter() - t0 < 60
    (run,) = client().search_runs([e.experiment_id for e in client().search_experiments()])
    assert run.info.status == "FAILED" and "context length of 2048" in run.data.tags["error"]
    assert "edit/long/efficacy_token_acc" not in run.data.metrics  # nothing was computed


def test_task_prompts_truncate_where_the_task_says_and_fail_elsewhere(env, tiny):
    _, tok = tiny
    task = load_task("samsum", "gu2024", env, None, 0)  # truncate: left
    task.items[0] = type(task.items[0])(task.items[0].index, "hello " * 800 + "TL;DR:", task.items[0].target)
    counts = limits.fit_tasks([task], tok, 512)
    assert counts == {"samsum": 1}
    ids = tok(task.items[0].prompt)["input_ids"]
    assert len(ids) <= 512 - task.spec.generation.max_new_tokens and task.items[0].prompt.endswith("TL;DR:")
    gold = "x" * (task.spec.generation.max_new_tokens + 100)  # a gold summary longer than the generation budget:
    task.items[0] = type(task.items[0])(task.items[0].index, "hello " * 800 + "TL;DR:", gold)  # scored on the cache
    limits.fit_tasks([task], tok, 512)  # too, so it needs room (GPT-2's learned positions end at the limit)
    assert len(tok(task.items[0].prompt)["input_ids"]) <= 512 - len(tok(task.spec.target_delimiter + gold)["input_ids"])
    sst2 = load_task("sst2", "gu2024", env, None, 0)  # no truncation defined: an error naming the item
    sst2.items[1] = type(sst2.items[1])(sst2.items[1].index, "word " * 800, sst2.items[1].target, sst2.items[1].choices)
    with pytest.raises(DataError, match=r"task sst2, item 1: the prompt is \d+ tokens .* context length of 512"):
        limits.fit_tasks([sst2], tok, 512)


def test_a_probe_chunk_past_the_context_is_refused():
    cfg = config.load(["model=tiny-llama", "probe.chunk_tokens=1024"])
    with pytest.raises(DataError, match="probe.chunk_tokens=1024 exceeds the model's context length of 512"):
        limits.check_probe(cfg.probe, 512)


def test_a_repeated_subject_is_edited_at_its_last_occurrence(tiny):
    _, tok = tiny
    text = "Paris and Paris are in"
    ids = tok(text)["input_ids"]
    last = subject_last(tok, text, "Paris")
    first_end = len(tok("Paris")["input_ids"]) - 1  # the byte tokenizer: the first occurrence ends here
    assert last > first_end
    assert tok.decode(ids[: last + 1], skip_special_tokens=True) == "Paris and Paris"
