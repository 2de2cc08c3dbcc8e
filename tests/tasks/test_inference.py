"""Batched inference equals the obvious one-example-at-a-time computation."""
import copy

import pytest

from editharm.tasks.inference import choice_logliks, continuation_logprobs, cut_at_stop, generate, generate_and_score
from tests.tasks.conftest import naive_logps


def _naive(model, tok, context, choice):
    return sum(naive_logps(model, tok, context, choice))


def test_choice_logliks_match_full_sequence_scoring(tiny):
    model, tok = tiny
    contexts = ["Is it?\nAnswer:", "A much longer context that pads the others.\nAnswer:", "x"]
    choices = [[" yes", " no"], [" True", " False", " maybe so"], [" a", " bb"]]
    got = choice_logliks(model, tok, contexts, choices, batch_size=2)
    for ctx, cs, scores in zip(contexts, choices, got):
        assert scores == pytest.approx([_naive(model, tok, ctx, c) for c in cs], abs=1e-4)


def test_single_token_choices_need_one_pass(tiny):
    model, tok = tiny
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        got = choice_logliks(model, tok, ["ab", "abcdef"], [["x", "y"], ["z", "w"]], batch_size=8)
    finally:
        hook.remove()
    assert len(calls) == 1
    assert got[1] == pytest.approx([_naive(model, tok, "abcdef", c) for c in ("z", "w")], abs=1e-4)


def test_batched_generation_equals_one_by_one(tiny):
    model, tok = tiny
    prompts = ["The cat", "A considerably longer prompt about cats", "Q"]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single and all(len(tok(o, add_special_tokens=False)["input_ids"]) <= 6 for o in batched)


def test_stop_strings_cut_the_continuation(tiny):
    model, tok = tiny
    full = generate(model, tok, ["The cat"], max_new_tokens=8)[0]
    stop = full[2:4]
    cut = generate(model, tok, ["The cat"], max_new_tokens=8, stop=[stop])[0]
    assert cut == cut_at_stop(full, [stop]) and stop not in cut
    assert cut_at_stop("a\nb.c", ["\n", "."]) == "a"


@pytest.mark.parametrize("stop", [[], ["a"], ["\n", "e"]])
def test_one_prefill_generates_and_scores_as_two_passes(tiny, stop):
    """Greedy outputs equal `generate`'s and gold log-probs equal `continuation_logprobs`', while each prompt
    goes through the model once: every other forward pass is the gold's tokens or one decoding step."""
    model, tok = tiny
    prompts = ["The cat", "A considerably longer prompt about cats", "Q", "xyz abc", "mm"]
    golds = [" a b", " c", " a much longer gold answer", " zz", " q"]
    calls = []  # (tokens fed, whether a cache was given)
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: calls.append((kw["input_ids"].shape[1], kw.get("past_key_values") is not None)), with_kwargs=True)
    try:
        texts, logps = generate_and_score(model, tok, prompts, golds, max_new_tokens=7, stop=stop, batch_size=3)
    finally:
        hook.remove()
    assert texts == generate(model, tok, prompts, max_new_tokens=7, stop=stop, batch_size=3)
    assert logps == pytest.approx(continuation_logprobs(model, tok, prompts, golds, batch_size=2), abs=1e-5)
    assert sum(not cached for _, cached in calls) == 2  # one prefill per batch of 3 and 2 prompts
    gold_widths = {len(tok(g, add_special_tokens=False)["input_ids"]) - 1 for g in golds}
    assert all(width == 1 or width in gold_widths for width, cached in calls if cached)


@pytest.mark.parametrize("max_new_tokens", [1, 7])
def test_rows_that_end_early_leave_the_batch_and_the_rest_decode_as_before(tiny, max_new_tokens):
    """A row ends at a stop string (chosen from its own greedy output, so it ends at the first token) or at
    EOS (the tokenizer's EOS set to another row's first token); the others decode on in a narrower batch and
    every output equals `generate`'s."""
    model, tok = tiny
    prompts = ["The cat", "A considerably longer prompt about cats", "Q", "xyz abc"]
    golds = [" a", " bb", " c", " dd"]
    free = generate(model, tok, prompts, max_new_tokens=7)
    stops = [free[1][0]]  # row 1 (and any row whose output has that character) ends there
    early = copy.deepcopy(tok)
    early.eos_token = tok.convert_ids_to_tokens(tok(free[0], add_special_tokens=False)["input_ids"][0])
    for t in (tok, early):
        rows = []
        hook = model.register_forward_pre_hook(
            lambda m, a, kw: rows.append(kw["input_ids"].shape[0]) if kw["input_ids"].shape[1] == 1 else None,
            with_kwargs=True)
        try:
            texts, _ = generate_and_score(model, t, prompts, golds, max_new_tokens, stop=stops, batch_size=4)
        finally:
            hook.remove()
        assert texts == generate(model, t, prompts, max_new_tokens, stop=stops, batch_size=4)
        if max_new_tokens > 1:
            assert rows and max(rows) < 4  # ended rows left before the first decoding step


def test_gold_padding_past_learned_positions_is_never_read():
    """GPT-2's positions index a table: in one batch, a prompt filling the context but for its own short gold beside
    a short prompt with a long gold once sent the first row's padding past the table (IndexError)."""
    from editharm import config, models
    from editharm.tasks.inference import generate_and_score

    spec = config.model_config("tiny-gpt2", architecture={**config.model_config("tiny-gpt2").architecture,
                                                          "n_positions": 64})
    model, tok = models.tiny(spec)
    texts, logps = generate_and_score(model.eval(), tok, ["a" * 60, "b"], [" c", " " + "d" * 40], max_new_tokens=2,
                                      batch_size=2)
    assert len(texts) == 2 and all(lp < 0 for lp in logps)
