"""Task metrics on hand-computed cases."""
import pytest

from editharm.tasks.metrics import Accuracy, EntityF1, ExactMatch, Rouge, squad_normalize


def test_accuracy_counts_invalid_as_wrong_and_reports_valid_only_accuracy():
    m = Accuracy()
    m.update([0, 1, 2, 3], ["a", None, "b", "b"], ["a", "a", "b", "c"])
    out = m.compute()
    assert out["accuracy"] == pytest.approx(0.5) and out["n"] == 4
    assert out["valid_rate"] == pytest.approx(0.75) and out["accuracy_valid"] == pytest.approx(2 / 3)
    assert 0.0 <= out["accuracy_ci_low"] <= 0.5 <= out["accuracy_ci_high"] <= 1.0


def test_bootstrap_interval_collapses_when_every_example_agrees():
    m = Accuracy()
    m.update(list(range(10)), ["x"] * 10, ["x"] * 10)
    out = m.compute()
    assert out["accuracy_ci_low"] == out["accuracy_ci_high"] == 1.0


def test_result_does_not_depend_on_update_order_or_split():
    preds, targets = ["a", "b", None, "a", "c", "a"], ["a", "a", "a", "a", "c", "b"]
    one, two = Accuracy(), Accuracy()
    one.update(list(range(6)), preds, targets)
    two.update([5, 3, 1], [preds[5], preds[3], preds[1]], [targets[5], targets[3], targets[1]])
    two.update([4, 2, 0], [preds[4], preds[2], preds[0]], [targets[4], targets[2], targets[0]])
    assert one.compute() == two.compute()


def test_squad_exact_match_and_contains():
    assert squad_normalize("The Eiffel  Tower!") == "eiffel tower"
    m = ExactMatch()
    m.update([0, 1, 2, 3], ["The Eiffel Tower!", "it is the eiffel tower", "eiffel", None],
             [("eiffel tower",), ("Eiffel Tower", "tower"), ("eiffel tower",), ("x",)])
    out = m.compute()
    assert out["exact_match"] == pytest.approx(1 / 4)   # only the first
    assert out["contains"] == pytest.approx(2 / 4)      # the first two
    assert out["valid_rate"] == pytest.approx(3 / 4)


def test_rouge_by_hand():
    m = Rouge()
    m.update([0], ["the cat sat"], ["the cat sat on the mat"])
    out = m.compute()
    # unigrams: P = 3/3, R = 3/6; bigrams: P = 2/2, R = 2/5; LCS = 3: P = 1, R = 1/2
    r1, r2, rl = 2 * 0.5 / 1.5, 2 * 0.4 / 1.4, 2 * 0.5 / 1.5
    assert (out["rouge1"], out["rouge2"], out["rougeL"]) == pytest.approx((r1, r2, rl))
    assert out["rouge_avg"] == pytest.approx((r1 + r2 + rl) / 3)


def test_empty_summary_scores_zero():
    m = Rouge()
    m.update([0], [None], ["the cat sat"])
    assert m.compute()["rouge_avg"] == 0.0


def test_entity_micro_f1_by_hand():
    m = EntityF1()
    m.update([0, 1, 2], [("EU", "german"), ("X",), None], [("EU", "German", "British"), (), ("London",)])
    out = m.compute()
    # tp = 2 (case-insensitive), fp = 1 (X), fn = 2 (British, London)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 4)
    assert out["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_entity_matching_is_one_to_one():
    m = EntityF1()
    m.update([0], [("EU", "EU", "EU")], [("EU",)])
    out = m.compute()
    assert out["precision"] == pytest.approx(1 / 3) and out["recall"] == 1.0
