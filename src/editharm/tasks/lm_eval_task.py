"""lm-evaluation-harness tasks as ability tasks: `tasks.names=[..., lm_eval:<task>]`.

    got = load_all(["lm_eval:sst2_local"], include=[], root=data_dir, limit=100, seed=0)
    task = got["lm_eval:sst2_local"]   # a Task: spec (kind, name `lm_eval/sst2_local`), items, and lm-eval's requests
    task.items[0].prompt, task.requests[task.items[0].index]

`<task>` is a task lm-eval registers, or one a YAML defines in a folder of `tasks.lm_eval_include` or in
`task/lm_eval/` on the config search path (the package ships `sst2_local`, `rte_local`, `boolq_local`: lm-eval's
definitions over the data directory's files). A relative `dataset_kwargs.data_files` path is read beside its YAML,
else in the data directory. lm-eval builds each document's requests (its context with any few-shot examples, its
continuations) once, here, for the seeded stable subset our tasks use (`task.stable_subset`, keyed by the name as
written), so every evaluation of a run scores the same prompts and the differences are paired.

Supported: `multiple_choice` (one context), `loglikelihood` and greedy `generate_until` tasks whose metrics average
per-example values (acc, acc_norm, exact_match, ...); anything else is refused here, before compute.
"""
from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from editharm.config import search_path
from editharm.errors import ConfigError, DataError
from editharm.tasks.spec import Generation, Source, TaskSpec
from editharm.tasks.task import Item, stable_subset

PREFIX = "lm_eval:"
KINDS = {"multiple_choice": "choice", "loglikelihood": "choice", "generate_until": "generate"}
INSTALL = "pip install 'editharm[lm-eval]'"


@dataclass
class LmEvalTask:
    """An lm-eval task in our `Task` shape: `spec` and `items` (context, continuations, gold) for the checks and
    chat templates every task goes through, beside lm-eval's own task and its requests per document id."""

    spec: TaskSpec
    items: list[Item]
    task: Any = field(repr=False)
    """The lm-eval `Task` (its filters and `process_results` score the responses)."""
    requests: dict[int, list] = field(repr=False)
    """lm-eval `Instance`s by document id (an item's `index`), as lm-eval built them."""
    stats: tuple[str, ...] = ()
    """Per-example scores: `<metric>`, or `<metric>_<filter>` for a task with several filters; the first is the
    headline."""


def is_lm_eval(name: str) -> bool:
    return name.startswith(PREFIX)


def metric_name(name: str) -> str:
    """Where `lm_eval:<task>` logs: `lm_eval/<task>` (`ability/lm_eval/<task>/acc`; no `:` in metric names)."""
    return "lm_eval/" + re.sub(r"[^A-Za-z0-9_.-]", "_", name[len(PREFIX):])


def load_all(names: list[str], include: list[str], root: Path | None, limit: int | None,
             seed: int) -> dict[str, LmEvalTask]:
    """The `lm_eval:<task>` entries of `names`, loaded and checked, by name as written (one task index for all)."""
    wanted = [n for n in names if is_lm_eval(n)]
    if not wanted:
        return {}
    manager = task_manager(wanted, include)
    return {name: load(manager, name, root, limit, seed) for name in wanted}


def task_manager(names: list[str], include: list[str]):
    """lm-eval's task index over the include folders, and over lm-eval's own tasks only when a name needs them
    (indexing its ~15,000 YAMLs takes seconds). Unknown names fail here, with where valid names come from."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(f"tasks.names has {', '.join(names)}: lm-eval tasks need lm-evaluation-harness; "
                          f"{INSTALL}") from None
    dirs = include_dirs(include)
    manager = TaskManager(include_path=dirs, include_defaults=False)
    if any(n[len(PREFIX):] not in manager.task_index for n in names):
        manager = TaskManager(include_path=dirs)
    for name in names:
        task = name[len(PREFIX):]
        if task not in manager.task_index:
            close = difflib.get_close_matches(task, manager.all_subtasks, n=5)
            raise ConfigError(f"unknown lm-eval task {task!r} ({name}); valid: a task of `lm-eval ls subtasks` or one "
                              f"defined in a YAML of tasks.lm_eval_include (searched: {', '.join(map(str, dirs))})"
                              + (f"; close: {', '.join(close)}" if close else ""))
    return manager


def include_dirs(include: list[str]) -> list[Path]:
    """The user's folders (each must exist), then `task/lm_eval/` of every config search-path root."""
    dirs = [Path(d).expanduser().resolve() for d in include]
    if missing := [str(d) for d in dirs if not d.is_dir()]:
        raise ConfigError(f"tasks.lm_eval_include: no such folder: {', '.join(missing)}")
    return dirs + [p for root in search_path() if (p := root / "task" / "lm_eval").is_dir()]


