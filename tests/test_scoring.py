import pytest
import torch

from editharm import config, models, scoring


@pytest.fixture(scope="module")
def tiny():
    return models.load(config.load(["model=tiny-llama"]).model, models.cache_root())


def test_labels_cover_exactly_the_target_continuation(tiny):
    _, tok = tiny
    ids, mask, labels = scoring.encode_pairs(tok, ["ab", "abcd"], ["c", "xy"])
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    assert ids[0, :4].tolist() == enc("ab c") and mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert labels[0].tolist() == [-100, -100, *enc(" c"), -100, -100, -100]
    assert labels[1].tolist() == [-100] * 4 + enc(" xy")


def test_mean_nll_matches_transformers_loss(tiny):
    model, tok = tiny
    ids, mask, labels = scoring.encode_pairs(tok, ["The capital of France is"], ["Paris"])
    with torch.no_grad():
        ours = scoring.mean_nll(model, ids, mask, labels)
        ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(ours, ref)


def test_scores_do_not_depend_on_batching(tiny):
    model, tok = tiny
    prompts = ["A", "The mother tongue of Danielle Darrieux is", "Toko Yasuda plays the", "xyz"]
    targets = ["English", "French", "piano and more", "q"]
    one = scoring.score(model, tok, prompts, targets, batch_size=1)
    four = scoring.score(model, tok, prompts, targets, batch_size=4)
    for a, b in zip(one, four):
        assert a.nll == pytest.approx(b.nll, abs=1e-5) and a.predicted == b.predicted


def test_token_accuracy_by_hand(tiny):
    model, tok = tiny
    prompt, target = "Toko Yasuda plays the", "piano"
    p = tok(prompt)["input_ids"]
    t = tok(" piano", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p + t])).logits[0]
    argmax = logits[len(p) - 1:len(p) + len(t) - 1].argmax(-1).tolist()
    expected = sum(a == b for a, b in zip(argmax, t)) / len(t)
    s = scoring.score(model, tok, [prompt], [target])[0]
    assert s.predicted == tuple(argmax) and s.token_acc == pytest.approx(expected)


def test_last_positions_keep_the_logits_an_int_keeps(tiny):
    """The index `last_positions` gives on a CPU selects the logits the int does; a count beyond the width is refused
    (an index would wrap around to the last position)."""
    model, tok = tiny
    ids = torch.tensor([tok("The capital of France is")["input_ids"]] * 2)
    for n in (1, 3):
        keep = scoring.last_positions(ids.shape[1], n, ids.device)
        assert isinstance(keep, torch.Tensor)
        torch.testing.assert_close(model(input_ids=ids, logits_to_keep=keep).logits,
                                   model(input_ids=ids, logits_to_keep=n).logits, rtol=1e-5, atol=1e-5)
    assert scoring.last_positions(5, 2, "cuda:1") == 2  # off the CPU the int, whatever device the inputs are on
    with pytest.raises(ValueError, match="last 6 of 5"):
        scoring.last_positions(5, 6, "cpu")
