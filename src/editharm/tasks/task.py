"""A loaded task: its spec plus the rendered items (prompt, choices, target) of a stable subset.

    task = load_task("rte", "gu2024", root=data_dir, limit=100, seed=0)
    task.items[0].prompt, task.parse(" True")
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editharm.errors import DataError
from editharm.registry import PROCESSORS, lookup
from editharm.tasks.parsers import run_chain
from editharm.tasks.spec import TaskSpec, load_spec


@dataclass(frozen=True)
class Item:
    index: int
    """Position in the task's evaluated list (stable across runs with the same limit and seed)."""
    prompt: str
    target: Any
    choices: tuple[str, ...] = ()


@dataclass
class Task:
    spec: TaskSpec
    items: list[Item]

    def parse(self, text: str):
        return run_chain(list(self.spec.parse), text)


def load_task(name: str, protocol: str, root: Path | None, limit: int | None = None, seed: int = 0) -> Task:
    spec = load_spec(name, protocol)
    docs = read_docs(spec, root)
    docs = [docs[i] for i in stable_subset(len(docs), limit, f"{name}:{seed}")]
    if spec.process:
        docs = [lookup(PROCESSORS, spec.process, "processor")(d) for d in docs]
    if spec.expand:
        docs = [item for d in docs for item in lookup(PROCESSORS, spec.expand, "processor")(d)]
    return Task(spec, [render(spec, i, d) for i, d in enumerate(docs)])


def stable_subset(n: int, limit: int | None, key: str) -> list[int]:
    """`limit` indices chosen by a seeded hash order, returned in file order. Subsets are nested: the
    first 100 of a key are inside its first 200, so numbers at different limits stay comparable."""
    if limit is None or limit >= n:
        return list(range(n))
    ranked = sorted(range(n), key=lambda i: hashlib.sha256(f"{key}:{i}".encode()).digest())
    return sorted(ranked[:limit])


def render(spec: TaskSpec, index: int, doc: dict) -> Item:
    try:
        shots = [spec.fewshot_template.format(**shot) for shot in spec.fewshot]
        prompt = spec.fewshot_delimiter.join([*shots, spec.prompt.format(**doc)])
        if spec.target_field:
            target: Any = tuple(doc[spec.target_field])
        else:
            target = spec.target.format(**doc)
            target = spec.target_map.get(target, target) if spec.target_map else target
        choices: tuple[str, ...] = ()
        if spec.kind == "choice":
            texts = list(doc[spec.choices_field]) if spec.choices_field else list(spec.choices)
            choices = tuple(spec.target_delimiter + c for c in texts)
            target = target if isinstance(target, int) else texts.index(target)
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(f"task {spec.name} ({spec.protocol}): document {index} does not fit the config: {err!r}") from None
    return Item(index, prompt, target, choices)


def read_docs(spec: TaskSpec, root: Path | None) -> list[dict]:
    """Documents from `<root>/<source.file>` (JSONL or a JSON array), else from the hub fallback."""
    if root is not None:
        path = root / spec.source.file
        if not path.is_file():
            raise DataError(f"task {spec.name}: {spec.source.file} not found in the data directory {root}")
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line.strip()]
    hub = spec.source.hub
    if hub is None:
        raise DataError(f"task {spec.name}: no data directory is set and the task has no hub source; set "
                        f"EDITHARM_DATA_DIR (or data_dir=...) to a folder holding {spec.source.file}")
    try:
        import datasets

        return [dict(row) for row in datasets.load_dataset(hub.path, hub.name, split=hub.split)]
    except Exception as err:  # offline hub access fails in many ways
        raise DataError(f"task {spec.name}: cannot load hub dataset {hub.path}/{hub.name} ({str(err).splitlines()[0]}); "
                        f"set EDITHARM_DATA_DIR to a folder holding {spec.source.file}") from None
