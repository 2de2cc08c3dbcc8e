"""Document processors: add the fields a prompt template or a target needs (registered by name)."""
from __future__ import annotations

from editharm.registry import register_processor
from editharm.tasks.parsers import canonical_number


@register_processor("gsm8k")
def gsm8k(doc: dict) -> dict:
    """`answer_number`: the gold final answer after `####`; `rationale`: the gold solution before it."""
    rationale, _, final = doc["answer"].partition("#### ")
    return {**doc, "rationale": rationale, "answer_number": canonical_number(final.strip())}


@register_processor("first_passage")
def first_passage(doc: dict) -> dict:
    """The paper's NQ file carries one generated background passage as `output[0]`."""
    return {**doc, "passage": doc["output"][0]}


@register_processor("options_abcd")
def options_abcd(doc: dict) -> dict:
    return {**doc, **{f"o{i}": option for i, option in enumerate(doc["options"])}}


_DETOKENIZE = ((" '", "'"), (" \n", "\n"), ("\n ", "\n"), (" n't", "n't"), ("`` ", '"'), ("''", '"'),
               (" :", ":"), (" ;", ";"), (" !", "!"), (" ?", "?"), (" ,", ","), (" .", "."))


def detokenize(text: str) -> str:
    """Undo MuTual's space-separated tokenization (`do n't` -> `don't`, `home .` -> `home.`)."""
    for old, new in _DETOKENIZE:
        text = text.replace(old, new)
    return text


@register_processor("mutual_detokenize")
def mutual_detokenize(doc: dict) -> dict:
    return {**doc, "article": detokenize(doc["article"]), "options": [detokenize(o) for o in doc["options"]]}
