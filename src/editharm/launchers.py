"""Where an experiment's cells run: in this process, in local worker processes, or as Ray tasks.

    own, overrides = split(argv)                  # `experiment.*` keys are the launcher's, the rest the cells'
    options = parse(own)                          # ConfigError before any compute
    results = launch(options, jobs, edit, parent, progress)   # one Result per job, in job order

Every launcher runs a cell through `run_cell` (a cell that raises is a failed Result; its run is marked FAILED
by `tracking.start` where it ran) and shuts its pool or Ray down in a `finally`, so Ctrl-C, SIGTERM
(`stopping.Stopped`) or an error in the driver stops the outstanding cells. Workers log their child runs to
the parent's tracking URI, nested under it by run id (`tracking.ParentRun`). Ray is imported only in `ray_tasks`.
"""
from __future__ import annotations

import gc
import importlib.util
import os
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable, Optional, Union

from editharm.errors import ConfigError, EditharmError

if TYPE_CHECKING:
    from editharm.tracking import ParentRun

PREFIX = "experiment."
LAUNCHERS = ("local", "ray")
RAY_MISSING = "experiment.launcher=ray needs Ray, an optional extra: pip install 'editharm[ray]'"
FORWARDED_ENV = ("EDITHARM_DATA_DIR", "EDITHARM_CACHE_DIR", "EDITHARM_CONFIG_DIR", "EDITHARM_CONFIG_PATH", "HF_HOME", "HF_HUB_OFFLINE",
                 "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")
"""What a worker needs of the driver's environment (a Ray cluster's workers do not inherit it), beside
MLFLOW_TRACKING_URI, which is always the parent's."""


@dataclass(frozen=True)
class Options:
    """`experiment.<key>=value` on the experiment command line (`ray_x` is `experiment.ray.x`)."""
    launcher: str = "local"
    """`local` (workers=1: in this process, one cell after another; N: N spawned processes) or `ray`."""
    workers: int = 1
    """How many cells run at once (Ray: tasks in flight; each also needs its resources free)."""
    ray_address: str = ""
    """Empty: start a local Ray instance for the grid; `auto` or `ray://host:10001`: an existing cluster."""
    ray_num_cpus: float = 1.0
    """CPUs each cell's task reserves (Ray also sets its OMP_NUM_THREADS from this)."""
    ray_num_gpus: float = 0.0
    """GPUs each cell's task reserves."""
    ray_num_cpus_total: Optional[int] = None
    """CPUs of the local instance (empty address only); default: all of this machine's."""

    def params(self) -> dict[str, str]:
        """The options as the parent run's params (`experiment.launcher`, ...); the Ray ones only under Ray."""
        return {key: str(getattr(self, name)) for key, name in _keys().items()
                if self.launcher == "ray" or not name.startswith("ray_")}


@dataclass(frozen=True)
class Job:
    """One cell to run: `edit(argv, parent=, run_name=name, tags=tags)`."""
    argv: tuple[str, ...]
    name: str
    tags: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Result:
    run_id: Optional[str]
    error: Optional[str]
    """First line of the cell's error; None when it finished."""
    seconds: float


Progress = Callable[[int, Union[str, Result]], None]
"""`progress(index, event)`: the job's state as a word (`running`, `submitted`), then its Result."""


def _keys() -> dict[str, str]:
    return {PREFIX + f.name.replace("ray_", "ray.", 1): f.name for f in fields(Options)}


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """`(launcher options, cell overrides)` of an experiment's `key=value` arguments."""
    from editharm import config as C

    args = C.split_args(list(argv))
    return [a for a in args if a.startswith(PREFIX)], [a for a in args if not a.startswith(PREFIX)]


def parse(args: list[str]) -> Options:
    """The launcher options `experiment.<key>=value`; any bad one fails with what is valid, before compute."""
    keys, values = _keys(), {}
    types = {f.name: f.type for f in fields(Options)}
    for arg in args:
        key, _, text = arg.partition("=")
        if key not in keys:
            raise ConfigError(f"unknown experiment option {key}; valid: {', '.join(keys)}")
        name = keys[key]
        kind = types[name]
        try:
            if "Optional" in kind and text.strip().lower() in ("", "null", "none"):
                values[name] = None
            else:
                values[name] = int(text) if "int" in kind else float(text) if "float" in kind else text
        except ValueError:
            raise ConfigError(f"{key}={text!r} is not {'an integer' if 'int' in kind else 'a number'}") from None
    o = Options(**values)
    if o.launcher not in LAUNCHERS:
        raise ConfigError(f"experiment.launcher={o.launcher!r}; valid: {', '.join(LAUNCHERS)}")
    if o.workers < 1:
        raise ConfigError(f"experiment.workers={o.workers}; it must be at least 1")
    given = [a.partition("=")[0] for a in args if a.startswith(PREFIX + "ray.")]
    if o.launcher != "ray" and given:
        raise ConfigError(f"{', '.join(given)} apply to experiment.launcher=ray, not {o.launcher}")
    if o.ray_num_cpus < 0 or o.ray_num_gpus < 0:
        raise ConfigError("experiment.ray.num_cpus and experiment.ray.num_gpus must not be negative")
    if o.ray_num_cpus_total is not None and (o.ray_num_cpus_total < 1 or o.ray_address):
        raise ConfigError("experiment.ray.num_cpus_total sizes the local Ray instance: a positive integer, with "
                          f"an empty experiment.ray.address (got address={o.ray_address!r})")
    if o.launcher == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(RAY_MISSING)
    return o


