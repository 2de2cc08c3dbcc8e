"""An experiment is data: `configs/experiment/<name>.yaml` = shared overrides + named axes -> cells.

    spec = load("gu2024-sequential")
    for cell in cells(spec, ["tasks.limit=50"]):
        cell.name, cell.argv          # "rome·seq·n20", [*spec.overrides, "method=rome", "tasks.limit=50"]

Each axis maps value names to override lists; the cells are the product of the axes, in file order, named
by their values joined with "·" (plus the experiment's `label`). Overrides apply in the order shared,
axes, command line, so the command line wins. A cell's identity is the hash of its resolved config
(tracking keys left out): the same hash means the same run, which is how an interrupted grid resumes.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from editharm import config as C
from editharm.errors import ConfigError

SEP = "·"
PAPER_FIGURES = ("sequential", "batch", "batch-sequential", "rect")


@dataclass
class ReportSpec:
    x: str = "step"
    """`step` (edits applied, each cell a line) or an axis name whose value is read from `x_key` (one point a
    cell at its final step, lines over the other axes), e.g. `size` with `x_key: edits.n` for Batch-Single."""
    x_key: Optional[str] = None
    paper: Optional[str] = None
    """The paper's figure to draw beside ours as retention: one of PAPER_FIGURES."""


@dataclass
class ExperimentSpec:
    name: str = MISSING
    description: str = ""
    label: str = ""
    """Appended to every cell's name, e.g. `seq·n20`."""
    overrides: list[str] = field(default_factory=list)
    axes: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    report: ReportSpec = field(default_factory=ReportSpec)


@dataclass(frozen=True)
class Cell:
    name: str
    values: dict[str, str]
    """Axis name -> value name."""
    argv: list[str]


def experiment_names() -> list[str]:
    return C.group_names("experiment")


def config_dir_file(name: str) -> Path:
    return C.find(f"experiment/{name}.yaml")


def load(name: str) -> ExperimentSpec:
    """`configs/experiment/<name>.yaml`, or a YAML file path; unknown names and keys fail with what is valid."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = config_dir_file(name)
    if not path.is_file():
        raise ConfigError(f"unknown experiment {name!r}; valid: {', '.join(experiment_names())} (or a .yaml path)")
    try:
        spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentSpec),
                                                   {"name": path.stem}, OmegaConf.load(path)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}") from None
    if not spec.axes or not all(spec.axes.values()):
        raise ConfigError(f"{path}: `axes` must name at least one axis with at least one value")
    r = spec.report
    if r.x != "step" and (r.x not in spec.axes or not r.x_key):
        raise ConfigError(f"{path}: report.x={r.x!r} must be `step` or one of the axes ({', '.join(spec.axes)}) "
                          "with report.x_key naming the config key that holds its number")
    if r.paper is not None and r.paper not in PAPER_FIGURES:
        raise ConfigError(f"{path}: report.paper={r.paper!r}; valid: {', '.join(PAPER_FIGURES)}")
    return spec


def cells(spec: ExperimentSpec, extra: list[str] = ()) -> list[Cell]:
    """The product of the axes, each with its full override list (shared, axis values, then `extra`)."""
    axes = list(spec.axes.items())
    out = []
    for combo in itertools.product(*[list(values.items()) for _, values in axes]):
        values = {axis: value for (axis, _), (value, _) in zip(axes, combo)}
        name = SEP.join([*values.values(), *([spec.label] if spec.label else [])])
        argv = [*spec.overrides, *[o for _, overrides in combo for o in overrides], *C.split_args(list(extra))]
        out.append(Cell(name, values, argv))
    return out


def config_hash(tree) -> str:
    """What a cell computes, as a hash of its resolved config without the `tracking` keys (where it logs)."""
    node = OmegaConf.to_container(tree, resolve=True)
    node.pop("tracking", None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(node)).encode()).hexdigest()[:16]


def grid_hash(name: str, hashes: list[str]) -> str:
    """The grid's identity: its name and its cells' config hashes, in order."""
    return hashlib.sha256("\n".join([name, *hashes]).encode()).hexdigest()[:16]
