"""MEND's hypernetwork as runs see it: where an edit finds one, and the run that trains one.

    spec = resolve(cfg, model, tok, logger)   # before any compute: cfg.method.hypernetwork becomes a folder
    run_id = train(cfg, model, tok)           # a train-mend run; its `mend/` artifact is the best network

The method (`methods/mend.py`) reads a folder and never the tracking store; this layer turns
`method.hypernetwork` into one. `runs:/<id>/mend` is fetched from the store. `auto` picks the newest FINISHED
`train-mend` run of the store tagged with this model identity, these inner parameters, this architecture and
this data choice (`mend.data`); with none, a network shipped inside the package (`editharm/hypernetworks/<name>/`)
built for the same; with none (and `method.auto_train`), it trains one first as a run nested in the edit run.
Without a run (`logger=None`: the Python API untracked) `auto` looks only at the shipped networks and never
trains; a `runs:/` URI is still fetched from the tracking store it names (that needs MLflow).
"""
from __future__ import annotations

import logging

import importlib.util
import tempfile
from pathlib import Path

from editharm import data, models, tracking
from editharm.errors import ConfigError
from editharm.methods import mend_store
from editharm.methods.mend import ARCH, inner_modules, new_spec
from editharm.methods.mend_data import training_data
from editharm.methods.mend_train import fit

log = logging.getLogger(__name__)


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


def resolve(cfg, model, tok, logger=None) -> str:
    """Make `cfg.method.hypernetwork` a local folder and return what it was resolved from (`runs:/<id>/mend`, or
    the folder), tagged on the run as `mend.hypernetwork`. `logger=None`: `auto` neither searches the tracking
    store nor trains (a `runs:/` URI is fetched all the same)."""
    m = cfg.method
    spec = (m.hypernetwork or "").strip()
    if not spec:
        raise ConfigError("method.hypernetwork is empty; give runs:/<run_id>/mend, a folder holding mend.json and "
                          "mend.safetensors, or auto")
    if spec == "auto":
        spec = _auto(cfg, model, tok, logger)
    m.hypernetwork = str(_fetch(spec, cfg))  # a wrong URI or folder fails before compute
    mend_store.folder(cfg)
    tracking.set_tags(logger, {"mend.hypernetwork": spec})
    return spec


def _auto(cfg, model, tok, logger) -> str:
    m, identity = cfg.method, models.identity(cfg.model)
    wanted = {"kind": "train-mend", "model_identity": identity, "mend.params": params_tag(cfg),
              "mend.arch": arch_tag(new_spec(cfg, model, identity)), "mend.data": data_tag(cfg)}
    found = tracking.find_runs(wanted, tracking.tracking_uri(cfg)) if logger is not None else []
    if found:
        return f"runs:/{found[0]}/{mend_store.ARTIFACT}"
    packaged = mend_store.shipped(wanted)
    if packaged is not None:
        log.info(f"MEND hypernetwork for {cfg.model.name} shipped with the package: {packaged}")
        return str(packaged)
    if logger is None:
        raise ConfigError(f"method.hypernetwork=auto: no MEND hypernetwork ships with the package for model "
                          f"{cfg.model.name}, these inner parameters and this data choice, and without a run none is "
                          "looked up or trained; pass hypernetwork=runs:/<run_id>/mend or a folder (train one with "
                          f"`editharm train-mend model={cfg.model.name}`)")
    if not m.auto_train:
        raise ConfigError(f"method.hypernetwork=auto found no finished train-mend run for model {cfg.model.name}, "
                          f"these inner parameters, this architecture and this data choice ({data_tag(cfg)}) "
                          f"in {tracking.tracking_uri(cfg)}, and method.auto_train=false; run "
                          f"`editharm train-mend model={cfg.model.name}` first")
    if m.train.max_minutes is None:
        raise ConfigError(f"method.hypernetwork=auto found no trained network for {cfg.model.name}, and training "
                          f"one first needs a time budget: set method.train.max_minutes (the configured "
                          f"max_iters={m.train.max_iters} alone can take days), or train-mend first")
    log.info(f"no MEND hypernetwork for {cfg.model.name} yet; training one first (a nested run, at most "
             f"{m.train.max_minutes:g} minutes)")
    return f"runs:/{train(cfg, model, tok, parent=logger)}/{mend_store.ARTIFACT}"


def _fetch(spec: str, cfg) -> Path:
    if spec.startswith("runs:/"):
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(f"method.hypernetwork={spec} lives in an MLflow tracking store, and MLflow is not "
                              "installed here; pip install mlflow, or give the network's folder")
        return tracking.fetch_artifact(spec, models.cache_root(cfg.cache_dir) / "mend", tracking.tracking_uri(cfg))
    return Path(spec).expanduser()


def train(cfg, model, tok, parent=None, rows=None) -> str:
    """Train a hypernetwork (`mend_train.fit`) in one MLflow run, nested under `parent` when given; returns the
    run id, whose `mend/` artifact holds the best network. `rows`: `training_data`'s result, when already read."""
    train_rows, val_rows, counts = rows or training_data(cfg, data.data_dir(cfg.data_dir))
    if counts["dropped_eval_overlap"]:
        log.info(f"MEND training leaves out {counts['dropped_eval_overlap']} record(s) whose prompt is in an "
                 "evaluation edit set")
    identity = models.identity(cfg.model)
    with tracking.start(cfg, f"train-mend-{cfg.model.name}", parent=parent) as logger:
        tracking.log_config(logger, cfg)
        tags = {"model_identity": identity, "mend.params": params_tag(cfg),
                "mend.arch": arch_tag(new_spec(cfg, model, identity)),
                "mend.data": data_tag(cfg)}  # what `auto` matches on (a shipped network: in its meta)
        tracking.set_tags(logger, {"kind": "train-mend", "model": cfg.model.name, **tags,
                                   "git_commit": tracking.git_commit(), **{f"data.{k}": v for k, v in counts.items()}})
        net, figures = fit(cfg, model, tok, train_rows, val_rows, logger)
        logger.log_metrics(figures, step=int(figures["train/steps"]))
        net.spec.meta = {"run_id": logger.run_id, "steps": int(figures["train/steps"]),
                         "saved_step": int(figures["train/saved_step"]), "data": data_tag(cfg),
                         "tags": tags, **counts}
        with tempfile.TemporaryDirectory() as tmp:
            folder = net.save(Path(tmp) / mend_store.ARTIFACT)
            (folder / mend_store.TRAIN_PROMPTS).write_text("\n".join(sorted({r.prompt for r in train_rows})),
                                                           encoding="utf-8")
            logger.experiment.log_artifacts(logger.run_id, str(folder), mend_store.ARTIFACT)
        return logger.run_id
