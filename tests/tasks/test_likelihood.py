"""The gold answer's likelihood beside every task's metric equals the direct one-example-at-a-time computation."""
from types import SimpleNamespace

import pytest
import torch

from editharm import config, models
from editharm.tasks import load_task
from editharm.tasks.evaluator import TaskEvaluator
from editharm.tasks.inference import choice_logliks, continuation_logprobs, generate
from editharm.tasks.likelihood import gold_text
from editharm.tasks.spec import Gold, load_spec
from tests.tasks.conftest import naive_logps


def _mean_logp(model, tok, context, continuation):
    lps = naive_logps(model, tok, context, continuation)
    return sum(lps) / len(lps)


def _evaluate(ev, model, tok):
    module = SimpleNamespace(scoring_model=lambda dtype: model, tokenizer=tok)
    for batch in ev.dataloader():
        ev.update(module, batch)
    values, rows = ev.compute()
    ev.reset()
    return values, rows


def test_gold_text_per_kind_of_target():
    assert gold_text(Gold(), " Anna will bring cake. ") == "Anna will bring cake."
    assert gold_text(Gold(), ("William Shakespeare", "Shakespeare")) == "William Shakespeare"  # nq_open
    conll = load_spec("conll03", "harness").gold
    assert gold_text(conll, ("EU", "German")) == "EU, German" and gold_text(conll, ()) == "None"
    assert load_spec("nq_open", "harness").gold == Gold()


def test_continuation_logprobs_match_unpadded_scoring(tiny):
    model, tok = tiny
    contexts = ["Q: who?\nA:", "A much longer context that pads the others in its batch.\nA:", "x", "Summary:"]
    conts = [" Paris", " William Shakespeare wrote it", " a", " Anna will bring cake."]
    got = continuation_logprobs(model, tok, contexts, conts, batch_size=3)
    assert got == pytest.approx([_mean_logp(model, tok, c, t) for c, t in zip(contexts, conts)], abs=1e-4)


@pytest.mark.parametrize("name,protocol", [("conll03", "gu2024"), ("nq_open", "harness"), ("samsum", "gu2024")])
def test_generation_gold_logprob_is_the_mean_token_logprob_of_the_gold_text(tiny, data_dir, name, protocol):
    model, tok = tiny
    task = load_task(name, protocol, data_dir)
    ev = TaskEvaluator(task, tok, batch_size=3)
    values, rows = _evaluate(ev, model, tok)
    by_index = {it.index: it for it in task.items}
    want = [_mean_logp(model, tok, by_index[r["index"]].prompt, " " + gold_text(task.spec.gold, r["gold"])) for r in rows]
    assert [r["gold_logprob"] for r in rows] == pytest.approx(want, abs=1e-4)
    assert values["gold_logprob"] == pytest.approx(sum(want) / len(want), abs=1e-4)
    assert values["gold_logprob_ci_low"] <= values["gold_logprob"] <= values["gold_logprob_ci_high"]
    assert "gold_mass" not in values and "n" not in values and "gold_logprob_delta" not in values


@pytest.mark.parametrize("protocol", ["gu2024", "harness"])
def test_every_task_scores_as_one_prompt_at_a_time(data_dir, protocol):
    """The evaluator's token-budget batches and one-prefill scoring give each example what the plain
    per-example path gives: the same greedy output and gold log-probability, or the same choice scores."""
    model, tok = models.load(config.load(["model=tiny-llama"]).model, models.cache_root())
    batches = []
    for name in config.TASKS:
        task = load_task(name, protocol, data_dir)
        ev = TaskEvaluator(task, tok, batch_size=3, batch_tokens=96)
        batches.append(len(ev.dataloader()))
        _, rows = _evaluate(ev, model, tok)
        spec = task.spec
        for row in rows:
            item = task.items[row["index"]]
            if spec.kind == "choice":
                assert row["output"] == pytest.approx(choice_logliks(model, tok, [item.prompt], [list(item.choices)])[0],
                                                      abs=1e-4)
                continue
            gold = spec.target_delimiter + gold_text(spec.gold, item.target)
            assert row["output"] == generate(model, tok, [item.prompt], spec.generation.max_new_tokens,
                                             list(spec.generation.stop))[0], (name, row["index"])
            assert row["gold_logprob"] == pytest.approx(continuation_logprobs(model, tok, [item.prompt], [gold])[0],
                                                        abs=1e-4)
    assert max(batches) > 1  # the budget split some task


@pytest.mark.parametrize("name", ["sst2", "mutual"])
def test_choice_gold_logprob_and_mass_by_hand(tiny, data_dir, name):
    model, tok = tiny
    task = load_task(name, "harness", data_dir)
    ev = TaskEvaluator(task, tok, batch_size=2)
    values, rows = _evaluate(ev, model, tok)
    masses = []
    for row in rows:
        item = task.items[row["index"]]
        logliks = [sum(naive_logps(model, tok, item.prompt, c)) for c in item.choices]
        mass = torch.tensor(logliks, dtype=torch.float64).exp()
        masses.append(float(mass[item.target] / mass.sum()))
        assert row["gold_logprob"] == pytest.approx(logliks[item.target], abs=1e-4)
    assert values["gold_mass"] == pytest.approx(sum(masses) / len(masses), abs=1e-5)
    assert values["gold_mass_ci_low"] <= values["gold_mass"] <= values["gold_mass_ci_high"]
    assert "valid_rate" in values and "gold_logprob_ci_high" in values


def test_deltas_are_paired_with_the_first_evaluation(data_dir):
    model, tok = models.load(config.load(["model=tiny-llama"]).model, models.cache_root())
    ev = TaskEvaluator(load_task("rte", "harness", data_dir), tok, batch_size=1)
    first, _ = _evaluate(ev, model, tok)
    assert not any("_delta" in k for k in first)
    assert ev.constants() == {"n": 2, "chance": 0.5, "majority": 0.5}
    again, _ = _evaluate(ev, model, tok)  # same weights: every difference is zero, and so is its interval
    for score in ("accuracy", "gold_logprob", "gold_mass"):
        assert again[f"{score}_delta"] == again[f"{score}_delta_ci_low"] == again[f"{score}_delta_ci_high"] == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved, _ = _evaluate(ev, model, tok)
    assert moved["gold_logprob_delta"] == pytest.approx(moved["gold_logprob"] - first["gold_logprob"])
    assert moved["gold_logprob_delta"] != 0.0
