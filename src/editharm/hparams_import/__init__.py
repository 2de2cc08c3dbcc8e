"""`editharm import-hparams FILE`: an EasyEdit hyperparameter file (zjunlp/EasyEdit `hparams/<ALG>/<model>.yaml`, for
ROME, MEMIT, KN, MEND and FT) as config files of ours, with a table of what became of every key.

    got = import_hparams(Path("hparams/ROME/gpt2-xl.yaml"), Path("my-configs"))
    print(render(got))     # then: editharm --config-dir my-configs edit method=rome model=gpt2-xl

It writes `OUT/model/<name>.yaml` (the model: `model.py` says where its depth and module names come from) and
`OUT/method/<method>/<name>.yaml`, a per-model method file. That is the file `config.compose` merges last for that
method and model, so the imported values win over the method's shipped defaults, over the depth rules of
`layer_rules.yaml` (a model that is not shipped) and over a shipped per-model file of the same name (the folder of
`--config-dir` is searched first). What each EasyEdit key becomes is `rules.py`; before anything is written, the
two files are composed into a run config as an edit run would (types, layer ranges, the method's own checks).
"""
from __future__ import annotations

import copy
import dataclasses
import shlex
import typing
from pathlib import Path
from typing import Any, NamedTuple, Optional

import yaml

from editharm import config
from editharm.errors import ConfigError
from editharm.hparams_import.model import Base, resolve
from editharm.hparams_import.rules import (ALGORITHMS, CONVERTED, IMPLIED, MAPPED, NONE, RULES, Context, Outcome,
                                           _is_number)


class Row(NamedTuple):
    key: str
    """EasyEdit's key; empty for a key of ours its file has none for (`IMPLIED`, the model's other templates)."""
    value: Any
    outcome: Outcome


class Imported(NamedTuple):
    method: str
    name: str
    """The model's name: `model=<name>`."""
    model: dict
    method_values: dict
    """The per-model method file's content (nested)."""
    rows: list[Row]
    files: list[Path]


def read(file: Path) -> dict:
    """The file's keys and values; a `ConfigError` when it is missing, not YAML or not a mapping."""
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {file}: {err.strerror or err}") from None
    try:
        hp = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{file} is not YAML{at}: {getattr(err, 'problem', None) or err}; an EasyEdit hparams "
                          "file is a YAML mapping of keys to values") from None
    if not isinstance(hp, dict):
        raise ConfigError(f"{file} must hold a mapping of EasyEdit hparams keys to values (alg_name: ROME, "
                          f"model_name: ..., ...), got {type(hp).__name__}")
    return hp


def method_of(hp: dict, file: Path) -> str:
    """Our method for the file's `alg_name`."""
    valid = ", ".join(ALGORITHMS)
    if "alg_name" not in hp:
        raise ConfigError(f"{file} has no alg_name; an EasyEdit hparams file names its algorithm, one of: {valid}")
    name = str(hp["alg_name"]).strip().upper()
    if name not in ALGORITHMS:
        raise ConfigError(f"{file}: alg_name {hp['alg_name']!r} has no method here; valid: {valid}")
    return ALGORITHMS[name]


def convert(file: Path, given: Optional[str] = None) -> Imported:
    """The model node, the per-model method values and one row per key of the file (plus the keys of ours it has
    none for), checked by composing them into a run config; nothing is written."""
    hp = read(file)
    alg = method_of(hp, file)
    base = resolve(hp, Path(file), given)
    ctx = Context(hp, alg, base)
    rows = [Row(k, v, _typed(alg, outcome(k, v, ctx, given))) for k, v in hp.items()]
    rows += implied(alg, base, {k for row in rows for k in row.outcome.values})
    values = {k: v for row in rows for k, v in row.outcome.values.items()}
    model = copy.deepcopy(base.node)
    method: dict = {}
    for dotted, value in values.items():
        group, _, rest = dotted.partition(".")
        if rest:
            _set({"model": model, "method": method}[group], rest, value)
    _check(alg, base.name, model, method)
    return Imported(alg, base.name, model, method, rows, [])