def launch(options: Options, jobs: list[Job], edit: Callable, parent, progress: Progress) -> list[Result]:
    """Run `jobs` (cells) with the configured launcher under `parent` (the grid's RunLogger)."""
    from editharm import tracking  # not at the top: a spawned worker imports this module before its cell

    if not jobs:
        return []
    if options.launcher == "ray":
        return ray_tasks(jobs, edit, tracking.ParentRun.of(parent), options, progress)
    if options.workers == 1:
        return in_process(jobs, edit, parent, progress)
    return local_processes(jobs, edit, tracking.ParentRun.of(parent), options.workers, progress)


def run_cell(edit: Callable, job: Job, parent) -> Result:
    """One cell, wherever it runs; an Exception is the cell's failure (BaseExceptions such as Ctrl-C pass)."""
    t0 = time.perf_counter()
    try:
        run_id = edit(list(job.argv), parent=parent, run_name=job.name, tags=dict(job.tags))
    except Exception as err:  # noqa: BLE001  (the cell's run is marked FAILED; the grid goes on)
        return Result(None, first_line(err), time.perf_counter() - t0)
    return Result(run_id, None, time.perf_counter() - t0)


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def in_process(jobs: list[Job], edit: Callable, parent, progress: Progress) -> list[Result]:
    """`local` with one worker: each cell in this process, one after another."""
    out = []
    for k, job in enumerate(jobs):
        progress(k, "running")
        out.append(run_cell(edit, job, parent))
        progress(k, out[-1])
        gc.collect()
    return out


def worker_env(uri: str, threads: Optional[int] = None) -> dict[str, str]:
    """The environment a worker gets from the driver: the parent's tracking URI and `FORWARDED_ENV`; with
    `threads`, OMP_NUM_THREADS unless the driver set it (N workers must not each take every core)."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    return {**env, "MLFLOW_TRACKING_URI": uri}


def local_processes(jobs: list[Job], edit: Callable, parent: ParentRun, workers: int,
                    progress: Progress) -> list[Result]:
    """`local` with N workers: at most N spawned processes at once, a fresh one per cell (its memory freed after)."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    env = worker_env(parent.tracking_uri, max(1, (os.cpu_count() or 1) // min(workers, len(jobs))))
    out: list[Optional[Result]] = [None] * len(jobs)
    queue, running = list(enumerate(jobs)), {}  # process -> (job index, its result pipe, start time)
    try:
        while queue or running:
            while queue and len(running) < workers:
                k, job = queue.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(send, env, edit, job, parent), name=f"editharm-cell-{k}")
                proc.start()
                send.close()
                running[proc] = (k, receive, time.perf_counter())
                progress(k, "running")
            wait([proc.sentinel for proc in running] + [r for _, r, _ in running.values()], timeout=1.0)
            for proc, (k, receive, t0) in list(running.items()):
                if receive.poll() or not proc.is_alive():
                    try:
                        out[k] = receive.recv()
                    except EOFError:  # it died without a result: killed (out of memory?) or stopped by a signal
                        proc.join()
                        out[k] = Result(None, f"worker process exited with code {proc.exitcode}",
                                        time.perf_counter() - t0)
                    proc.join()
                    receive.close()
                    del running[proc]
                    progress(k, out[k])
    finally:
        _stop(list(running))
    return out


def _worker(send, env: dict[str, str], edit: Callable, job: Job, parent: ParentRun) -> None:
    os.environ.update(env)
    send.send(run_cell(edit, job, parent))
    send.close()


def _stop(procs: list) -> None:
    """SIGTERM each worker still running (its run is marked KILLED: `stopping`), SIGKILL what is left after 10 s."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def ray_tasks(jobs: list[Job], edit: Callable, parent: ParentRun, options: Options,
              progress: Progress) -> list[Result]:
    """`ray`: each cell a Ray task reserving `ray.num_cpus`/`ray.num_gpus`, at most `workers` in flight, on a
    local instance started for the grid (and shut down after) or the cluster at `ray.address`."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None

    stats = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = stats or "0"  # no network here: no usage reports unless asked for
    owned = not ray.is_initialized()
    out: list[Optional[Result]] = [None] * len(jobs)
    pending: dict = {}
    try:
        if owned:
            try:
                ray.init(address=options.ray_address or None, num_cpus=options.ray_num_cpus_total,
                         include_dashboard=False, logging_level="WARNING")
            except ConnectionError as err:
                raise EditharmError(f"experiment.ray.address={options.ray_address}: {first_line(err)}") from None
        task = ray.remote(max_calls=1, max_retries=0)(run_cell).options(  # a fresh worker process per cell
            num_cpus=options.ray_num_cpus, num_gpus=options.ray_num_gpus,
            runtime_env={"env_vars": worker_env(parent.tracking_uri)})
        queue, started = list(enumerate(jobs)), {}
        while queue or pending:
            while queue and len(pending) < options.workers:
                k, job = queue.pop(0)
                pending[task.remote(edit, job, parent)] = k
                started[k] = time.perf_counter()
                progress(k, "submitted")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # a timeout: signals get handled
            for ref in ready:
                k = pending.pop(ref)
                try:
                    out[k] = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died (out of memory, killed node)
                    out[k] = Result(None, f"Ray task failed: {first_line(err)}", time.perf_counter() - started[k])
                progress(k, out[k])
    finally:
        for ref in pending:  # interrupted: KeyboardInterrupt in each running task, so its run is marked KILLED
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001  (best effort: the task may have ended meanwhile)
                pass
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=10)
        if owned:
            ray.shutdown()
        if stats is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
    return out
