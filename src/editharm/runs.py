"""What each command does, one function per command; `__main__` only parses the command line.

    run_id = edit(["method=rome", "edits.n=4"])
    run_id = train_mend(["model=smollm2-135m"])
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from editharm.errors import ConfigError, EditharmError

log = logging.getLogger(__name__)


def _setup(argv: list[str], edits: bool, tree=None):
    """Config (composed from `argv`, or the given `tree`), data directory, edit requests, tasks and probe text:
    all that can be wrong, checked before compute. Returns `(tree, cfg, requests, success, tasks, probe)`."""
    from editharm import config, data, evaluation

    _quiet_lightning()
    tree = config.compose(argv) if tree is None else tree
    cfg = config.to_object(tree)
    if edits and cfg.devices > 1:
        raise ConfigError(f"devices={cfg.devices}: an edit run is one process (the model changes as it goes); "
                          "split the evaluation of its edited model: editharm evaluate checkpoint=runs:/<run_id> "
                          f"devices={cfg.devices}")
    root = data.data_dir(cfg.data_dir)
    requests, success = data.load_requests(cfg.edits, root) if edits else ([], False)
    tasks, probe = evaluation.load_tasks(cfg)
    if edits:  # a method or guard built on key statistics: its corpus, up front
        from editharm import stats

        for spec in (cfg.method, cfg.guard):
            if hasattr(spec, "mom2_dataset") and (spec is cfg.guard or getattr(spec, "mom2_adjustment", True)):
                stats.load_corpus(root, spec.mom2_dataset)
    return tree, cfg, requests, success, tasks, probe


def _log_run(logger, cfg, tree, tasks, **tags) -> None:
    """The config and the tags every run carries."""
    from editharm import models, tracking

    tracking.log_config(logger, tree)
    tracking.set_tags(logger, {"model": cfg.model.name, "model_identity": models.identity(cfg.model),
                               "protocol": cfg.tasks.protocol, "git_commit": tracking.git_commit(),
                               **tracking.host(), **tags,
                               **{f"task.{t.spec.name}.version": t.spec.version for t in tasks}})


def _trainer(cfg, logger, model, every: int = 1, n_requests: int = 0):
    import lightning as L

    from editharm import placement
    from editharm.config import accelerator
    from editharm.progress import Progress

    kind, devices = accelerator(cfg.device)
    strategy = "auto"
    if cfg.devices > 1:  # spawned ranks: the run this process opened stays the one they log to
        devices, strategy = cfg.devices, "ddp_spawn"
    if placement.is_spread(model):  # accelerate placed it: Lightning must not move it
        strategy, devices = placement.strategy(model), 1
        kind = {"cuda": "gpu"}.get(strategy.root_device.type, strategy.root_device.type)
    return L.Trainer(accelerator=kind, devices=devices, strategy=strategy, logger=logger, max_epochs=1,
                     val_check_interval=every, callbacks=[Progress(n_requests)], enable_progress_bar=False,
                     num_sanity_val_steps=0, enable_checkpointing=False, enable_model_summary=False,
                     inference_mode=False, use_distributed_sampler=False, log_every_n_steps=1)


def _fit(cfg, model, tok, logger, tasks, requests) -> None:
    """Every text the run will feed the model against its context length, before compute (`limits`)."""
    from editharm import limits, tracking

    limit = limits.context_length(model)
    limits.check_requests(requests, tok, limit, limits.request_margin(cfg.method))
    limits.check_probe(cfg.probe, limit)
    for name, n in limits.fit_tasks(tasks, tok, limit).items():  # (each also a warning)
        tracking.set_tags(logger, {f"task.{name}.truncated": n})


def _chat(cfg, tok, tasks, requests):
    """Tasks and requests with their prompts in the model's chat template when `model.chat_template` says so."""
    from editharm import chat

    wrap = chat.wrapper(cfg.model, tok)
    return chat.wrap_tasks(tasks, wrap), chat.wrap_requests(requests, wrap)


