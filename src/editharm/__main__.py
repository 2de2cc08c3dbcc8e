"""Command line: `editharm edit|evaluate key=value ...` (also `python -m editharm`), `editharm checkpoint RUN_ID`.

Bad input of any kind ends in one `editharm: error: ...` line and exit status 2, with no traceback;
a run already opened (or handed to us by `mlflow run`) is marked FAILED.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from editharm.errors import EditharmError


def _setup(argv: list[str], edits: bool):
    """Config, data directory, edit requests, tasks and probe text: all that can be wrong, checked before
    compute. Returns `(tree, cfg, requests, success, tasks, probe)`."""
    from editharm import config, data
    from editharm.tasks import load_task

    _quiet_lightning()
    tree = config.compose(argv)
    cfg = config.to_object(tree)
    root = data.data_dir(cfg.data_dir)
    requests, success = data.load_requests(cfg.edits, root) if edits else ([], False)
    tasks = [load_task(name, cfg.tasks.protocol, root, cfg.tasks.limit, cfg.tasks.seed) for name in cfg.tasks.names]
    probe = data.read_probe_text(root, cfg.probe.n_tokens * 8) if cfg.probe.perplexity else None
    if edits and hasattr(cfg.guard, "mom2_n_tokens"):  # a guard built on key statistics: its corpus, up front
        from editharm import stats

        stats.load_corpus(root)
    return tree, cfg, requests, success, tasks, probe


def _log_run(logger, cfg, tree, tasks, **tags) -> None:
    """The config and the tags every run carries."""
    from editharm import models, tracking

    tracking.log_config(logger, tree)
    tracking.set_tags(logger, {"model": cfg.model.name, "model_identity": models.identity(cfg.model),
                               "protocol": cfg.tasks.protocol, "git_commit": tracking.git_commit(), **tags,
                               **{f"task.{t.spec.name}.version": t.spec.version for t in tasks}})


def _ability_evaluators(cfg, tok, tasks, probe) -> list:
    from editharm.evaluators import PerplexityEvaluator
    from editharm.tasks.evaluator import TaskEvaluator

    out = [TaskEvaluator(task, tok, cfg.tasks.batch_size, cfg.tasks.dtype) for task in tasks]
    if probe is not None:
        out.append(PerplexityEvaluator(tok, probe, cfg.probe.n_tokens, cfg.probe.chunk_tokens))
    return out


def _trainer(cfg, logger, every: int = 1):
    import lightning as L

    return L.Trainer(accelerator=cfg.device, devices=1, logger=logger, max_epochs=1, val_check_interval=every,
                     num_sanity_val_steps=0, enable_checkpointing=False, enable_model_summary=False,
                     inference_mode=False, use_distributed_sampler=False, log_every_n_steps=1)


def _model(cfg):
    """The model and tokenizer, from `checkpoint` (a directory or `runs:/<id>`) when one is given."""
    import dataclasses

    from editharm import models, tracking

    cache = models.cache_root(cfg.cache_dir)
    if not cfg.checkpoint:
        return models.load(cfg.model, cache)
    path = tracking.resolve_checkpoint(cfg.checkpoint, cache)
    return models.load(dataclasses.replace(cfg.model, source="hub", path=str(path), revision=None), cache)


def _method_label(m) -> str:
    """The method as a run name says it: MEMIT's null-space solve is AlphaEdit, KN names its variant and neuron."""
    if getattr(m, "nullspace", False):
        return "alphaedit"
    if m.name == "kn":
        return f"kn-{m.variant}-{m.neuron}"
    return m.name


