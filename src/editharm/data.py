"""Edit requests (ZsRE, CounterFact, a user's JSONL), validated before any compute, and the DataModule.

    requests = load_requests(cfg.edits, data_dir(cfg.data_dir))

Every record is checked (required fields present, non-empty target, subject inside the prompt); all bad
records are reported at once with their line numbers.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from editharm.config import EditsConfig
from editharm.errors import DataError


@dataclass(frozen=True)
class EditRequest:
    """One fact to edit: `prompt` (containing `subject`) should be continued by `target_new`."""

    prompt: str
    subject: str
    target_new: str
    ground_truth: str | None = None
    rephrase: str | None = None
    locality_prompt: str | None = None
    locality_answer: str | None = None
    case_id: str = ""
    portability: tuple[tuple[str, str], ...] = ()
    """(question, answer) pairs whose answer must change with the edit (multi-hop, reasoning): the edit's reach."""


@dataclass(frozen=True)
class EditSource:
    """Where a named edit dataset lives under the data directory, and how its fields map onto ours."""

    folder: str
    splits: MappingProxyType
    fields: MappingProxyType
    success: bool
    """Whether P(new) > P(old) ("success") is part of this dataset's protocol."""


OUR_FIELDS = {f: f for f in ("prompt", "subject", "target_new", "ground_truth", "rephrase",
                             "locality_prompt", "locality_answer", "case_id", "portability")}
REQUIRED = ("prompt", "subject", "target_new")
EDIT_SOURCES = MappingProxyType({
    # The paper's 1,037-record edit set; `pred` is what the paper passes as the old answer.
    "zsre": EditSource("zsre", MappingProxyType({"edit": "zsre_mend_eval_portability_gpt4.jsonl",
                                                 "train": "zsre_mend_train-1k.jsonl"}),
                       MappingProxyType({"prompt": "src", "subject": "subject", "target_new": "alt",
                                         "ground_truth": "pred", "rephrase": "rephrase",
                                         "locality_prompt": "loc", "locality_answer": "loc_ans",
                                         "portability": "portability"}),
                       success=False),
    "counterfact": EditSource("counterfact", MappingProxyType({s: f"counterfact-{s}.jsonl" for s in ("edit", "train", "val")}),
                              MappingProxyType({"prompt": "prompt", "subject": "subject", "target_new": "target_new",
                                                "ground_truth": "ground_truth", "rephrase": "rephrase_prompt",
                                                "locality_prompt": "locality_prompt",
                                                "locality_answer": "locality_ground_truth", "case_id": "case_id"}),
                              success=True),
})


def data_dir(configured: str | None) -> Path | None:
    """The data directory: the config's `data_dir`, else $EDITHARM_DATA_DIR, else None (hub names)."""
    value = configured or os.environ.get("EDITHARM_DATA_DIR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist (from data_dir or $EDITHARM_DATA_DIR)")
    return path


def edit_file(cfg: EditsConfig, root: Path | None) -> tuple[Path, MappingProxyType, bool]:
    """`(path, field map, success protocol)` of the configured edit dataset."""
    if cfg.dataset.endswith(".jsonl"):
        path = Path(cfg.dataset).expanduser()
        if not path.is_file():
            raise DataError(f"edits.dataset file {path} does not exist")
        return path, MappingProxyType(OUR_FIELDS), None
    if cfg.dataset not in EDIT_SOURCES:
        raise DataError(f"unknown edits.dataset {cfg.dataset!r}; valid: {', '.join(EDIT_SOURCES)} "
                        "or a path to a .jsonl file of {prompt, subject, target_new, ...} records")
    src = EDIT_SOURCES[cfg.dataset]
    if cfg.split not in src.splits:
        raise DataError(f"edits.split={cfg.split!r} is not a split of {cfg.dataset}; valid: {', '.join(src.splits)}")
    rel = Path(src.folder) / src.splits[cfg.split]
    if root is None:
        raise DataError(f"no data directory is set, and {cfg.dataset} has no hub dataset in this record "
                        f"format: set EDITHARM_DATA_DIR (or data_dir=...) to a folder holding {rel}")
    if not (root / rel).is_file():
        raise DataError(f"{rel} not found in the data directory {root}")
    return root / rel, src.fields, src.success


def load_requests(cfg: EditsConfig, root: Path | None) -> tuple[list[EditRequest], bool]:
    """The `cfg.n` selected requests (all records validated first) and whether `success` applies."""
    path, fields, success = edit_file(cfg, root)
    requests = parse_jsonl(path, fields)
    if success is None:  # a user's file: success needs an old answer on every record
        success = all(r.ground_truth for r in requests)
    if cfg.n > len(requests):
        raise DataError(f"edits.n={cfg.n} but {path} holds only {len(requests)} records")
    order = random.Random(cfg.seed).sample(range(len(requests)), cfg.n) if cfg.shuffle else range(cfg.n)
    return [requests[i] for i in order], success


def parse_jsonl(path: Path, fields: MappingProxyType, skipped: list[int] | None = None) -> list[EditRequest]:
    """All records of a JSONL file as `EditRequest`s; raises `DataError` listing every bad line. With a
    `skipped` list, records with an empty target are left out and their line numbers appended there instead
    (MEND's training data skips them)."""
    requests, errors = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                errors.append(f"line {lineno}: not valid JSON ({err.msg})")
                continue
            problem = _check(record, fields)
            if problem and skipped is not None and problem.startswith("empty target"):
                skipped.append(lineno)
                continue
            if problem:
                errors.append(f"line {lineno}: {problem}")
                continue
            values = {ours: record.get(theirs) for ours, theirs in fields.items() if ours != "portability"}
            values = {k: (str(v) if v is not None else None) for k, v in values.items()}
            values["case_id"] = values.get("case_id") or str(lineno)
            values["portability"] = portability_pairs(record.get(fields.get("portability", "")))
            requests.append(EditRequest(**values))
    if errors:
        shown = "\n  ".join(errors[:50]) + (f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else "")
        raise DataError(f"{len(errors)} bad edit record(s) in {path}:\n  {shown}")
    if not requests:
        raise DataError(f"{path} holds no records")
    return requests


