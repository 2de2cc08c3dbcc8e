"""CoNLL-2003 NER as generation: one prompt per (sentence, entity type), the model lists entities.

Gold spans come from proper IOB decoding (seqeval's `get_entities`, which handles IOB1 and IOB2 and
entities that end a sentence); predictions are the comma-separated entities of the first output line.
"""
from __future__ import annotations

from seqeval.metrics.sequence_labeling import get_entities

from editharm.registry import register_parser, register_processor

TYPES = (("PER", "Person"), ("LOC", "Location"), ("ORG", "Organization"), ("MISC", "Miscellaneous"))


def join_tokens(tokens: list[str]) -> str:
    """The paper's sentence text: tokens joined by spaces, with "," and "." attached to the token before."""
    text = ""
    for token in tokens:
        text += token if token in (",", ".") or not text else " " + token
    return text


def gold_entities(tokens: list[str], tags: list[str]) -> dict[str, tuple[str, ...]]:
    """Entity strings by CoNLL type, decoded from IOB tags."""
    out: dict[str, list[str]] = {code: [] for code, _ in TYPES}
    for kind, start, end in get_entities(list(tags)):
        out.setdefault(kind, []).append(join_tokens(tokens[start:end + 1]))
    return {k: tuple(v) for k, v in out.items()}


@register_processor("conll_types")
def conll_types(doc: dict) -> list[dict]:
    """One item per entity type, each with the sentence text and that type's gold entities."""
    sentence = join_tokens(doc["tokens"])
    golds = gold_entities(doc["tokens"], doc["ner_tags"])
    return [{**doc, "sentence": sentence, "type_code": code, "type_name": name, "entities": golds[code]}
            for code, name in TYPES]


@register_parser("entity_list")
def entity_list(text: str) -> tuple[str, ...]:
    """Entities of the first line, split on commas and semicolons; `None`/`none`/`N/A` means no entity."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    parts = [p.strip().strip(".\"'") for p in line.replace(";", ",").split(",")]
    return tuple(p for p in parts if p and p.lower() not in ("none", "n/a", "no entity", "nothing"))
