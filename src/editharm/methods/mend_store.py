"""A MEND hypernetwork on disk: the folder a config names, and the networks shipped inside the package (matched
on the tags `editharm.mend_runs` gives a training run).

    where = folder(cfg)                # the folder method.hypernetwork names
    shipped(wanted)                    # the packaged network built for these tags, or None

`auto` and `runs:/<id>/mend` are resolved to a folder above this layer (`editharm.mend_runs`), which reads the
tracking store.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from editharm.errors import ConfigError
from editharm.methods.mend_net import SPEC_FILE, MENDNet

ARTIFACT = "mend"
TRAIN_PROMPTS = "train_prompts.txt"


def packaged_root() -> Path:
    """Where networks shipped with the package lie (`scripts/package_mend.py` puts them there)."""
    return Path(str(resources.files("editharm") / "hypernetworks"))


def shipped(wanted: dict[str, str]) -> Path | None:
    """The packaged network whose recorded tags (its spec's `meta.tags`) equal `wanted`'s model identity, inner
    parameters, architecture and data choice, or None."""
    for folder in sorted(p.parent for p in packaged_root().glob(f"*/{SPEC_FILE}")):
        tags = MENDNet.read_spec(folder).meta.get("tags", {})
        if all(tags.get(k) == v for k, v in wanted.items() if k != "kind"):
            return folder
    return None


def folder(cfg) -> Path:
    """The local folder `method.hypernetwork` names; `runs:/` and `auto` are the command layer's to resolve into
    one first (`editharm.mend_runs.resolve`: the CLI and `editharm.Editor` do)."""
    spec = (cfg.method.hypernetwork or "").strip()
    if spec == "auto" or spec.startswith("runs:/"):
        raise ConfigError(f"method.hypernetwork={spec!r} must be resolved to a folder first "
                          "(editharm.mend_runs.resolve); the CLI and editharm.Editor do it")
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(f"method.hypernetwork={spec!r} is neither runs:/<run_id>/mend, auto, nor a folder")
    return path