def requests_of(records) -> list[EditRequest]:
    """`EditRequest`s from EditRequests or plain dicts with our field names (prompt, subject, target_new; optional
    ground_truth, rephrase, locality_prompt, locality_answer, case_id), checked as a JSONL file's records are: one
    `DataError` naming every bad record."""
    if isinstance(records, (EditRequest, dict)):
        records = [records]
    out, errors = [], []
    for i, record in enumerate(records):
        if isinstance(record, EditRequest):
            record = {k: getattr(record, k) for k in OUR_FIELDS}
        unknown = sorted(set(record) - set(OUR_FIELDS)) if isinstance(record, dict) else []
        problem = f"unknown field(s) {unknown}; valid: {', '.join(OUR_FIELDS)}" if unknown else _check(record, OUR_FIELDS)
        if problem:
            errors.append(f"request {i}: {problem}")
            continue
        out.append(EditRequest(**{**record, "case_id": str(record.get("case_id") or i),
                                  "portability": portability_pairs(record.get("portability"))}))
    if errors:
        raise DataError(f"{len(errors)} bad edit request(s):\n  " + "\n  ".join(errors))
    if not out:
        raise DataError("no edit requests given")
    return out


def _check(record: Any, fields: MappingProxyType) -> str | None:
    if not isinstance(record, dict):
        return "a record must be a JSON object"
    missing = [fields[k] for k in REQUIRED if fields[k] not in record]
    if missing:
        return f"missing required field(s) {', '.join(missing)}"
    prompt, subject, target = (record[fields[k]] for k in REQUIRED)
    for key, value in zip(REQUIRED, (prompt, subject, target)):
        if not isinstance(value, str):
            return f"field {fields[key]} must be a string, got {type(value).__name__}"
    if not target.strip():
        return f"empty target ({fields['target_new']})"
    if not subject.strip():
        return f"empty subject ({fields['subject']})"
    if subject not in prompt:
        return f"subject {subject!r} does not occur in prompt {prompt!r}"
    for key in ("rephrase", "locality_prompt", "locality_answer", "ground_truth"):
        value = record.get(fields.get(key, ""))
        if value is not None and not isinstance(value, str):
            return f"field {fields[key]} must be a string, got {type(value).__name__}"
    if bool(record.get(fields.get("locality_prompt", ""))) != bool(record.get(fields.get("locality_answer", ""))):
        return "locality prompt and locality answer must be given together"
    try:
        portability_pairs(record.get(fields.get("portability", "")))
    except ValueError as err:
        return f"field {fields['portability']}: {err}"
    return None


PAIR_KEYS = (("prompt", "answer"), ("New Question", "New Answer"), ("prompt", "ground_truth"))
"""The (question, answer) keys of a portability object: ours, the paper's zsRE file, EasyEdit's."""


def portability_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    """A record's portability questions as (question, answer) pairs: none; one object or a list of them (with one
    of `PAIR_KEYS`); or [question, answer] lists. `ValueError` says what a pair must look like."""
    if value is None or value == () or value == []:
        return ()
    items = value if isinstance(value, (list, tuple)) and not _is_pair(value) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            keys = next((k for k in PAIR_KEYS if k[0] in item and k[1] in item), None)
            if keys is None:
                raise ValueError(f"a portability object needs one of the key pairs {PAIR_KEYS}, got {sorted(item)}")
            item = (item[keys[0]], item[keys[1]])
        if not _is_pair(item):
            raise ValueError(f"a portability pair is [question, answer] or an object, got {item!r}")
        out.append((item[0], item[1]))
    return tuple(out)


def _is_pair(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) and v.strip()
                                                                        for v in value))


def read_probe_text(root: Path | None, n_chars: int) -> str:
    """Held-out text for the perplexity probe: WikiText-2 *validation* (statistics corpora use the test
    split and BoolQ test passages, so the two never overlap)."""
    if root is not None and (root / "wikitext" / "wikitext-2_valid.tokens").is_file():
        text = (root / "wikitext" / "wikitext-2_valid.tokens").read_text(encoding="utf-8")
    else:
        try:
            import datasets

            rows = datasets.load_dataset("wikitext", "wikitext-2-v1", split="validation")["text"]
        except Exception as err:  # offline hub access fails in several ways
            raise DataError("the perplexity probe needs WikiText-2 validation text: set EDITHARM_DATA_DIR to a "
                            f"folder holding wikitext/wikitext-2_valid.tokens, or probe.perplexity=false ({err})") from None
        text = "".join(rows)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text[:n_chars]


class EditDataModule(L.LightningDataModule):
    """Train: batches of edit requests, in order. Validation: one loader per evaluator."""

    def __init__(self, requests: list[EditRequest], batch_size: int, evaluators: list):
        super().__init__()
        self.requests = requests
        self.batch_size = batch_size
        self.evaluators = evaluators

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.requests, batch_size=self.batch_size, shuffle=False, collate_fn=list)

    def val_dataloader(self) -> list[DataLoader]:
        return [ev.dataloader() for ev in self.evaluators]