def outcome(key: str, value: Any, ctx: Context, given: Optional[str]) -> Outcome:
    if key == "alg_name":
        return Outcome(MAPPED, {"method": ctx.alg})
    if key == "model_name":
        path = ctx.base.node["path"]
        note = (f"--model {given}: " if given else "") + ctx.base.path_note
        return Outcome(MAPPED if path == value else CONVERTED, {"model.path": path}, note)
    rule = RULES[ctx.alg].get(key)
    if rule is None:
        return Outcome(NONE, {}, f"not a key of EasyEdit's {ctx.alg.upper()} hparams that this importer knows",
                       differs=True)
    return rule(value, ctx)


def implied(alg: str, base: Base, values: set[str]) -> list[Row]:
    """Rows for keys of ours the file has no key for: the model's depth and other templates, its dtype, and the
    switches that select EasyEdit's behaviour (`IMPLIED`)."""
    out = []
    if "model.path" not in values:  # no model_name in the file: --model
        out.append(Outcome(CONVERTED, {"model.path": base.node["path"]}, base.path_note))
    if "model.n_layers" not in values:
        out.append(Outcome(CONVERTED, {"model.n_layers": base.node["n_layers"]}, f"from {base.source}"))
    for kind, module in base.node["templates"].items():
        if f"model.templates.{kind}" not in values:
            out.append(Outcome(CONVERTED, {f"model.templates.{kind}": module}, f"from {base.source}"))
    if "model.dtype" not in values:
        out.append(Outcome(CONVERTED, {"model.dtype": "float32"}, "EasyEdit loads float32 unless fp16: true"))
    out += [Outcome(CONVERTED, {k: v}, why) for k, (v, why) in IMPLIED.get(alg, {}).items()]
    return [Row("", None, o) for o in out]


def import_hparams(file: Path, out: Path = Path("."), given: Optional[str] = None, force: bool = False) -> Imported:
    """`convert` the file and write its model and per-model method files under `out`. A file there that holds other
    values is a `ConfigError` unless `force`."""
    got, out = convert(Path(file), given), Path(out)
    source = Path(file).name
    files = {out / "model" / f"{got.name}.yaml": (got.model, _model_header(got, source)),
             out / "method" / got.method / f"{got.name}.yaml": (got.method_values, _method_header(got, source))}
    for path, (node, _) in files.items():
        if path.is_file() and not force and _loaded(path) != node:
            raise ConfigError(f"{path} exists and holds other values; remove it, choose another --out, or pass --force")
    comments = _comments(got.rows)
    for path, (node, header) in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = "model." if path.parent.name == "model" else "method."
        path.write_text("\n".join([*header, *_yaml(node, comments, prefix=prefix)]) + "\n", encoding="utf-8")
    return got._replace(files=list(files))


def command(file: str, out: str = ".", given: Optional[str] = None, force: bool = False) -> str:
    """What `editharm import-hparams` prints: the table, the files written and the command that uses them."""
    got = import_hparams(Path(file), Path(out), given, force)
    run = f"editharm --config-dir {shlex.quote(out)} edit method={got.method} model={got.name}"
    return "\n".join([render(got.rows), "", *(f"wrote {p}" for p in got.files), f"run:  {run}"])


def render(rows: list[Row]) -> str:
    """The table: every key of the file, then the keys of ours it has none for."""
    head = ["EasyEdit key", "value", "status", "ours", "note"]
    keyed = [_cells(r) for r in rows if r.key]
    extra = [_cells(r) for r in rows if not r.key]
    widths = [max(len(c[i]) for c in [head, *keyed, *extra]) for i in range(4)]

    def line(cells: list[str]) -> str:
        return ("  ".join(x.ljust(w) for x, w in zip(cells, widths)) + "  " + cells[4]).rstrip()

    lines = [line(head), *map(line, keyed), "", "Also set (no key of the file):", *map(line, extra)]
    if any(r.outcome.differs for r in rows):
        lines += ["", "* this file asks for something ours does not do (or a key unknown here): an imported run "
                      "differs from EasyEdit's there"]
    return "\n".join(lines)


