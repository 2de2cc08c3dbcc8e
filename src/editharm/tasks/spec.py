"""A task is data: `configs/task/<protocol>/<name>.yaml` loaded into a typed `TaskSpec`.

Pipeline: source file -> (process) docs -> seeded stable subset -> prompt -> generate | score choices
-> parse chain -> metric. Bump `version` whenever the prompt, the parse chain or the metric changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from editharm.config import find, names
from editharm.errors import ConfigError

PROTOCOLS = ("gu2024", "harness")
KINDS = ("generate", "choice")


@dataclass
class HubSource:
    path: str = MISSING
    name: Optional[str] = None
    split: str = "validation"


@dataclass
class Source:
    file: str = MISSING
    """Path relative to the data directory (JSONL, or JSON array)."""
    hub: Optional[HubSource] = None
    """Fallback when no data directory is set (needs network or a hub cache)."""


@dataclass
class Generation:
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=list)
    """Decoding stops when the continuation contains any of these; the text is cut before it."""


@dataclass
class Gold:
    """The gold text that `gold_logprob` teacher-forces after the prompt (generation tasks), from the target:
    a string target as it is; a list target (open QA answers, CoNLL entities) its first item, or, with `join`,
    all its items joined by it, and `empty` when the list is empty."""

    join: Optional[str] = None
    empty: str = ""


@dataclass
class TaskSpec:
    name: str = MISSING
    version: int = MISSING
    protocol: str = MISSING
    title: str = MISSING
    """What the score measures, in words."""
    source: Source = field(default_factory=Source)
    process: Optional[str] = None
    """A registered document processor (adds or rewrites fields before prompting)."""
    expand: Optional[str] = None
    """A registered expander turning one document into several items (CoNLL: one per entity type)."""
    kind: str = "generate"
    """`generate` (greedy decoding, parsed) or `choice` (highest log-likelihood continuation)."""
    prompt: str = MISSING
    """`str.format` template over the document's fields."""
    fewshot: list[dict[str, str]] = field(default_factory=list)
    """Demonstrations rendered with `fewshot_template` and joined with `fewshot_delimiter` before the prompt."""
    fewshot_template: str = ""
    fewshot_delimiter: str = "\n\n"
    choices: list[str] = field(default_factory=list)
    """`choice` tasks: fixed continuations, or empty to read them from `choices_field`."""
    choices_field: Optional[str] = None
    target_delimiter: str = " "
    """Prepended to each choice continuation (lm-evaluation-harness convention) and to the gold text."""
    target: str = ""
    """Template of the gold answer; mapped through `target_map` when given."""
    target_map: dict[str, Any] = field(default_factory=dict)
    target_field: Optional[str] = None
    """A field holding a list of gold answers (open QA), used instead of `target`."""
    gold: Gold = field(default_factory=Gold)
    """How the gold text of the likelihood score is made from the target (generation tasks)."""
    generation: Generation = field(default_factory=Generation)
    parse: list[Any] = field(default_factory=list)
    """Parser chain: names, or one-key mappings `{name: {arg: value}}`; a parser may return None (invalid)."""
    metric: str = MISSING
    chance: float = 0.0
    """Score of uniform random guessing (0 for open generation)."""
    truncate: Optional[str] = None
    """`left`: a prompt too long for the model's context keeps its last tokens (counted and logged as
    `task.<name>.truncated`); None: such a prompt is an error before compute."""
    fixes: list[str] = field(default_factory=list)
    """Bugs of the paper's script that this config fixes (gu2024 protocol)."""


def task_path(name: str, protocol: str) -> Path:
    return find(f"task/{protocol}/{name}.yaml")


def task_names(protocol: str) -> list[str]:
    return names(f"task/{protocol}")


def load_spec(name: str, protocol: str) -> TaskSpec:
    """The typed spec of task `name` in `protocol`; unknown names or keys fail with what is valid."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"tasks.protocol={protocol!r} is not valid; choose one of: {', '.join(PROTOCOLS)}")
    path = task_path(name, protocol)
    if not path.is_file():
        raise ConfigError(f"unknown task {name!r} in protocol {protocol}; valid: {', '.join(task_names(protocol))}")
    try:
        spec = OmegaConf.merge(OmegaConf.structured(TaskSpec), OmegaConf.load(path))
        spec = OmegaConf.to_object(spec)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}") from None
    if spec.truncate not in (None, "left"):
        raise ConfigError(f"{path}: truncate={spec.truncate!r}; valid: left, or leave it out")
    if spec.kind not in KINDS:
        raise ConfigError(f"{path}: kind={spec.kind!r} is not one of {', '.join(KINDS)}")
    if spec.protocol != protocol or spec.name != name:
        raise ConfigError(f"{path}: name/protocol fields must be {name}/{protocol}")
    return spec
