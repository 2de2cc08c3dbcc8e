"""Parsers: model output -> answer, or None when the output is not a valid answer.

A task's `parse` chain applies them in order; the first None makes the output invalid (counted wrong,
and in the valid-output rate).
"""
from __future__ import annotations

import re
import string

from editharm.registry import register_parser

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@register_parser("first_line")
def first_line(text: str) -> str | None:
    """The first non-empty line, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


@register_parser("first_word")
def first_word(text: str) -> str | None:
    """The first whitespace-separated word, lowercased, without surrounding punctuation."""
    words = text.split()
    word = words[0].strip(string.punctuation).lower() if words else ""
    return word or None


@register_parser("one_of")
def one_of(text: str | None, words: list[str]) -> str | None:
    return text if text in words else None


@register_parser("letter")
def letter(text: str, letters: str = "ABCD") -> str | None:
    """An option letter standing alone as the first word: `B`, `(B)`, `B.` -- not `But` or `All`."""
    words = text.split()
    word = words[0].strip("()[].:,") if words else ""
    return word if len(word) == 1 and word in letters else None


@register_parser("number")
def number(text: str, which: str = "first") -> str | None:
    """The first (or last) number in the text, canonical: no thousands separators, no trailing `.0`."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    return canonical_number(found[0] if which == "first" else found[-1])


def canonical_number(text: str) -> str:
    value = text.replace(",", "").rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value[1:] if value.startswith("+") else value


@register_parser("regex")
def regex(text: str, pattern: str, group: int = 1) -> str | None:
    match = re.search(pattern, text)
    return match.group(group) if match else None


@register_parser("strip_prefix")
def strip_prefix(text: str, prefixes: list[str]) -> str | None:
    """Drop one leading answer cue such as `Answer:` (case-insensitive)."""
    for prefix in prefixes:
        if text.lower().startswith(prefix.lower()):
            return text[len(prefix):].strip() or None
    return text


@register_parser("strip")
def strip(text: str) -> str | None:
    return text.strip() or None


def run_chain(chain: list, text: str):
    """Apply a parse chain (names or `{name: {kwargs}}`); None as soon as a parser rejects the output."""
    from editharm.registry import PARSERS, lookup

    value = text
    for step in chain:
        name, kwargs = (step, {}) if isinstance(step, str) else next(iter(step.items()))
        value = lookup(PARSERS, name, "parser")(value, **(kwargs or {}))
        if value is None:
            return None
    return value
