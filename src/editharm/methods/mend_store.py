"""Where an edit run's MEND hypernetwork comes from: `runs:/<id>/mend`, a folder, or `auto`.

    resolve(cfg, model, tok, logger)   # before any compute: cfg.method.hypernetwork becomes concrete
    net, trained_on = load(cfg, model) # checked against this model and these inner parameters

`auto` picks the newest FINISHED `train-mend` run of the tracking store tagged with this model identity, these
inner parameters, this architecture and this data choice (`mend.data`); with none, a network shipped inside the
package (`editharm/hypernetworks/<name>/`) built for the same; with none (and `method.auto_train`), it trains one
first as a run nested in the edit run.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from editharm import models, tracking
from editharm.errors import ConfigError
from editharm.methods.mend import ARCH, check_compatible, inner_modules, new_spec
from editharm.methods.mend_net import SPEC_FILE, MENDNet

ARTIFACT = "mend"
TRAIN_PROMPTS = "train_prompts.txt"


def params_tag(cfg) -> str:
    return ",".join(inner_modules(cfg))


def arch_tag(spec) -> str:
    """The architecture settings a network is built with, as a run tag `auto` matches on."""
    return ",".join(f"{k}={getattr(spec, k)}" for k in ARCH)


def data_tag(cfg) -> str:
    """The training data choice, as a run tag `auto` matches on: `zsre->zsre/train` (trained on zsRE's train file,
    validated on records held out of it), `zsre->zsre/edit` (the paper's: validated on the evaluation set)."""
    t = cfg.method.train
    return f"{'+'.join(t.datasets)}->{t.val_dataset}/{t.val_split}"


def resolve(cfg, model, tok, logger) -> None:
    """Make `cfg.method.hypernetwork` a `runs:/` URI or a folder, training one when `auto` finds none."""
    m = cfg.method
    spec = (m.hypernetwork or "").strip()
    if not spec:
        raise ConfigError("method.hypernetwork is empty; give runs:/<run_id>/mend, a folder holding mend.json and "
                          "mend.safetensors, or auto")
    if spec == "auto":
        wanted = {"kind": "train-mend", "model_identity": models.identity(cfg.model), "mend.params": params_tag(cfg),
                  "mend.arch": arch_tag(new_spec(cfg, model, models.identity(cfg.model))), "mend.data": data_tag(cfg)}
        found = tracking.find_runs(wanted, tracking.tracking_uri(cfg))
        packaged = None if found else shipped(wanted)
        if found:
            spec = f"runs:/{found[0]}/{ARTIFACT}"
        elif packaged is not None:
            spec = str(packaged)
            print(f"editharm: MEND hypernetwork for {cfg.model.name} shipped with the package: {packaged}")
        elif not m.auto_train:
            raise ConfigError(f"method.hypernetwork=auto found no finished train-mend run for model "
                              f"{cfg.model.name}, these inner parameters, this architecture and this data choice "
                          f"({data_tag(cfg)}) in "
                              f"{tracking.tracking_uri(cfg)}, and method.auto_train=false; run "
                              f"`editharm train-mend model={cfg.model.name}` first")
        elif m.train.max_minutes is None:
            raise ConfigError(f"method.hypernetwork=auto found no trained network for {cfg.model.name}, and training "
                              f"one first needs a time budget: set method.train.max_minutes (the configured "
                              f"max_iters={m.train.max_iters} alone can take days), or train-mend first")
        else:
            from editharm.methods.mend_train import train

            print(f"editharm: no MEND hypernetwork for {cfg.model.name} yet; training one first (a nested run, at "
                  f"most {m.train.max_minutes:g} minutes)")
            spec = f"runs:/{train(cfg, model, tok, parent=logger)}/{ARTIFACT}"
    m.hypernetwork = spec
    _folder(cfg)  # fetch (or find) it now: a wrong URI or folder fails before compute
    tracking.set_tags(logger, {"mend.hypernetwork": spec})


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


def _folder(cfg) -> Path:
    spec = cfg.method.hypernetwork
    if spec.startswith("runs:/"):
        return tracking.fetch_artifact(spec, models.cache_root(cfg.cache_dir) / "mend", tracking.tracking_uri(cfg))
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(f"method.hypernetwork={spec!r} is neither runs:/<run_id>/mend, auto, nor a folder")
    return path


def load(cfg, model) -> tuple[MENDNet, frozenset[str]]:
    """The hypernetwork (eval mode) and the prompts it was trained on; refused when built for another model or
    other inner parameters."""
    folder = _folder(cfg)
    net = MENDNet.load(folder)
    check_compatible(net.spec, new_spec(cfg, model, models.identity(cfg.model)), f"at {cfg.method.hypernetwork}")
    if net.spec.meta.get("selected_on_eval"):
        print(f"editharm: the MEND hypernetwork at {cfg.method.hypernetwork} was selected on an evaluation edit set "
              f"({net.spec.meta.get('data')}, the paper's choice): its scores on that set are not held-out scores")
    prompts = folder / TRAIN_PROMPTS
    trained_on = frozenset(prompts.read_text(encoding="utf-8").splitlines()) if prompts.is_file() else frozenset()
    return net, trained_on
