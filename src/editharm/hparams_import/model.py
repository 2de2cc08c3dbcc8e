"""Which model an EasyEdit hparams file names, described as our model group describes models.

    base = resolve(hp, file, given=None)   # Base(name, node, source, depth_from_v_loss_layer, row)

EasyEdit's `model_name` is a folder (`./hugging_cache/gpt2-xl`, relative to where EasyEdit runs) or a hub id; its
file holds module templates and, for ROME and MEMIT, `v_loss_layer` (the last layer), but never the depth, the MLP's
input and gate projections or the embedding. They come from, first match first:
1. a model config of ours (shipped, or in a folder of the search path) whose `path` is `model_name` or whose name is
   the folder's name (`./hugging_cache/gpt2-xl` is our `gpt2-xl`; a local copy of it becomes its `path`);
2. the checkpoint's own config (a local folder, relative to the working folder or to the EasyEdit checkout the
   file sits in; or a hub id, from the hub or its local cache): depth, `model_type` -> `model_types.yaml`;
3. the file itself: the `model_types.yaml` family whose templates its `layer_module_tmp`, `rewrite_module_tmp` and
   `ln_f_module` equal, and the depth `v_loss_layer + 1`.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, NamedTuple, Optional

from editharm import config
from editharm.errors import ConfigError

KEPT = ("source", "path", "revision", "sha256", "dtype", "seed", "architecture", "n_layers", "templates")
"""The model keys an imported model file holds (its name is the file's); those not in `ALWAYS` only when set."""
ALWAYS = ("source", "path", "revision", "dtype", "n_layers", "templates")
FAMILY_EVIDENCE = {"layer_module_tmp": "layer", "rewrite_module_tmp": "mlp_out", "ln_f_module": "ln_f"}


class Base(NamedTuple):
    name: str
    node: dict
    """The model group node (without `name`), before the file's own templates and dtype are applied."""
    source: str
    """Where the templates and the depth come from, in words."""
    depth_from_v_loss_layer: bool
    path_note: str
    """What `model_name` became, in words (the `model_name` row's note)."""


def resolve(hp: dict, file: Path, given: Optional[str] = None) -> Base:
    """The model `given` (or the file's `model_name`) names; a `ConfigError` naming what to pass when its depth or
    its module names cannot be found."""
    where = given or hp.get("model_name")
    if not where or not isinstance(where, str):
        raise ConfigError(f"{file} has no model_name (a hub id or a model folder); pass --model <hub id or folder>")
    folder = local_folder(where, file)
    ours = our_model(where)
    if ours is not None:
        name, node = ours
        note = f"our model config '{name}'"
        if folder is not None:
            node = {**node, "path": str(folder), "revision": None}
            note += f", with the local copy {folder} as its path"
        return Base(name, node, f"our model config '{name}'", False, note)
    name = model_name(where)
    path = str(folder) if folder is not None else where
    hf = hf_config(path) if folder is not None or is_hub_id(where) else None
    if hf is not None:
        return Base(name, _from_checkpoint(hf, name, path, hp), "the checkpoint's config", False,
                    f"{'the local folder' if folder else 'the hub id'} {path}")
    family = matching_family(hp)
    loss_layer = hp.get("v_loss_layer")
    if family is None or not isinstance(loss_layer, int):
        raise ConfigError(f"cannot tell the architecture of model_name {where!r}: it is not a folder here (nor beside "
                          f"the EasyEdit checkout of {file.name}), not a hub id whose config can be read, and no model "
                          f"config of ours is named {name!r}"
                          + ("" if family else "; its module templates match no family of model_types.yaml")
                          + "; pass --model <hub id or model folder>")
    kind, templates = family
    node = {"source": "hub", "path": path, "revision": None, "dtype": "float32", "n_layers": loss_layer + 1,
            "templates": dict(templates)}
    return Base(name, node, f"model_types.yaml's {kind} templates (equal to the file's)", True,
                f"{path} (not found here: a run loads it from this path, relative to its working folder, or the hub)")


def local_folder(where: str, file: Path) -> Optional[Path]:
    """`where` as an existing folder: absolute, relative to the working folder, or relative to the EasyEdit checkout
    holding `file` (`<checkout>/hparams/<ALG>/<file>`, where EasyEdit's relative `./hugging_cache/...` points)."""
    path = Path(where).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    parents = file.resolve().parents
    if not path.is_absolute() and len(parents) > 2 and parents[1].name == "hparams":
        candidates.append(parents[2] / path)
    return next((c.resolve() for c in candidates if c.is_dir()), None)


def our_model(where: str) -> Optional[tuple[str, dict]]:
    """`(name, node)` of the model config on the search path whose `path` is `where` or whose name is its last
    component, lower-cased."""
    stem = Path(where.rstrip("/")).name.lower()
    for name in config.group_names("model"):
        try:
            cfg = config.model_config(name)
        except ConfigError:  # a broken file of the user's does not stop an import that does not need it
            continue
        if cfg.path == where or name == stem:
            node = dataclasses.asdict(cfg)
            return name, {k: node[k] for k in KEPT if k in ALWAYS or node[k]}
    return None


def model_name(where: str) -> str:
    """A model name from a folder or hub id: its last component, lower-cased, other characters as '-'."""
    return re.sub(r"[^a-z0-9._-]+", "-", Path(where.rstrip("/")).name.lower()).strip("-") or "model"


def is_hub_id(where: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", where)) or bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*", where))