def _model(cfg):
    """The model and tokenizer, from `checkpoint` (a directory or `runs:/<id>`) when one is given."""
    import dataclasses

    from editharm import models, tracking

    cache = models.cache_root(cfg.cache_dir)
    if not cfg.checkpoint:
        return models.load(cfg.model, cache)
    path = tracking.resolve_checkpoint(cfg.checkpoint, cache, tracking.tracking_uri(cfg))
    return models.load(dataclasses.replace(cfg.model, source="hub", path=str(path), revision=None), cache)


def _method_label(m) -> str:
    """The method as a run name says it: MEMIT's null-space solve is AlphaEdit, KN names its variant and neuron."""
    if getattr(m, "nullspace", False):
        return "alphaedit"
    if m.name == "kn":
        return f"kn-{m.variant}-{m.neuron}"
    return m.name


def edit(argv: list[str], parent=None, run_name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Apply the configured edits in one MLflow run (nested under `parent`, an experiment's run, when given);
    returns its run id. `resume=<run_id>` in `argv` continues that run from its last resumable state instead
    (`editharm.resume`): the same run, its remaining edits."""
    import lightning as L

    from editharm import data, evaluation, resume, stopping, tracking
    from editharm.building import build
    from editharm.evaluators import EditEvaluator
    from editharm.says import Generation

    resumed, argv = _resume_arg(argv)
    if resumed and parent is not None:
        raise ConfigError("resume=<run_id> continues a single edit run; a grid resumes by running its command again")
    stored, uri = resume.config_of(resumed, argv) if resumed else (None, None)
    tree, cfg, requests, success, tasks, probe = _setup(argv, edits=True, tree=stored)
    state = resume.load(resumed, uri) if resumed else None
    e = cfg.edits
    every = min(e.eval_every, e.n)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    g = cfg.guard
    shaped = "" if g.name == "none" else f"-{g.name}{getattr(g, 'k', '')}"
    name = run_name or f"{_method_label(cfg.method)}-{cfg.model.name}-{e.mode}-n{e.n}{shaped}"
    with tracking.start(cfg, name, parent=parent, resume=resumed) as logger:
        if state is None:
            _log_run(logger, cfg, tree, tasks, kind="edit", method=cfg.method.name, mode=e.mode, eval_every=every,
                     edits_dataset=e.dataset, guard=g.name, **(tags or {}))
        else:
            resume.mark_resumed(logger, state)
        model, tok = _model(cfg)
        tasks, requests = _chat(cfg, tok, tasks, requests)
        _fit(cfg, model, tok, logger, tasks, requests)
        dataset = Path(e.dataset).stem if e.dataset.endswith((".json", ".jsonl")) else e.dataset
        generation = (Generation(e.gen_tokens, tuple(e.fluency_templates), e.fluency_tokens) if e.generate
                      else None)
        evaluators = [EditEvaluator(requests, _metric_name(dataset), success, e.eval_batch_size, generation),
                      *evaluation.ability_evaluators(cfg, tok, tasks, probe)]
        module = build(cfg, model, tok, evaluators, len(requests), logger)  # MEND: its network resolved first
        module.fresh_weights = not cfg.checkpoint  # the configured model as loaded: its step 0 may be replayed
        _memory(cfg, model, module, logger)
        module.check_requests(requests)
        if state is not None:
            module.load_resume_state(state)
        start = module.n_edits
        dm = data.EditDataModule(requests[start:], e.batch_size, evaluators)
        trainer = _trainer(cfg, logger, model, min(every, e.n - start or every) // e.batch_size, e.n)
        try:
            if state is None:
                trainer.validate(module, datamodule=dm, verbose=False)
            if start < e.n:
                trainer.fit(module, datamodule=dm)
            else:  # stopped after its last evaluation: only the end of the run is left
                module.apply_resumed()
            if module.history[-1][0] != module.n_edits:  # the last edits since an evaluation
                trainer.validate(module, datamodule=dm, verbose=False)
            tracking.log_deltas(logger, module.model, module.cumulative,  # (once: a run resumed at its end
                                metrics=not resume.final_logged(logger))  # may have logged them)
            tracking.log_edited_model(logger, module.model, tok, checkpoint=cfg.tracking.log_checkpoint,
                                      mlflow_model=cfg.tracking.log_model, step=module.n_edits)
            if parent is None:  # a grid's cell: the grid reports on all of them at its end
                _end_of_run(logger, _own_report if cfg.tracking.log_report else None)
        except stopping.Stopped as err:
            last = module.history[-1][0] if module.history and cfg.tracking.log_state else None
            err.message = (f"{err}: run {logger.run_id} is KILLED; continue it with `editharm edit resume="
                           f"{logger.run_id}`" if last is not None else f"{err}: run {logger.run_id} is KILLED and has no "
                           "resumable state to continue from; start it again")
            tracking.set_tags(logger, {"stop_reason": f"{err} after {module.n_edits} of {e.n} edits; "
                                       + (f"resumable from the state at {last} edits" if last is not None
                                          else "no resumable state (tracking.log_state=false, or stopped before "
                                          "the first evaluation ended)")})
            raise
        return logger.run_id


def _memory(cfg, model, module, logger) -> None:
    """What the run will hold, printed and logged (params `memory.<item>_gb`) before compute."""
    from editharm import memory

    held = memory.estimate(cfg, model, module)
    log.info(memory.describe(held, f"device={cfg.device}"))
    if logger is not None:
        logger.log_hyperparams({f"memory.{k}_gb": round(v / memory.GB, 3) for k, v in held.items()})


def _resume_arg(argv: list[str]) -> tuple[str | None, list[str]]:
    """`resume=<run_id>` taken out of `argv` (it is no config key)."""
    from editharm import config

    args = config.split_args(argv)
    picked = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    rest = [a for a in args if not a.startswith("resume=")]
    if len(picked) > 1 or (picked and not picked[0].isalnum()):
        raise ConfigError(f"resume= takes one run id, got {picked}")
    return (picked[0] if picked else None), rest


def _end_of_run(logger, draw=None) -> None:
    """The run (an edit or evaluate run, or a grid's parent) read back from the store once: its `report/` drawn by
    `draw` (`_own_report`, `_report_into`) when given, then the results table printed (`console.results`). A
    failure is a warning (and the tag `report.error`), never a failed run: the work is logged."""
    from editharm import console, tracking
    from editharm.report.collect import collect

    try:
        got = collect(logger._tracking_uri, [logger.run_id])
    except Exception as err:  # noqa: BLE001
        log.warning(f"the run could not be read back for its report and results table ({type(err).__name__}: "
                    f"{err}); retry with `editharm report {logger.run_id}`")
        tracking.set_tags(logger, {"report.error": f"{type(err).__name__}: {err}"[:5000]})
        return
    if draw is not None:
        draw(logger, got)
    print(console.results(got), flush=True)


def _own_report(logger, got) -> None:
    """An edit run's own `report/` (tests skip it: tests/conftest.py)."""
    _report_into(logger, got)


def _report_into(logger, got=None) -> None:
    """The `report/` of the run `logger` holds (an edit run, or a grid's parent), from `got` when it was read back
    already; a drawing failure is a warning and a tag, never fails the work that finished."""
    from editharm import tracking

    try:
        report([logger.run_id], logger._tracking_uri, into=logger.run_id, got=got)
    except Exception as err:  # noqa: BLE001
        log.warning(f"the report could not be drawn ({type(err).__name__}: {err}); "
                    f"retry with `editharm report {logger.run_id}`")
        tracking.set_tags(logger, {"report.error": f"{type(err).__name__}: {err}"[:5000]})


def evaluate(argv: list[str]) -> str:
    """Score a model (or `checkpoint=`) on the configured tasks in its own MLflow run; returns its id."""
    import lightning as L

    from editharm import data, evaluation, tracking
    from editharm.module import EditModule

    tree, cfg, _, _, tasks, probe = _setup(argv, edits=False)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with tracking.start(cfg, f"evaluate-{cfg.model.name}") as logger:
        _log_run(logger, cfg, tree, tasks, kind="evaluate", checkpoint=cfg.checkpoint or "none")
        model, tok = _model(cfg)
        tasks, _ = _chat(cfg, tok, tasks, [])
        _fit(cfg, model, tok, logger, tasks, requests=[])
        evaluators = evaluation.ability_evaluators(cfg, tok, tasks, probe)
        module = EditModule(cfg, model, tok, evaluators, n_requests=0)
        module.fresh_weights = not cfg.checkpoint
        dm = data.EditDataModule([], 1, evaluators)
        _trainer(cfg, logger, model).validate(module, datamodule=dm, verbose=False)
        _end_of_run(logger, draw=None)
        return logger.run_id


def statistics(argv: list[str]) -> str:
    """Precompute the key statistics the configured method (`method.mom2_*`) and guard (`guard.mom2_*`) use
    into the cache, in one run."""
    from editharm import config, data, limits, models, placement, stats, tracking
    from editharm.building import build

    _quiet_lightning()
    tree = config.compose(argv)
    cfg = config.to_object(tree)
    root = data.data_dir(cfg.data_dir)
    with tracking.start(cfg, f"stats-{cfg.method.name}-{cfg.model.name}") as logger:
        _log_run(logger, cfg, tree, [], kind="stats", method=cfg.method.name)
        model, tok = _model(cfg)
        if not placement.is_spread(model):  # no Trainer here: the statistics run where `device` says
            model.to(config.torch_device(cfg.device))
        module = build(cfg, model, tok, [], 0, logger)
        wanted = [(module.statistics_modules(), cfg.method), (module.guard_statistics_modules(), cfg.guard)]
        if not any(names for names, _ in wanted):
            raise EditharmError(f"method {cfg.method.name} with guard {cfg.guard.name} uses no key statistics")
        for names, spec in wanted:
            if names:
                sample = stats.StatsSpec.of(spec)
                C, paths, counts = stats.cached_second_moments(
                    model, tok, names, stats.load_corpus(root, sample.dataset), sample, models.identity(cfg.model),
                    models.cache_root(cfg.cache_dir) / "stats", context=limits.context_length(model))
                tracking.log_statistics(logger, paths, counts, {m: c.shape[0] for m, c in C.items()})
                for name, path in paths.items():
                    print(f"{name}: {path} ({counts['n_texts']} texts, {counts['n_tokens']} tokens)")
        return logger.run_id


def train_mend(argv: list[str]) -> str:
    """Train a MEND hypernetwork for the configured model and inner parameters (`method=mend` is implied);
    returns the run id: its `mend/` artifact is `runs:/<id>/mend`."""
    from editharm import config, data, mend_runs
    from editharm.methods import mend_data

    _quiet_lightning()
    picked = [a.split("=", 1)[1] for a in config.split_args(argv) if a.startswith("method=")]
    if any(p != "mend" for p in picked):
        raise ConfigError(f"train-mend trains MEND's hypernetwork; method={picked[-1]} is not mend")
    cfg = config.to_object(config.compose(["method=mend", *argv]))
    rows = mend_data.training_data(cfg, data.data_dir(cfg.data_dir))  # bad data fails before the model loads
    model, tok = _model(cfg)
    return mend_runs.train(cfg, model, tok, rows=rows)


def experiment(name: str, argv: list[str]) -> str:
    """Run the experiment grid `configs/experiment/<name>.yaml` (overrides `argv` on every cell) as one
    parent run with a child run per cell, then log its report to the parent; returns the parent's id."""
    from editharm import experiments, stopping

    try:
        return experiments.run(name, argv, edit=edit, setup=lambda cell: _setup(cell, edits=True)[0],
                               report=lambda parent: _end_of_run(parent, _report_into))
    except stopping.Stopped as err:  # the parent and the running cell are KILLED (tracking.start)
        err.message = (f"{err}: the grid's parent run and its running cell are KILLED; run the same command again "
                       "to continue (finished cells are skipped)")
        raise


def report(run_ids: list[str], uri: str | None = None, into: str | None = None, got=None) -> str:
    """Draw the report of `run_ids` (an experiment's parent run, or edit runs; `got`: them, read back already) and
    log it under `report/` of `into` (default: the parent, or a new report run); returns the run that holds it."""
    from editharm.report import build

    return build.report(run_ids, uri, into, got)


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


