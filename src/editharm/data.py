"""Edit requests (ZsRE, CounterFact, a user's file in any of `edit_formats`), validated before any compute, and the
DataModule.

    requests = load_requests(cfg.edits, data_dir(cfg.data_dir))

Every record is checked (required fields present, non-empty target, subject inside the prompt); all bad
records are reported at once with their line numbers (or array indices).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import lightning as L
from torch.utils.data import DataLoader

from editharm import edit_formats
from editharm.config import EditsConfig
from editharm.errors import DataError

log = logging.getLogger(__name__)


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
    more_locality: tuple[tuple[str, str], ...] = ()
    """Further (prompt, answer) pairs whose answer must not change (a record's second and later locality pairs)."""

    @property
    def localities(self) -> tuple[tuple[str, str], ...]:
        """Every (prompt, answer) pair whose answer must not change."""
        first = ((self.locality_prompt, self.locality_answer),) if self.locality_prompt else ()
        return first + self.more_locality


@dataclass(frozen=True)
class EditSource:
    """Where a named edit dataset lives under the data directory, and its record format (`edit_formats`)."""

    folder: str
    splits: MappingProxyType
    format: str
    success: bool
    """Whether P(new) > P(old) ("success") is part of this dataset's protocol."""


OUR_FIELDS = edit_formats.OURS
REQUIRED = ("prompt", "subject", "target_new")
EDIT_SOURCES = MappingProxyType({
    # The paper's 1,037-record edit set; `pred` is what the paper passes as the old answer.
    "zsre": EditSource("zsre", MappingProxyType({"edit": "zsre_mend_eval_portability_gpt4.jsonl",
                                                 "train": "zsre_mend_train-1k.jsonl"}), "zsre", success=False),
    "counterfact": EditSource("counterfact", MappingProxyType({s: f"counterfact-{s}.jsonl"
                                                               for s in ("edit", "train", "val")}),
                              "counterfact", success=True),
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


def edit_file(cfg: EditsConfig, root: Path | None) -> tuple[Path, str, bool | None]:
    """`(path, record format, success protocol)` of the configured edit dataset (format `auto`: detected on
    reading; success `None`: decided by the records)."""
    if cfg.format != "auto" and cfg.format not in edit_formats.FORMATS:
        raise DataError(f"unknown edits.format {cfg.format!r}; valid: auto, {', '.join(edit_formats.FORMATS)}")
    if cfg.dataset not in EDIT_SOURCES:
        path = Path(cfg.dataset).expanduser()
        if path.suffix not in (".json", ".jsonl"):
            raise DataError(f"unknown edits.dataset {cfg.dataset!r}; valid: {', '.join(EDIT_SOURCES)} or a path to a "
                            f".json or .jsonl file of edit records (formats: {', '.join(edit_formats.FORMATS)})")
        if not path.is_file():
            raise DataError(f"edits.dataset file {path} does not exist")
        return path, cfg.format, None
    src = EDIT_SOURCES[cfg.dataset]
    if cfg.format not in ("auto", src.format):
        raise DataError(f"edits.format={cfg.format} does not apply to edits.dataset={cfg.dataset} (its records are "
                        f"{src.format}); leave it at auto, or give a file as edits.dataset")
    if cfg.split not in src.splits:
        raise DataError(f"edits.split={cfg.split!r} is not a split of {cfg.dataset}; valid: {', '.join(src.splits)}")
    rel = Path(src.folder) / src.splits[cfg.split]
    if root is None:
        raise DataError(f"no data directory is set, and {cfg.dataset} has no hub dataset in this record "
                        f"format: set EDITHARM_DATA_DIR (or data_dir=...) to a folder holding {rel}")
    if not (root / rel).is_file():
        raise DataError(f"{rel} not found in the data directory {root}")
    return root / rel, src.format, src.success


def load_requests(cfg: EditsConfig, root: Path | None) -> tuple[list[EditRequest], bool]:
    """The `cfg.n` selected requests (all records validated first) and whether `success` applies."""
    path, fmt, success = edit_file(cfg, root)
    requests, form = read_file(path, fmt)
    if success is None:  # a user's file: its format's protocol, else success needs an old answer on every record
        success = form.success if form.success is not None else all(r.ground_truth for r in requests)
    if cfg.n > len(requests):
        raise DataError(f"edits.n={cfg.n} but {path} holds only {len(requests)} requests")
    if form.grouped:
        _whole_cases(cfg, requests, path)
    order = random.Random(cfg.seed).sample(range(len(requests)), cfg.n) if cfg.shuffle else range(cfg.n)
    return [requests[i] for i in order], success


def _whole_cases(cfg: EditsConfig, requests: list[EditRequest], path: Path) -> None:
    """A case's requests (MQuAKE: case_id "<case>.<k>") are applied together and in order before its multi-hop
    questions are scored: no shuffling, no reverting between them, no case cut by `edits.n`."""
    if cfg.shuffle or cfg.mode == "single":
        raise DataError(f"{path} holds cases of several edits whose multi-hop questions need all of them applied in "
                        f"order: edits.shuffle=true and edits.mode=single break them up; use the file's order and "
                        f"a mode that keeps edits")
    case = lambda r: r.case_id.rsplit(".", 1)[0]  # noqa: E731
    if cfg.n < len(requests) and case(requests[cfg.n]) == case(requests[cfg.n - 1]):
        ends = [i + 1 for i in range(len(requests))
                if i + 1 == len(requests) or case(requests[i + 1]) != case(requests[i])]
        near = sorted(ends, key=lambda e: abs(e - cfg.n))[:2]
        raise DataError(f"edits.n={cfg.n} cuts case {case(requests[cfg.n - 1])} of {path} in two (its multi-hop "
                        f"questions need all its edits); whole cases end at edits.n={' or '.join(map(str, sorted(near)))}")


def read_requests(path: Path, fmt: str = "auto", skipped: list[str] | None = None) -> list[EditRequest]:
    """`read_file`'s requests."""
    return read_file(path, fmt, skipped)[0]


def read_file(path: Path, fmt: str = "auto", skipped: list[str] | None = None
              ) -> tuple[list[EditRequest], edit_formats.EditFormat]:
    """All records of a JSONL file or JSON array in format `fmt` (`auto`: detected) as `EditRequest`s; raises
    `DataError` listing every bad record; fields the format does not read are reported in one warning. With a
    `skipped` list, records with an empty target are left out and their locations appended there instead (MEND's
    training data skips them)."""
    records, errors = edit_formats.read_records(path)
    form = edit_formats.detect(records, path) if fmt == "auto" else edit_formats.FORMATS[fmt]
    unknown, unused = edit_formats.unmapped(records, form)
    if unknown:
        log.warning(f"{path} ({form.name} format): fields not read, so not measured: "
                    + ", ".join(f"{k} ({n} records)" for k, n in unknown.items())
                    + f"; read: {', '.join(sorted(form.used))}")
    log.info(f"{path}: {form.name} format ({form.origin})")
    if unused:
        log.info(f"{path} ({form.name} format) leaves out by design: "
                 + "; ".join(f"{k} ({form.unused[k]})" for k in unused))
    requests = []
    for where, record in records:
        try:
            if not isinstance(record, dict):
                raise ValueError("a record must be a JSON object")
            made = [_request(c, default_id=where.split()[-1]) for c in form.convert(record)]
        except ValueError as err:
            if skipped is not None and str(err).startswith("empty target"):
                skipped.append(where)
                continue
            errors.append(f"{where}: {err}")
            continue
        requests += made
    if errors:
        errors.sort(key=lambda e: int(e.split()[1].rstrip(":")))
        shown = "\n  ".join(errors[:50]) + (f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else "")
        raise DataError(f"{len(errors)} bad edit record(s) in {path} ({form.name} format):\n  {shown}")
    if not requests:
        raise DataError(f"{path} holds no records")
    return requests, form


def _request(c: dict, default_id: str) -> EditRequest:
    """An `EditRequest` from a canonical record (`edit_formats`), checked; `ValueError` says what is wrong."""
    for key in REQUIRED:
        if c.get(key) is None:
            raise ValueError(f"missing required field {key}")
        if not isinstance(c[key], str):
            raise ValueError(f"field {key} must be a string, got {type(c[key]).__name__}")
    if not c["target_new"].strip():
        raise ValueError("empty target (target_new)")
    if not c["subject"].strip():
        raise ValueError("empty subject")
    if c["subject"] not in c["prompt"]:
        raise ValueError(f"subject {c['subject']!r} does not occur in prompt {c['prompt']!r}")
    pairs = [tuple(p) for p in c.get("locality") or []]
    for question, answer in pairs:
        if not question.strip() or not answer.strip():
            raise ValueError(f"an empty locality prompt or answer in {(question, answer)!r}")
    return EditRequest(prompt=c["prompt"], subject=c["subject"], target_new=c["target_new"],
                       ground_truth=c.get("ground_truth"), rephrase=c.get("rephrase"),
                       locality_prompt=pairs[0][0] if pairs else None, locality_answer=pairs[0][1] if pairs else None,
                       more_locality=tuple(pairs[1:]), case_id=str(c.get("case_id") or default_id),
                       portability=tuple(tuple(p) for p in c.get("portability") or ()))


def requests_of(records) -> list[EditRequest]:
    """`EditRequest`s from EditRequests or plain dicts with our field names (prompt, subject, target_new; optional
    ground_truth, rephrase, locality_prompt, locality_answer (strings, or lists of the same length), more_locality,
    case_id, portability), checked as a file's records are: one `DataError` naming every bad record."""
    if isinstance(records, (EditRequest, dict)):
        records = [records]
    out, errors = [], []
    for i, record in enumerate(records):
        if isinstance(record, EditRequest):
            record = dataclasses.asdict(record)
        try:
            if not isinstance(record, dict):
                raise ValueError("a request must be a dict or an EditRequest")
            unknown = sorted(set(record) - OUR_FIELDS)
            if unknown:
                raise ValueError(f"unknown field(s) {unknown}; valid: {', '.join(sorted(OUR_FIELDS))}")
            out += [_request(c, default_id=str(i)) for c in edit_formats.FORMATS["editharm"].convert(record)]
        except ValueError as err:
            errors.append(f"request {i}: {err}")
    if errors:
        raise DataError(f"{len(errors)} bad edit request(s):\n  " + "\n  ".join(errors))
    if not out:
        raise DataError("no edit requests given")
    return out


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
