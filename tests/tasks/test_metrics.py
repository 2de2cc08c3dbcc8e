"""Task metrics on hand-computed cases."""
import pytest
import torch

from editharm.tasks.metrics import (Accuracy, EntityF1, ExactMatch, Rouge, bootstrap, interval95, paired_bootstrap,
                                    squad_normalize)


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


def _mean(rows):
    return {"x": rows.mean(-2)[..., 0]}


def test_paired_bootstrap_difference_by_hand():
    base = torch.tensor([[1.0], [0.0], [1.0], [0.0], [0.0], [1.0], [0.0], [0.0]])
    now = torch.tensor([[1.0], [1.0], [1.0], [0.0], [1.0], [1.0], [0.0], [0.0]])  # two more right: +2/8
    boot = paired_bootstrap(now, base, _mean, 1000, seed=0)["x"]
    lo, hi = interval95(boot)
    assert boot.shape == (1000,) and lo <= 0.25 <= hi and lo >= 0.0  # no example got worse


def test_paired_bootstrap_of_a_constant_difference_has_zero_width():
    base = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    lo, hi = interval95(paired_bootstrap(base + 1.0, base, _mean, 500, seed=3)["x"])
    assert lo == hi == 1.0


def test_pairing_narrows_the_interval_of_correlated_rows():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(200, 1, generator=g, dtype=torch.float64)
    now = base + 0.1 + 0.1 * torch.randn(200, 1, generator=g, dtype=torch.float64)
    paired = interval95(paired_bootstrap(now, base, _mean, 1000, seed=0)["x"])
    unpaired = interval95(_mean(bootstrap(now, 1000, 0))["x"] - _mean(bootstrap(base, 1000, 1))["x"])
    assert paired[0] <= 0.1 <= paired[1]
    assert (paired[1] - paired[0]) < 0.25 * (unpaired[1] - unpaired[0])


def test_metric_deltas_come_after_a_baseline_and_use_its_aggregate():
    m = EntityF1()
    golds = [("EU", "German"), ("London",), ("Peter",), ()]
    m.update([0, 1, 2, 3], [("EU",), None, ("Peter",), ("X",)], golds)
    before = m.compute()
    assert not any("delta" in k for k in before)
    m.keep_baseline()
    m.reset()
    m.update([2, 3, 0, 1], [("Peter",), None, ("EU", "German"), ("London",)], [golds[i] for i in (2, 3, 0, 1)])
    after = m.compute()
    assert after["f1_delta"] == pytest.approx(after["f1"] - before["f1"]) and after["f1_delta"] > 0
    assert after["f1_delta_ci_low"] <= after["f1_delta"] <= after["f1_delta_ci_high"]
    assert {"precision_delta", "recall_delta_ci_high"} <= set(after)


def test_deltas_refuse_other_examples_than_the_baseline():
    m = Accuracy()
    m.update([0, 1], ["a", "b"], ["a", "a"])
    m.compute()
    m.keep_baseline()
    m.reset()
    m.update([0, 2], ["a", "b"], ["a", "a"])
    with pytest.raises(ValueError, match="baseline"):
        m.compute()
