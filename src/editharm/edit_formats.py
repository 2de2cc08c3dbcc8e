"""Edit-data record formats: ours, the paper's and EasyEdit's zsRE, EasyEdit's CounterFact, KnowEdit, MQuAKE.

    records, errors = read_records(path)          # a JSON array or JSONL, with each record's location
    fmt = detect(records, path)                   # or FORMATS[name] from `edits.format`
    canonical = fmt.convert(record)               # one source record -> one or more records in our fields

A canonical record has our field names: `prompt`, `subject`, `target_new`, optional `ground_truth`, `rephrase`,
`case_id`, and `locality` / `portability` as lists of (question, answer) pairs, so that a list-valued source field
(KnowEdit's several locality sets, MQuAKE's three multi-hop questions) becomes several measurements. Each format
names every field it reads or deliberately leaves out (`used`, `unused`); a field outside both is unknown and is
reported by `unmapped`, never dropped silently.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from editharm.errors import DataError

Pairs = list[tuple[str, str]]


@dataclass(frozen=True)
class EditFormat:
    """One record layout: how to recognise it, read it, and which of its fields carry nothing we measure."""

    name: str
    origin: str
    signature: frozenset[str]
    """Top-level keys every record of this format has (auto-detection picks the most specific match)."""
    used: frozenset[str]
    unused: MappingProxyType
    """Fields this format knows and leaves out, each with why."""
    convert: Callable[[dict], list[dict]]
    """One source record -> canonical records; `ValueError` says what is wrong with it."""
    success: bool | None = None
    """Whether P(new) > P(old) is part of its protocol (the old answer is the true one); None: when every record
    gives an old answer."""
    grouped: bool = False
    """A record becomes several requests that must be applied together, in order (MQuAKE's cases)."""


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field {field} must be a string, got {type(value).__name__}")
    return value


def _first_answer(value: Any, field: str) -> str:
    """An answer given as a string, a list of aliases, or a list of alias lists (KnowEdit, MQuAKE): the first."""
    while isinstance(value, list) and value:
        value = value[0]
    return _text(value, field)


def _optional(record: dict, field: str) -> str | None:
    value = record.get(field)
    return None if value is None else _text(value, field)


def _pairs(prompts: Any, answers: Any, field: str) -> Pairs:
    """(question, answer) pairs from a string pair or equal-length lists of them; none if both are missing."""
    if prompts is None and answers is None:
        return []
    if prompts is None or answers is None:
        raise ValueError(f"{field}: a prompt and its answer must be given together")
    if isinstance(prompts, str):
        return [(prompts, _first_answer(answers, field))]
    if not isinstance(prompts, list) or not isinstance(answers, list) or len(prompts) != len(answers):
        raise ValueError(f"{field}: prompts and answers must be two strings or two lists of the same length")
    return [(_text(p, field), _first_answer(a, field)) for p, a in zip(prompts, answers)]


def _portability(value: Any, field: str) -> Pairs:
    """Our portability field: one object or a list of them (with one of `PAIR_KEYS`), or [question, answer] lists."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return []
    items = value if isinstance(value, (list, tuple)) and not _is_pair(value) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            keys = next((k for k in PAIR_KEYS if k[0] in item and k[1] in item), None)
            if keys is None:
                raise ValueError(f"field {field}: a portability object needs one of the key pairs {PAIR_KEYS}, "
                                 f"got {sorted(item)}")
            item = [item[keys[0]], _first_answer(item[keys[1]], field)]
        if not _is_pair(item):
            raise ValueError(f"field {field}: a portability pair is [question, answer] or an object, got {item!r}")
        out.append((item[0], item[1]))
    return out


PAIR_KEYS = (("prompt", "answer"), ("New Question", "New Answer"), ("prompt", "ground_truth"))
"""The (question, answer) keys of a portability object: ours, the paper's zsRE file, EasyEdit's and KnowEdit's."""


def _is_pair(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) and v.strip()
                                                                        for v in value))


def _ours(r: dict) -> list[dict]:
    return [{"prompt": r.get("prompt"), "subject": r.get("subject"), "target_new": r.get("target_new"),
             "ground_truth": _optional(r, "ground_truth"), "rephrase": _optional(r, "rephrase"),
             "case_id": r.get("case_id"),
             "locality": _pairs(r.get("locality_prompt"), r.get("locality_answer"), "locality_prompt/locality_answer")
             + _portability(r.get("more_locality"), "more_locality"),
             "portability": _portability(r.get("portability"), "portability")}]