def load(manager, name: str, root: Path | None, limit: int | None, seed: int) -> LmEvalTask:
    """One lm-eval task's requests for the stable subset of `limit` documents, with its items and spec."""
    task = build(manager, name[len(PREFIX):], root)
    check(task, name)
    if not task.eval_docs:
        raise DataError(f"{name}: its evaluation split has no documents")
    ids = stable_subset(len(task.eval_docs), limit, f"{name}:{seed}")
    task.build_all_requests(samples=ids if len(ids) < len(task.eval_docs) else None)
    requests: dict[int, list] = {}
    for inst in task.instances:  # a `samples` subset is numbered from 0 in its own order: back to document ids
        doc_id = ids[inst.doc_id]
        requests.setdefault(doc_id, []).append(replace(inst, metadata=(inst.task_name, doc_id, inst.repeats)))
    items = [item(task, doc_id, reqs) for doc_id, reqs in sorted(requests.items())]
    stats = tuple(stat_name(m, f.name, len(task._filters)) for f in task._filters for m in task._metric_fn_list)
    return LmEvalTask(spec(task, name, items, stats[0]), items, task, requests, stats)


def build(manager, task_name: str, root: Path | None):
    """The lm-eval task, its local `data_files` resolved (beside the YAML, else in the data directory)."""
    from lm_eval.api.task import Task
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own YAML reader (`include:`, `!function`)

    entry = manager.task_index[task_name]
    if entry.kind.name not in ("TASK", "PY_TASK"):
        raise ConfigError(f"lm-eval {entry.kind.name.lower()} {task_name!r} names several tasks; give one of them "
                          f"(`lm-eval ls subtasks`), e.g. lm_eval:<task>")
    spec: Any = task_name  # a Python task without a YAML: built by name
    if entry.yaml_path is not None or entry.cfg:  # the config lm-eval's factory would build from, files resolved
        here = Path(entry.yaml_path).parent if entry.yaml_path is not None else None
        spec = load_yaml(entry.yaml_path, resolve_func=True) if here is not None else copy.deepcopy(entry.cfg)
        if spec.get("dataset_kwargs"):
            spec["dataset_kwargs"] = local_files(spec["dataset_kwargs"], here, root, task_name)
    try:
        got = manager.load([spec])["tasks"]
    except Exception as err:  # datasets raises many kinds (offline hub, bad file, bad split)
        raise DataError(f"lm-eval task {task_name}: cannot load its documents ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); lm-eval tasks read data through `datasets`: "
                        "a hub dataset needs the network or its cache, a local one `dataset_path: json` with "
                        "`dataset_kwargs.data_files`") from None
    task = got.get(task_name) or next(iter(got.values()))
    if not isinstance(task, Task):
        raise ConfigError(f"lm-eval task {task_name!r} did not build a task")
    return task


def local_files(kwargs: dict, here: Path | None, root: Path | None, task_name: str) -> dict:
    """`dataset_kwargs` with each relative `data_files` path made absolute: beside the YAML, else in `root`."""
    if "data_files" not in kwargs:
        return kwargs

    def where(path: str) -> str:
        if Path(path).is_absolute() or "://" in path:
            return path
        for base in (here, root):
            if base is not None and (base / path).exists():
                return str(base / path)
        raise DataError(f"lm-eval task {task_name}: data file {path} is neither beside its YAML ({here or 'none'}) nor "
                        f"in the data directory ({root or 'unset: set EDITHARM_DATA_DIR'})")

    files = kwargs["data_files"]
    if isinstance(files, dict):
        files = {split: [where(p) for p in v] if isinstance(v, list) else where(v) for split, v in files.items()}
    else:
        files = [where(p) for p in files] if isinstance(files, list) else where(files)
    return {**kwargs, "data_files": files}