def edit(argv: list[str]) -> str:
    """Apply the configured edits in one MLflow run; returns its run id."""
    import lightning as L

    from editharm import data, registry, tracking
    from editharm.evaluators import EditEvaluator

    tree, cfg, requests, success, tasks, probe = _setup(argv, edits=True)
    e = cfg.edits
    every = min(e.eval_every, e.n)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    g = cfg.guard
    shaped = "" if g.name == "none" else f"-{g.name}{getattr(g, 'k', '')}"
    with tracking.start(cfg, f"{_method_label(cfg.method)}-{cfg.model.name}-{e.mode}-n{e.n}{shaped}") as logger:
        _log_run(logger, cfg, tree, tasks, kind="edit", method=cfg.method.name, mode=e.mode, eval_every=every,
                 edits_dataset=e.dataset, guard=g.name)
        model, tok = _model(cfg)
        dataset = Path(e.dataset).stem if e.dataset.endswith(".jsonl") else e.dataset
        evaluators = [EditEvaluator(requests, _metric_name(dataset), success, e.eval_batch_size),
                      *_ability_evaluators(cfg, tok, tasks, probe)]
        module = registry.method(cfg.method.name)(cfg, model, tok, evaluators, len(requests))
        dm = data.EditDataModule(requests, e.batch_size, evaluators)
        trainer = _trainer(cfg, logger, every // e.batch_size)
        trainer.validate(module, datamodule=dm, verbose=False)
        trainer.fit(module, datamodule=dm)
        if e.n % every:
            trainer.validate(module, datamodule=dm, verbose=False)
        tracking.log_deltas(logger, module.model, module.cumulative)
        if cfg.tracking.log_checkpoint:
            tracking.log_checkpoint(logger, module.model, tok)
        return logger.run_id


def evaluate(argv: list[str]) -> str:
    """Score a model (or `checkpoint=`) on the configured tasks in its own MLflow run; returns its id."""
    import lightning as L

    from editharm import data, tracking
    from editharm.module import EditModule

    tree, cfg, _, _, tasks, probe = _setup(argv, edits=False)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with tracking.start(cfg, f"evaluate-{cfg.model.name}") as logger:
        _log_run(logger, cfg, tree, tasks, kind="evaluate", checkpoint=cfg.checkpoint or "none")
        model, tok = _model(cfg)
        evaluators = _ability_evaluators(cfg, tok, tasks, probe)
        module = EditModule(cfg, model, tok, evaluators, n_requests=0)
        _trainer(cfg, logger).validate(module, datamodule=data.EditDataModule([], 1, evaluators), verbose=False)
        return logger.run_id


def statistics(argv: list[str]) -> str:
    """Precompute the key statistics the configured method (`method.mom2_*`) and guard (`guard.mom2_*`) use
    into the cache, in one run."""
    from editharm import config, data, models, registry, stats, tracking

    _quiet_lightning()
    tree = config.compose(argv)
    cfg = config.to_object(tree)
    corpus = stats.load_corpus(data.data_dir(cfg.data_dir))
    with tracking.start(cfg, f"stats-{cfg.method.name}-{cfg.model.name}") as logger:
        _log_run(logger, cfg, tree, [], kind="stats", method=cfg.method.name)
        model, tok = _model(cfg)
        module = registry.method(cfg.method.name)(cfg, model, tok, [], 0)
        wanted = [(module.statistics_modules(), cfg.method), (module.guard_statistics_modules(), cfg.guard)]
        if not any(names for names, _ in wanted):
            raise EditharmError(f"method {cfg.method.name} with guard {cfg.guard.name} uses no key statistics")
        paths = {}
        for names, hp in wanted:
            if names:
                paths.update(stats.cached_second_moments(model, tok, names, corpus, hp.mom2_n_tokens, hp.mom2_seq_len,
                                                         models.identity(cfg.model),
                                                         models.cache_root(cfg.cache_dir) / "stats")[1])
        tracking.log_files(logger, "stats", list(paths.values()))
        for name, path in paths.items():
            print(f"{name}: {path}")
        return logger.run_id


def _quiet_lightning() -> None:
    """Silence Lightning's advice that does not apply to edit runs (no optimizer, eval-mode modules by
    design, requests kept on the host)."""
    for message in ("`LightningModule.configure_optimizers` returned `None`", "Found .* module\\(s\\) in eval mode",
                    "You have overridden `transfer_batch_to_device`", ".*treespec, LeafSpec"):
        warnings.filterwarnings("ignore", message=message)


def _metric_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text.lower())


def checkpoint(run_id: str, out: str, uri: str | None) -> Path:
    from editharm import tracking

    return tracking.download_checkpoint(run_id, Path(out), uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="editharm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_edit = sub.add_parser("edit", help="apply edits and measure them in one MLflow run")
    p_edit.add_argument("overrides", nargs="*", help="group=name or dotted.key=value, e.g. method=ft edits.n=4")
    p_eval = sub.add_parser("evaluate", help="score a model or an edited checkpoint on the ability tasks")
    p_eval.add_argument("overrides", nargs="*", help="e.g. model=smollm2-135m tasks.limit=50 checkpoint=runs:/<id>")
    p_stats = sub.add_parser("stats", help="precompute a method's key statistics (second moments) into the cache")
    p_stats.add_argument("overrides", nargs="*", help="e.g. method=memit model=smollm2-135m method.mom2_n_tokens=50000")
    p_ckpt = sub.add_parser("checkpoint", help="download a run's edited checkpoint")
    p_ckpt.add_argument("run_id")
    p_ckpt.add_argument("--out", required=True, help="directory to write the checkpoint to")
    p_ckpt.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        if args.command in ("edit", "evaluate", "stats"):
            run_id = {"edit": edit, "evaluate": evaluate, "stats": statistics}[args.command](args.overrides)
            print(f"editharm: run {run_id} finished")
        else:
            print(checkpoint(args.run_id, args.out, args.tracking_uri))
    except EditharmError as err:
        print(f"editharm: error: {err}", file=sys.stderr)
        if args.command in ("edit", "evaluate", "stats"):
            from editharm import tracking

            tracking.fail_joined_run(err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
