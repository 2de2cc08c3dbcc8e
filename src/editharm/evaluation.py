"""Scoring a model object from Python: the eight ability tasks, the perplexity probe and edit metrics, with the
evaluators a run's validation loop uses, driven without a Trainer (`EditModule.evaluate`).

    before = evaluate(model, tok, tasks=["rte", "sst2"], limit=50)
    ...edit the model...
    after = evaluate(model, tok, tasks=["rte", "sst2"], limit=50, baseline=before)
    after.scores["rte"]["accuracy_delta"], after.scores["rte"]["accuracy_delta_ci_low"]   # paired, per example
    after.to_pandas()

Nothing here opens an MLflow run or imports mlflow unless `track=` asks for a run (`api_runs`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from editharm import config as C
from editharm import chat as chats
from editharm import data, limits, models
from editharm.errors import ConfigError
from editharm.evaluators import EditEvaluator, PerplexityEvaluator, headline
from editharm.module import EditModule
from editharm.tasks import lm_eval_task, load_task
from editharm.tasks.evaluator import TaskEvaluator
from editharm.tasks.lm_eval_evaluator import LmEvalEvaluator


@dataclass
class Results:
    """One evaluation: per evaluator (a task's name, `perplexity`, `edit`) its scores, for a task with their 95 %
    bootstrap intervals (`<score>_ci_low/_ci_high`) and, given a baseline, paired differences (`<score>_delta` with
    their intervals); the per-example rows; the figures fixed by the data (`n`, `chance`, `majority`). The edit
    metrics and perplexity are means without intervals, as a run logs them."""

    scores: dict[str, dict[str, float]]
    rows: dict[str, list[dict]] = field(default_factory=dict)
    constants: dict[str, dict[str, float]] = field(default_factory=dict)
    baselines: dict[str, dict] = field(default_factory=dict, repr=False)
    """What a later evaluation's paired differences are measured from (`evaluate(..., baseline=this)`)."""
    data_keys: dict[str, str] = field(default_factory=dict, repr=False)
    """Per evaluator, what it scored (protocol, task version, example indices; the requests): a baseline must match."""
    prefixes: dict[str, str] = field(default_factory=dict, repr=False)
    series: dict[str, tuple[str, ...] | None] = field(default_factory=dict, repr=False)
    """Per evaluator, the scores a run plots as MLflow series (`Evaluator.series`; None: all)."""
    run_id: str | None = None
    """The MLflow run it was logged to (`track=`), or None."""

    def metrics(self) -> dict[str, float]:
        """Flat `<prefix>/<score>` names, as a run logs them (`ability/rte/acc`, `probe/perplexity`, ...)."""
        return {f"{self.prefixes[name]}/{k}": v for name, values in self.scores.items() for k, v in values.items()}

    def headline(self) -> dict[str, float]:
        """`metrics()` as a run plots them: each task's headline score and likelihood, with paired differences."""
        return headline(self.metrics(), {self.prefixes[name]: keep for name, keep in self.series.items()})

    def to_pandas(self, rows: bool = False):
        """A DataFrame: one row per evaluator with its scores as columns, or (`rows=True`) one row per example
        with the evaluator's name in column `task`. Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Results.to_pandas needs pandas: pip install pandas") from None
        if rows:
            return pd.DataFrame([{"task": name, **row} for name, got in self.rows.items() for row in got])
        return pd.DataFrame.from_dict(self.scores, orient="index").rename_axis("task")


def ability_evaluators(cfg: C.RunConfig, tok, tasks: list, probe: str | None) -> list:
    """The ability tasks' evaluators and the perplexity probe's, as `cfg.tasks` and `cfg.probe` configure them."""
    out = [(LmEvalEvaluator if isinstance(task, lm_eval_task.LmEvalTask) else TaskEvaluator)(
        task, tok, cfg.tasks.batch_size, cfg.tasks.dtype, cfg.tasks.batch_tokens) for task in tasks]
    if probe is not None:
        out.append(PerplexityEvaluator(tok, probe, cfg.probe.n_tokens, cfg.probe.chunk_tokens))
    return out


def load_tasks(cfg: C.RunConfig) -> tuple[list, str | None]:
    """The configured tasks (`lm_eval:<task>` ones first: lm-eval's) and the probe's text, read and checked before
    compute."""
    root, t = data.data_dir(cfg.data_dir), cfg.tasks
    theirs = lm_eval_task.load_all(t.names, t.lm_eval_include, root, t.limit, t.seed)
    tasks = [theirs.get(name) or load_task(name, t.protocol, root, t.limit, t.seed) for name in t.names]
    probe = data.read_probe_text(root, cfg.probe.n_tokens * 8) if cfg.probe.perplexity else None
    return tasks, probe


def run(module: EditModule, baseline: Results | None = None) -> Results:
    """One evaluation of `module.model` by `module.evaluators`, paired with `baseline` when given (checked first:
    a baseline must hold every paired evaluator, on the same examples)."""
    for ev in module.evaluators:
        if baseline is None or not ev.baseline_state():
            continue  # nothing to pair (the perplexity probe)
        if baseline.data_keys.get(ev.name) != ev.data_key():
            where = "is not in the baseline" if ev.name not in baseline.data_keys else "scored other examples there"
            raise ConfigError(f"baseline: {ev.name} {where} (baseline: {sorted(baseline.data_keys)}); a paired "
                              "comparison needs the same tasks, protocol, limit and seed (edit metrics: the same "
                              "requests, in order) as the baseline evaluation")
    for ev in module.evaluators:
        if baseline is not None and ev.name in baseline.baselines:
            ev.load_baseline(baseline.baselines[ev.name])
    metrics, rows = module.evaluate()
    scores = {ev.name: {k[len(ev.prefix) + 1:]: v for k, v in metrics.items() if k.startswith(f"{ev.prefix}/")}
              for ev in module.evaluators}
    evs = module.evaluators
    return Results(scores, rows, constants={ev.name: ev.constants() for ev in evs},
                   baselines={ev.name: ev.baseline_state() for ev in evs},
                   data_keys={ev.name: ev.data_key() for ev in evs}, prefixes={ev.name: ev.prefix for ev in evs},
                   series={ev.name: ev.series() for ev in evs})


def evaluate(model, tokenizer, tasks: Sequence[str] = C.TASKS, protocol: str = "gu2024", limit: int | None = 100,
             seed: int = 0, dtype: str = "auto", perplexity: bool = True, baseline: Results | None = None,
             data_dir: str | None = None, batch_size: int = 64, batch_tokens: int = 4096,
             track: bool | str = False) -> Results:
    """Score a model object, where it is (CPU or GPU), on ability tasks (`configs/task/<protocol>/<name>.yaml`) and
    the perplexity probe, as `editharm evaluate` does: the same seeded subsets of `limit` examples, prompts (too long
    ones truncated as the task says, and counted in a printed line), parsers and metrics, scored in `dtype` (a copy
    of the weights unless it is the model's own; `auto`: bfloat16 where the device computes it natively, else
    float32). Given `baseline` (an earlier `Results` on the same tasks), each task score gains its paired difference
    from it. Data come from `data_dir` or $EDITHARM_DATA_DIR.
    `track`: log it as an MLflow evaluate run (a string names the run; `$MLFLOW_TRACKING_URI`, else ./mlflow.db);
    nothing is logged, and MLflow is not imported, without it."""
    cfg = configure(model, {"tasks": {"names": [tasks] if isinstance(tasks, str) else list(tasks), "protocol": protocol, "limit": limit, "seed": seed,
                                      "dtype": dtype, "batch_size": batch_size, "batch_tokens": batch_tokens},
                            "probe": {"perplexity": perplexity}, "data_dir": data_dir})
    loaded, probe = load_tasks(cfg)
    loaded = chats.wrap_tasks(loaded, chats.wrapper(cfg.model, tokenizer))
    limits.fit_tasks(loaded, tokenizer, limits.context_length(model))  # truncated prompts: a warning per task
    limits.check_probe(cfg.probe, limits.context_length(model))
    module = EditModule(cfg, model, tokenizer, ability_evaluators(cfg, tokenizer, loaded, probe), n_requests=0)
    if not track:
        return run(module, baseline)
    from editharm import api_runs

    with api_runs.opened(cfg, api_runs.run_name(track, f"evaluate-{cfg.model.name}"), "evaluate") as logger:
        results = run(module, baseline)
        api_runs.log_results(logger, results, step=0)
        results.run_id = logger.run_id
    return results


def edit_metrics(model, tokenizer, requests, baseline: Results | None = None, batch_size: int = 16,
                 chat: bool = True) -> Results:
    """Efficacy, generalization and locality of edit `requests` (EditRequests or dicts) on a model object, under
    `scores["edit"]`: `*_token_acc` always, `*_success` when every request has a `ground_truth`, and
    `locality_unchanged` against `baseline` (the same call on the unedited model; without one, the model's own
    predictions are the reference and it is 1). `editharm.Editor.metrics` takes the baseline itself. The prompts go
    in the model's chat template when its config says so (`chat=False`: they are already)."""
    reqs = data.requests_of(requests)
    if chat:
        reqs = chats.wrap_requests(reqs, chats.wrapper(models.spec_from_model(model, templates=False), tokenizer))
    ev = EditEvaluator(reqs, "requests", all(r.ground_truth for r in reqs), batch_size)  # edit/requests/<metric>
    module = EditModule(configure(model, {"tasks": {"names": []}, "probe": {"perplexity": False}}), model, tokenizer,
                        [ev], n_requests=len(reqs))
    return run(module, baseline)


def configure(model, overrides: dict[str, Any]) -> C.RunConfig:
    """A scoring config for a model object (`models.spec_from_model`, templates not needed) with `overrides` on
    the defaults of `configs/run.yaml`. Scoring uses no method; `ft`, valid on every model, fills the slot."""
    node = C.OmegaConf.to_container(C.OmegaConf.structured(models.spec_from_model(model, templates=False)))
    return C.to_object(C.compose(["method=ft"], model=node, overrides=overrides))