def check(task, name: str) -> None:
    """What this integration scores, checked before compute (one error naming what is supported)."""
    from lm_eval.api.metrics import mean

    kind = task.OUTPUT_TYPE
    if kind not in KINDS:
        raise ConfigError(f"{name}: output_type {kind} is not supported; supported: {', '.join(KINDS)}")
    if kind == "multiple_choice" and task.multiple_input:
        raise ConfigError(f"{name}: a multiple-choice task with one context per choice (e.g. winogrande) is not "
                          "supported; supported: one context, several continuations")
    if (task.config.repeats or 1) != 1:
        raise ConfigError(f"{name}: repeats={task.config.repeats}; only one greedy response per document is supported")
    gen = task.config.generation_kwargs or {}
    if kind == "generate_until" and (gen.get("do_sample") or (gen.get("temperature") or 0) > 0):
        raise ConfigError(f"{name}: sampling (do_sample/temperature) is not supported; tasks are scored greedily")
    bad = [m for m, agg in task.aggregation().items() if agg is not mean or m == "acc_mutual_info"]
    if bad:
        raise ConfigError(f"{name}: metric(s) {', '.join(bad)} are not supported; supported: metrics that average a "
                          "per-example value (acc, acc_norm, acc_bytes, exact_match, ...), not corpus-level ones (f1, "
                          "mcc, bleu, perplexity) nor acc_mutual_info (context-free scores)")


def item(task, doc_id: int, reqs: list) -> Item:
    """A document as an `Item`: lm-eval's context, its continuations (choices) and the gold (index, or answer text)."""
    doc, ctx = reqs[0].doc, reqs[0].args[0]
    if task.OUTPUT_TYPE == "loglikelihood":  # one continuation, the target: "choice" 0 of 1
        return Item(doc_id, ctx, 0, (reqs[0].args[1],))
    gold = task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "generate_until":
        if task.config.doc_to_choice is not None:
            gold = task.doc_to_choice(doc)[gold]
        return Item(doc_id, ctx, tuple(map(str, gold)) if isinstance(gold, list) else str(gold))
    choices = task.doc_to_choice(doc)
    gold = gold[0] if isinstance(gold, list) else gold
    gold = choices.index(gold) if isinstance(gold, str) and gold in choices else gold
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"lm-eval task {task.config.task}, document {doc_id}: gold {gold!r} is not one of its "
                        f"{len(choices)} choices")
    return Item(doc_id, ctx, gold, tuple(r.args[1] for r in reqs))


def stat_name(metric: str, filter_name: str, n_filters: int) -> str:
    """A per-example score's name: the metric, suffixed by the filter when a task has several."""
    name = metric if n_filters == 1 else f"{metric}_{filter_name}"
    return re.sub(r"[^a-z0-9_.-]", "_", name.lower())


def spec(task, name: str, items: list[Item], headline: str) -> TaskSpec:
    """Our spec for the checks, logs and chance level: kind, version, generation length and stops, `truncate: left`
    (as lm-eval's HF model does, a prompt past the context keeps its last tokens)."""
    cfg, gen = task.config, task.config.generation_kwargs or {}
    until = gen.get("until") or []
    stop = [until] if isinstance(until, str) else list(until)
    choice = task.OUTPUT_TYPE == "multiple_choice"  # (chance 0 for one-continuation loglikelihood tasks)
    chance = sum(1 / len(it.choices) for it in items) / len(items) if choice else 0.0
    return TaskSpec(
        name=metric_name(name), version=task.VERSION, protocol="lm_eval",
        title=f"lm-evaluation-harness task {cfg.task} ({task.OUTPUT_TYPE})",
        source=Source(file=str((cfg.dataset_kwargs or {}).get("data_files") or cfg.dataset_path)),
        kind=KINDS[task.OUTPUT_TYPE], prompt=str(cfg.doc_to_text), target_delimiter=cfg.target_delimiter,
        generation=Generation(max_new_tokens=int(gen.get("max_gen_toks", 256)), stop=stop),
        metric=headline, chance=chance, truncate="left")
