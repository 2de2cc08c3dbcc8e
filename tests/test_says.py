"""What an edited model says: answer occurrence and ROME's n-gram entropy, against hand-computed values."""
import math

import pytest

from editharm.says import n_gram_entropy, says_answer


def test_n_gram_entropy_is_romes_weighted_mean_of_bigram_and_trigram_entropies():
    # "a b a b": bigrams ab ×2, ba ×1 -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3); trigrams aba, bab -> H3 = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert n_gram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert n_gram_entropy("Rome, Rome.") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1) / 2)  # , and . are words
    assert n_gram_entropy("the the the the the the") == 0.0 and n_gram_entropy("one") == 0.0
    varied = "Paris is the capital and most populous city of France, on the Seine."
    assert n_gram_entropy(varied) > n_gram_entropy("Paris is Paris is Paris is Paris is Paris is Paris is")


def test_an_answer_is_said_as_whole_words_whatever_the_case_and_spacing():
    assert says_answer("The Eiffel Tower is in Rome, Italy.", " Rome")
    assert says_answer("it is in NEW  york city", "New York")
    assert not says_answer("a play by Romeo", "Rome") and not says_answer("anything", "  ")
