"""What an edited model *says*: greedy generations after the edit's prompts, scored for the new and the old answer,
and ROME's fluency (n-gram entropy) of text generated about the edited subjects.

    says_answer("The Eiffel Tower is in Rome, Italy", " Rome")            # True
    n_gram_entropy("the cat sat on the mat the cat sat on the mat")        # ROME's fluency of one text, in bits

ROME (Meng et al. 2022, `experiments/py/eval_utils_counterfact.py`) scores fluency as the mean over texts of
mean_n(w_n · H_n), H_n the entropy in bits of the text's n-gram frequencies, n = 2, 3, w = 2/3, 4/3, over NLTK's
`word_tokenize`; here words are split by `WORD` (runs of word characters, or one other non-space character), which
differs from NLTK's Treebank rules on contractions ("don't": one word and a quote here, "do" + "n't" there), and
generation is greedy (ROME sampled top-k 5), so repeated loops lower it more than in ROME's figures.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Generation:
    """How an evaluation generates: tokens after each prompt and paraphrase, the templates ("{}" = the subject)
    whose continuations are scored for fluency, and their length."""

    max_new_tokens: int
    fluency_templates: tuple[str, ...]
    fluency_tokens: int


def _normal(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def says_answer(text: str, answer: str) -> bool:
    """Whether `answer` occurs in `text` as whole words (case, spacing and punctuation spacing aside)."""
    want = _normal(answer)
    return bool(want) and f" {want} " in f" {_normal(text)} "


def n_gram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """mean_n(w_n · H_n): ROME's fluency of one text. A text with no n-grams of some n scores 0 for it (ROME's
    code divides by zero there)."""
    words = WORD.findall(text)
    out = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        out.append(w * -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0)
    return sum(out) / len(out)