def _zsre(r: dict) -> list[dict]:
    answers = r.get("answers")
    old, field = (r.get("pred"), "pred") if r.get("pred") is not None else (answers or None, "answers")
    return [{"prompt": r.get("src"), "subject": r.get("subject"), "target_new": r.get("alt"),
             "ground_truth": None if old is None else _first_answer(old, field), "rephrase": _optional(r, "rephrase"),
             "case_id": r.get("case_id"), "locality": _pairs(r.get("loc"), r.get("loc_ans"), "loc/loc_ans"),
             "portability": _portability(r.get("portability"), "portability")}]


def _counterfact(r: dict) -> list[dict]:
    return [{"prompt": r.get("prompt"), "subject": r.get("subject"), "target_new": r.get("target_new"),
             "ground_truth": _optional(r, "ground_truth"), "rephrase": _optional(r, "rephrase_prompt"),
             "case_id": r.get("case_id"),
             "locality": _pairs(r.get("locality_prompt"), r.get("locality_ground_truth"),
                                "locality_prompt/locality_ground_truth"),
             "portability": _portability(r.get("portability"), "portability")}]


def _categories(value: Any, field: str) -> Pairs:
    """KnowEdit's {category: [{prompt, ground_truth}, ...]}: every pair of every category, in order."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ValueError(f"field {field} must be an object of categories, got {type(value).__name__}")
    out = []
    for category, items in value.items():
        for item in items if isinstance(items, list) else [items]:
            if not isinstance(item, dict) or "prompt" not in item or "ground_truth" not in item:
                raise ValueError(f"field {field}.{category}: each item needs prompt and ground_truth")
            out += _pairs(item["prompt"], item["ground_truth"], f"{field}.{category}")
    return out


def _knowedit(r: dict) -> list[dict]:
    rephrase = r.get("rephrase_prompt", r.get("rephrase"))
    if isinstance(rephrase, list):  # one paraphrase is measured; KnowEdit gives one per record
        rephrase = rephrase[0] if rephrase else None
    truth = r.get("ground_truth")
    return [{"prompt": r.get("prompt"), "subject": r.get("subject"), "target_new": _first_answer(r.get("target_new"),
                                                                                              "target_new"),
             "ground_truth": None if truth in (None, []) else _first_answer(truth, "ground_truth"),
             "rephrase": None if rephrase is None else _text(rephrase, "rephrase_prompt"), "case_id": r.get("case_id"),
             "locality": _categories(r.get("locality"), "locality"),
             "portability": _categories(r.get("portability"), "portability")}]


def _entity(value: Any, field: str) -> str:
    """MQuAKE's {"str": name, "id": Q-id} (or a plain name)."""
    return _first_answer(value.get("str") if isinstance(value, dict) else value, f"{field}.str")


def _mquake(r: dict) -> list[dict]:
    """A case's rewrites become one request each, applied in order; its multi-hop questions, whose answer is the
    case's `new_answer` once all its rewrites are in, are the portability questions of its last request."""
    rewrites = r.get("requested_rewrite")
    if not isinstance(rewrites, list) or not rewrites:
        raise ValueError("field requested_rewrite must be a non-empty list of rewrites")
    out = []
    for k, rw in enumerate(rewrites):
        if not isinstance(rw, dict) or not {"prompt", "subject", "target_new"} <= set(rw):
            raise ValueError(f"requested_rewrite[{k}] needs prompt, subject and target_new")
        template, subject = _text(rw["prompt"], "requested_rewrite.prompt"), rw["subject"]
        if "{}" not in template:
            raise ValueError(f"requested_rewrite[{k}].prompt has no '{{}}' for the subject: {template!r}")
        old = rw.get("target_true")
        out.append({"prompt": template.format(subject), "subject": subject,
                    "target_new": _entity(rw["target_new"], "target_new"),
                    "ground_truth": None if not old else _entity(old, "target_true"),
                    "rephrase": _optional(rw, "question"), "case_id": f"{r.get('case_id', '')}.{k}",
                    "locality": [], "portability": []})
    questions = r.get("questions") or []
    answer = _first_answer(r.get("new_answer"), "new_answer") if questions else ""
    out[-1]["portability"] = [(_text(q, "questions"), answer) for q in questions]
    return out


OURS = frozenset({"prompt", "subject", "target_new", "ground_truth", "rephrase", "locality_prompt", "locality_answer",
                  "case_id", "portability", "more_locality"})