def _cells(row: Row) -> list[str]:
    o = row.outcome
    ours = ", ".join(f"{k}={_flow(v)}" for k, v in o.values.items())
    return [row.key or "-", _short(row.value) if row.key else "",
            (o.status if row.key else "set") + ("*" if o.differs else ""), ours, o.note]


def _typed(alg: str, o: Outcome) -> Outcome:
    return o._replace(values={k: _coerce(alg, k, v) for k, v in o.values.items()})


def _coerce(alg: str, dotted: str, value: Any) -> Any:
    """EasyEdit's reading of a number (a string such as "5e-1", which YAML 1.1 leaves a string, is a float), then the
    type of our key (`mom2_update_weight: 20000` -> 20000.0, a float key; an integral float for an int key)."""
    group, *parts = dotted.split(".")
    if not parts:
        return value
    root = config.ModelConfig if group == "model" else _method_class(alg)
    hint = _hint(root, parts)
    numeric = {int, float} & {hint, *typing.get_args(hint)}
    if not numeric or isinstance(value, bool):
        return value
    if isinstance(value, str) and _is_number(value):
        value = float(value)
    if int in numeric and isinstance(value, float) and value.is_integer():
        return int(value)
    if float in numeric and isinstance(value, int):
        return float(value)
    return value


def _method_class(alg: str) -> type:
    from editharm import registry

    return registry.method(alg).config_class


def _hint(root: type, parts: list[str]) -> Any:
    hint = typing.get_type_hints(root).get(parts[0])
    if len(parts) == 1 or not dataclasses.is_dataclass(hint):
        return hint if len(parts) == 1 else None
    return _hint(hint, parts[1:])


def _set(node: dict, dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        _set(node.setdefault(head, {}), rest, value)
    else:
        node[head] = value


def _check(alg: str, name: str, model: dict, method: dict) -> None:
    """Compose the imported model and method values into a run config, as `editharm edit` will."""
    try:
        config.compose([f"method={alg}"], model={"name": name, **model}, overrides={"method": method})
    except ConfigError as err:
        raise ConfigError(f"the imported {alg.upper()} config for model {name!r} is not valid: {err}") from None


def _loaded(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _comments(rows: list[Row]) -> dict[str, str]:
    """Our dotted key -> where its value came from (`layers: [17]`, or why it is set)."""
    out = {}
    for row in rows:
        for k in row.outcome.values:
            out[k] = f"{row.key}: {_short(row.value)}" if row.key else row.outcome.note
    return out


def _model_header(got: Imported, source: str) -> list[str]:
    return [f"# {got.name}: the model of EasyEdit's {source}, imported by `editharm import-hparams` (every key of that",
            "# file, and what it became, is in the table the command printed). `# key: value` = EasyEdit's."]


def _method_header(got: Imported, source: str) -> list[str]:
    return [f"# {got.method.upper()} on {got.name}: EasyEdit's {source}, imported by `editharm import-hparams` "
            "(every key of that", "# file, and what it became, is in the table the command printed). Merged over "
            f"method/{got.method}.yaml for", f"# model={got.name}. `# key: value` = EasyEdit's."]


def _yaml(node: dict, comments: dict[str, str], prefix: str, indent: str = "") -> list[str]:
    lines = []
    for k, v in node.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            lines += [f"{indent}{k}:", *_yaml(v, comments, f"{dotted}.", indent + "  ")]
        else:
            note = comments.get(dotted)
            lines.append(f"{indent}{k}: {_flow(v)}" + (f"  # {note}" if note else ""))
    return lines


def _short(value: Any, width: int = 40) -> str:
    text = _flow(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _flow(value: Any) -> str:
    """One line of YAML for a value (`[13, 14]`, `null`, `transformer.h.{}`)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, allow_unicode=True).strip()
    return text.removesuffix("...").strip()
