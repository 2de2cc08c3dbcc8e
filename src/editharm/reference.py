"""The documentation's reference pages, generated from the code: every config key with its type, default and the
docstring written under it in its dataclass, and the command line's help. `docs/hooks.py` puts them into the site.

    config_markdown()   # run keys, then each method's and guard's keys
    cli_markdown()      # `editharm --help` and each command's
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """The string literal written under each field of a dataclass (and of its bases), by field name."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                out[node.target.id] = " ".join(after.value.value.split())
    return out


def rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """`(key, type, default, doc)` of every field, nested dataclasses expanded under their dotted names."""
    docs, out = field_docs(cls), []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            out.append((key, type(default).__name__, "", docs.get(f.name, "")))
            out += rows(type(default), f"{key}.")
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append((key, kind, _shown(default), docs.get(f.name, "")))
    return out


def _shown(value: Any) -> str:
    from omegaconf import MISSING

    if value is MISSING or value == MISSING:
        return "(required)"
    return f"`{value!r}`" if value is not None else "`None`"


def table(cls: type, prefix: str = "") -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, doc in rows(cls, prefix):
        cell = doc.replace("|", "\\|")
        lines.append(f"| `{key}` | `{kind}` | {default.replace('|', chr(92) + '|')} | {cell} |")
    return "\n".join(lines)


def config_markdown() -> str:
    """The run's keys (`configs/run.yaml` and the group files fill them), then each registered method's and
    guard's."""
    from editharm import config, registry

    registry.load_plugins()
    skip = {"model", "method", "guard", "edits", "tasks", "probe", "tracking"}
    top = [r for r in rows(config.RunConfig) if r[0].split(".")[0] not in skip]
    out = ["## Run keys", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| `{k}` | `{t}` | {d} | {doc.replace('|', chr(92) + '|')} |" for k, t, d, doc in top]
    sections = [("model", config.ModelConfig), ("edits", config.EditsConfig), ("tasks", config.TasksConfig),
                ("probe", config.ProbeConfig), ("tracking", config.TrackingConfig)]
    for name, cls in sections:
        out += ["", f"## `{name}.*`", "", table(cls, f"{name}.")]
    for name in registry.method_names():
        out += ["", f"## `method.*` of `method={name}`", "", table(registry.METHODS[name].config_class, "method.")]
    for name in sorted(registry.GUARDS):
        out += ["", f"## `guard.*` of `guard={name}`", "", table(registry.GUARDS[name].config_class, "guard.")]
    return "\n".join(out) + "\n"


def cli_markdown() -> str:
    """`editharm --help`, then each command's help, as the parser prints them."""
    from editharm.__main__ import parser

    top = parser()
    out = ["## `editharm`", "", "```text", top.format_help().rstrip(), "```"]
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        out += ["", f"## `editharm {name}`", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(out) + "\n"