FORMATS = MappingProxyType({f.name: f for f in (
    EditFormat("editharm", "ours: JSONL or a JSON array of {prompt, subject, target_new, ...}",
               frozenset({"prompt", "subject", "target_new"}), OURS, MappingProxyType({}), _ours),
    EditFormat("zsre", "the paper's, MEND's and EasyEdit's zsRE (src, alt, pred, rephrase, loc, loc_ans)",
               frozenset({"src", "subject", "alt"}),
               frozenset({"src", "subject", "alt", "pred", "rephrase", "loc", "loc_ans", "portability", "case_id"}),
               MappingProxyType({"answers": "the gold answers (used as the old answer only without pred)",
                                 "cond": "MEND's conditioning string"}), _zsre, success=False),
    EditFormat("counterfact", "EasyEdit's CounterFact (rephrase_prompt, locality_prompt, locality_ground_truth)",
               frozenset({"prompt", "subject", "target_new", "locality_ground_truth"}),
               frozenset({"prompt", "subject", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt",
                          "locality_ground_truth", "case_id", "portability"}), MappingProxyType({}), _counterfact,
               success=True),
    EditFormat("knowedit", "KnowEdit (ZsRE, Wiki_recent, Wiki_counterfact: locality and portability by category)",
               frozenset({"prompt", "subject", "target_new", "locality"}),
               frozenset({"prompt", "subject", "target_new", "ground_truth", "rephrase", "rephrase_prompt",
                          "locality", "portability", "case_id"}),
               MappingProxyType({"cond": "MEND's conditioning string"}), _knowedit),
    EditFormat("mquake", "MQuAKE (princeton-nlp/MQuAKE datasets/: requested_rewrite, questions, new_answer)",
               frozenset({"requested_rewrite", "questions", "new_answer"}),
               frozenset({"requested_rewrite", "questions", "new_answer", "case_id"}),
               MappingProxyType({"answer": "the multi-hop answer before the edits",
                                 "answer_alias": "its aliases", "new_answer_alias": "aliases of the new answer "
                                 "(the first form of new_answer is scored)",
                                 "single_hops": "the chain's single-hop questions before the edits",
                                 "new_single_hops": "the single-hop questions after them",
                                 "orig": "the Wikidata triples"}), _mquake, grouped=True),
)})
REFUSED = (  # layouts we recognise and do not read, with what to do instead
    (frozenset({"requested_rewrite", "paraphrase_prompts", "neighborhood_prompts"}),
     "ROME's original CounterFact layout; use the EasyEdit/MEND CounterFact files (edits=counterfact) instead"),
    (frozenset({"concept", "text", "labels"}), "KnowEdit's WikiBio (long-form hallucination edits), not fact edits"),
)


def read_records(path: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    """`(where, record)` for every record of a JSONL file or a JSON array, and an error for each line that is not
    JSON (a JSON array that does not parse is one `DataError`)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
        return [(f"record {i}", r) for i, r in enumerate(records, 1)], []  # counted from 1, as lines are
    out, errors = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as err:
            errors.append(f"line {lineno}: not valid JSON ({err.msg})")
    return out, errors


def detect(records: list[tuple[str, Any]], path: Path | str) -> EditFormat:
    """The format whose signature the first record has (the most specific, when one signature holds another)."""
    first = next((r for _, r in records if isinstance(r, dict)), None)
    if first is None:
        raise DataError(f"{path} holds no JSON object records")
    keys = set(first)
    for signature, why in REFUSED:
        if signature <= keys:
            raise DataError(f"{path} looks like {why}")
    found = [f for f in FORMATS.values() if f.signature <= keys]
    found = [f for f in found if not any(f.signature < g.signature for g in found)]
    if len(found) == 1:
        return found[0]
    listing = "; ".join(f"{f.name}: {', '.join(sorted(f.signature))}" for f in FORMATS.values())
    if not found:
        raise DataError(f"cannot tell the record format of {path}: its first record has the fields "
                        f"{', '.join(sorted(keys))}; each format needs ({listing})")
    raise DataError(f"the records of {path} fit several formats ({', '.join(f.name for f in found)}): set "
                    "edits.format= to one of them")


def unmapped(records: list[tuple[str, Any]], fmt: EditFormat) -> tuple[Counter, Counter]:
    """(unknown fields, known unused fields) over all records, each with the number of records that have it."""
    unknown, unused = Counter(), Counter()
    for _, record in records:
        if isinstance(record, dict):
            for key in record:
                if key not in fmt.used:
                    (unused if key in fmt.unused else unknown)[key] += 1
    return unknown, unused