def hf_config(where: str) -> Any:
    """The transformers config of a folder or hub id (the hub's local cache when offline), else None."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(where)
    except Exception:  # noqa: BLE001  (not found, offline, gated, unreadable: the next source is tried)
        return None


def _from_checkpoint(hf, name: str, path: str, hp: dict) -> dict:
    """A node from a checkpoint's config: its family's templates (else the family the file's templates match)."""
    node = config.architecture_node(hf, name, required=False, source="hub", path=path, revision=None)
    if not any(node["templates"].values()):
        family = matching_family(hp)
        if family is None:
            raise ConfigError(f"model_type {getattr(hf, 'model_type', None)!r} of {path} has no module templates in "
                              f"model_types.yaml and the file's do not match a family there; add its layer, mlp_in, "
                              "mlp_gate, mlp_out, ln_f, lm_head and embed module names to model_types.yaml in a folder "
                              "of $EDITHARM_CONFIG_PATH")
        node["templates"] = dict(family[1])
    node.pop("name")
    node["dtype"] = "float32"
    return node


def matching_family(hp: dict) -> Optional[tuple[str, dict]]:
    """`(model_type, templates)` of the first `model_types.yaml` family whose layer, MLP output and final-norm
    templates equal the file's (`rewrite_module_tmp` without a `.weight` suffix); MEND's `inner_params` must each
    be one of its MLP weights. None without any of these keys or without a match."""
    given = {ours: str(hp[key]).removesuffix(".weight") for key, ours in FAMILY_EVIDENCE.items() if hp.get(key)}
    params = [str(p) for p in hp.get("inner_params") or []]
    if not given and not params:
        return None
    for kind, templates in config.model_types().items():
        if all(templates.get(k) == v for k, v in given.items()) and all(weight_of(p, templates) for p in params):
            return kind, templates
    return None


WEIGHTS = ("mlp_out", "mlp_in", "mlp_gate")
"""Our weight templates, in the order a module name is matched against them (GPT-2's `c_fc` is both `mlp_in` and
`mlp_gate`: `mlp_in`, as our GPT-2 XL MEND config names it)."""


def weight_of(param: str, templates: dict) -> Optional[tuple[str, int]]:
    """`(template, layer)` of a parameter or module name (`transformer.h.45.mlp.c_proj.weight`) among `WEIGHTS`."""
    module = param.removesuffix(".weight")
    for kind in WEIGHTS:
        pattern = templates.get(kind) or ""
        match = re.fullmatch(re.escape(pattern).replace(r"\{\}", r"(\d+)"), module) if "{}" in pattern else None
        if match:
            return kind, int(match.group(1))
    return None
