"""Every MLflow call: the one run per process, params, tags, artifacts, checkpoint retrieval.

    with tracking.start(cfg, run_name) as logger:   # joins $MLFLOW_RUN_ID under `mlflow run`
        ...                                          # FAILED (or KILLED) if the block raises

Artifacts: `config/resolved.yaml`, `deltas/deltas.safetensors` + `deltas/summary.json`,
`predictions/<evaluator>/edits_<n>.jsonl`, and `checkpoint/` (a plain transformers checkpoint); beside
them the edited model as an MLflow Model (transformers flavour, `models:/<model_id>`, run tag `model_uri`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from editharm import config as C
from editharm import deltas as D
from editharm import stopping
from editharm.errors import EditharmError

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"
UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default


class RunLogger(MLFlowLogger):
    """An `MLFlowLogger` that leaves ending the run to `start()`: Lightning's `finalize` would mark it
    FINISHED after the step-0 `trainer.validate`, before any edit ran."""

    def finalize(self, status: str = "success") -> None:
        pass


@dataclass(frozen=True)
class ParentRun:
    """What a nested run needs of its parent, picklable: a grid's cells in other processes (`launchers`)."""
    run_id: str
    tracking_uri: str
    experiment_name: str

    @classmethod
    def of(cls, logger: RunLogger) -> "ParentRun":
        return cls(logger.run_id, logger._tracking_uri, logger.experiment.get_experiment(logger.experiment_id).name)


def tracking_uri(cfg: C.RunConfig | None = None) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else MLflow 3's default `sqlite:///mlflow.db`."""
    configured = cfg.tracking.uri if cfg is not None else None
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


@contextmanager
def start(cfg: C.RunConfig, run_name: str, parent: RunLogger | ParentRun | None = None,
          resume: str | None = None) -> Iterator[RunLogger]:
    """Open (or, under `mlflow run`, join) this process's run; end it FINISHED, or FAILED on error, or KILLED
    when SIGTERM/SIGINT stops it (`stopping`: raised where the run is, within seconds). With a `parent`, open a
    new run nested under it (same experiment, `mlflow.parentRunId`); with `resume`, reopen that run (RUNNING
    again)."""
    if parent is not None:
        ref = parent if isinstance(parent, ParentRun) else ParentRun.of(parent)
        logger = RunLogger(experiment_name=ref.experiment_name, tracking_uri=ref.tracking_uri, run_name=run_name,
                           log_model=False, tags={"mlflow.parentRunId": ref.run_id})
    else:
        if not resume and not os.environ.get("MLFLOW_RUN_ID"):
            ensure_experiment(cfg.tracking.experiment, tracking_uri(cfg))
        logger = RunLogger(experiment_name=cfg.tracking.experiment, tracking_uri=tracking_uri(cfg),
                           run_id=resume or os.environ.get("MLFLOW_RUN_ID"), run_name=cfg.tracking.run_name or run_name,
                           log_model=False)
    run_id = logger.run_id  # creates the run now, so a failure below is recorded against it
    if resume:
        logger.experiment.update_run(run_id, "RUNNING")
    with stopping.on_signals():  # still installed while the run is marked: a second signal cannot cut that short
        try:
            yield logger
        except (KeyboardInterrupt, stopping.Stopped) as err:
            mark_killed(logger, str(err) or type(err).__name__)
            raise
        except SystemExit as err:
            if isinstance(err.__context__, KeyboardInterrupt):  # Lightning turns Ctrl-C inside fit into exit(1)
                mark_killed(logger, "stopped by KeyboardInterrupt")
            else:
                mark_failed(logger, err)
            raise
        except BaseException as err:
            mark_failed(logger, err)
            raise
        else:
            logger.experiment.set_terminated(run_id, "FINISHED")
    print_links(logger, nested=parent is not None)


def ensure_experiment(name: str, uri: str) -> None:
    """Create experiment `name` unless it exists. Runs started at once against one server race to create it; the
    loser's `RESOURCE_ALREADY_EXISTS` only means the winner made it (Lightning's logger would raise it)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS" and client.get_experiment_by_name(name) is None:
                raise


def mark_killed(logger: RunLogger, reason: str) -> None:
    """Tag the run with why it stopped (`stop_reason`, unless the run set a fuller one) and mark it KILLED."""
    if "stop_reason" not in logger.experiment.get_run(logger.run_id).data.tags:
        logger.experiment.set_tag(logger.run_id, "stop_reason", reason[:5000])
    logger.experiment.set_terminated(logger.run_id, "KILLED")


def mark_failed(logger: RunLogger, err: BaseException) -> None:
    """Tag the run with the error and mark it FAILED (what was logged before stays)."""
    kind = "input" if isinstance(err, EditharmError) else type(err).__name__
    logger.experiment.set_tag(logger.run_id, "error", f"{kind}: {err}"[:5000])
    logger.experiment.set_terminated(logger.run_id, "FAILED")


def fail_joined_run(err: BaseException) -> None:
    """Under `mlflow run`, mark the run we were handed FAILED when we fail before joining it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri())
        client.set_tag(run_id, "error", f"input: {err}"[:5000])
        client.set_terminated(run_id, "FAILED")


@rank_zero_only
def log_config(logger: RunLogger, tree) -> None:
    """Flattened keys as params, the resolved YAML as `config/resolved.yaml`."""
    params = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in C.flatten(tree).items()}
    logger.log_hyperparams(params)
    log_text(logger, "config/resolved.yaml", C.to_yaml(tree))


@rank_zero_only
def log_statistics(logger: RunLogger | None, paths: dict[str, Path], counts: dict[str, int], dims: dict[str, int]) -> None:
    """Key statistics: their cache files as `stats/` artifacts, and what they average over as params
    `stats.<module>.{n_texts,n_tokens,tokens_per_dim}`."""
    if logger is not None:
        log_files(logger, "stats", list(paths.values()))
        logger.log_hyperparams({f"stats.{m}.{k}": v for m, d in dims.items()
                                for k, v in {**counts, "tokens_per_dim": round(counts["n_tokens"] / d, 1)}.items()})


@rank_zero_only
def set_tags(logger: RunLogger | None, tags: dict[str, str]) -> None:
    if logger is not None:
        for key, value in tags.items():
            logger.experiment.set_tag(logger.run_id, key, str(value))


def log_benchmark(run_name: str, params: dict, figures: dict[str, float]) -> None:
    """A benchmark's figures as one run of the `editharm-benchmarks` experiment, metrics under `bench/`."""
    import mlflow

    mlflow.set_experiment("editharm-benchmarks")
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params(params)
        mlflow.log_metrics({f"bench/{k}": v for k, v in figures.items()})


def host() -> dict[str, str]:
    """The machine a run ran on, as tags: `host.cpu` (model and cores), `host.gpu` (the CUDA devices, or none)."""
    import platform

    import torch

    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.exists() else []
    cpu = f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"host.cpu": cpu, "host.gpu": ", ".join(gpus) or "none"}


def git_commit() -> str:
    """The package's git commit (with `-dirty` for uncommitted changes), or `unknown`."""
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def log_steps(logger: RunLogger | None, steps: list[tuple[int, dict[str, float]]]) -> None:
    """Log each `(step, metrics)` (an edit run's buffered steps, written with its resumable state)."""
    if logger is not None:
        for step, metrics in steps:
            logger.log_metrics(metrics, step=step)


@rank_zero_only
def log_evaluation(logger: RunLogger | None, step: int, metrics: dict[str, float]) -> None:
    """Every figure of the evaluation at `step` (scores, intervals, paired differences, secondary scores) as the
    table artifact `evaluations/edits_<step>.json`, which the report reads; MLflow's series hold the headlines."""
    if logger is not None:
        log_text(logger, f"evaluations/edits_{step}.json", json.dumps(metrics, indent=1, sort_keys=True))


@rank_zero_only
def log_jsonl(logger: RunLogger | None, artifact: str, rows: list[dict]) -> None:
    if logger is not None:
        log_text(logger, artifact, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@rank_zero_only
def log_files(logger: RunLogger | None, folder: str, paths: list[Path]) -> None:
    if logger is not None:
        for path in paths:
            logger.experiment.log_artifact(logger.run_id, str(path), folder)


@rank_zero_only
def log_deltas(logger: RunLogger, model, cumulative: D.Deltas, metrics: bool = True) -> None:
    """`deltas/deltas.safetensors` (cumulative ΔW, parameter layout) and `deltas/summary.json`."""
    if not cumulative:
        return
    summary = D.stats(model, cumulative, applied=True)
    for name, cond in D.condition_numbers(model, cumulative).items():
        summary[name].update(cond)
    with tempfile.TemporaryDirectory() as tmp:
        D.save(cumulative, Path(tmp) / "deltas.safetensors", metadata={"layout": "parameter", "sum": "cumulative"})
        D.save_summary(summary, Path(tmp) / "summary.json")
        logger.experiment.log_artifacts(logger.run_id, tmp, "deltas")
    if metrics:
        logger.log_metrics({f"delta/{n}/final_{k}": v for n, s in summary.items() for k, v in s.items()})


@rank_zero_only
def log_checkpoint(logger: RunLogger, model, tokenizer) -> None:
    """The edited model under `checkpoint/`, loadable with `AutoModelForCausalLM.from_pretrained`."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        logger.experiment.log_artifacts(logger.run_id, tmp, CHECKPOINT)


@rank_zero_only
def log_edited_model(logger: RunLogger, model, tokenizer, checkpoint: bool = True, mlflow_model: bool = True,
                     step: int = 0) -> str | None:
    """What `tracking.log_checkpoint` and `tracking.log_model` ask for: `checkpoint/`, and the MLflow Model
    (see `log_model`); returns the `models:/` URI, or None."""
    if checkpoint:
        log_checkpoint(logger, model, tokenizer)
    return log_model(logger, model, tokenizer, step) if mlflow_model else None


@rank_zero_only
def log_model(logger: RunLogger, model, tokenizer, step: int = 0) -> str:
    """The edited model as an MLflow Model of this run (transformers flavour, task text-generation): listed
    in the run's Models column, loadable with `mlflow.transformers.load_model(uri)` and registrable with
    `mlflow.register_model(uri, name)`. Returns its `models:/<model_id>` URI, also set as the run tag
    `model_uri`; `step` (edits applied) links the run's metrics at that step to the model.

    Logged against our run through the client: the logged model is created in the run's experiment first
    (MLflow's own creation would use the fluent experiment, `0` here), no fluent run is started or ended,
    and the run's status is left to `start()`. Requirements are given, not inferred (inference loads the model
    in a subprocess and may reach the network); no input example, so no signature inference or serving check.
    The weights are written a second time (beside `checkpoint/`): MLflow 3.17 cannot log a local checkpoint
    directory under transformers 5 (`build_flavor_config_from_local_checkpoint` fails on the lazy pipeline
    registry), and it references weights only for hub repositories and PEFT base models."""
    import time

    import mlflow
    from huggingface_hub import ModelCard

    started = time.perf_counter()
    client, run_id = logger.experiment, logger.run_id
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id, name=_model_name(run.info.run_name), source_run_id=run_id,
        params=dict(run.data.params), tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")})
    card = ModelCard(f"---\nlibrary_name: transformers\ntags: [editharm, knowledge-editing]\n---\n\n"
                     f"# {run.info.run_name}\n\nEdited by editharm, run `{run_id}`; the base model and the edits "
                     "are in the run's tags, params and `config/resolved.yaml`.\n")  # no hub look-up for a card
    with _global_tracking_uri(logger._tracking_uri):  # MLflow resolves its client from the global URI
        info = mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name=logged.name,
                                             task="text-generation", model_id=logged.model_id, run_id=run_id,
                                             step=step, model_card=card, pip_requirements=_requirements())
    uri = f"models:/{info.model_id}"
    client.set_tag(run_id, "model_uri", uri)
    logger.log_metrics({"time/log_model_s": time.perf_counter() - started}, step=step)
    return uri


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` for the block, then put back, $MLFLOW_TRACKING_URI included
    (`mlflow.set_tracking_uri` also sets or unsets it)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _model_name(run_name: str | None) -> str:
    """A logged model's name from the run name: letters, digits, `-_` (MLflow refuses `/:.%"'` in it; `·` is
    a letter to `isalnum`, so ASCII is required too)."""
    name = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "-" for c in run_name or "")
    return name or "edited-model"


def _requirements() -> list[str]:
    """Pins of what loading the model needs, from the installed versions (local labels such as `+cpu` dropped)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in ("mlflow", "transformers", "torch", "tokenizers",
                                                               "safetensors")]


def ui_urls(uri: str, experiment_id: str, run_id: str) -> tuple[str, str]:
    """`(run, experiment)`: the run's charts (its Model-metrics tab: abilities against edits; the report is one click
    away under Artifacts) and the experiment's run list, both in the UI's model-training view
    (`workflowType=machine_learning`), on the tracking server for http(s) URIs, else on `mlflow ui`'s default."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI
    view = "workflowType=machine_learning"
    return (f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{view}",  # the charts first
            f"{base}/#/experiments/{experiment_id}/runs?{view}")


def links(logger: RunLogger) -> list[str]:
    """The lines printed at the end of a run: where to open it in the UI, and its logged model's URI."""
    client, run_id = logger.experiment, logger.run_id
    run = client.get_run(run_id)
    uri = logger._tracking_uri
    page, listing = ui_urls(uri, run.info.experiment_id, run_id)
    how = "" if uri.startswith(("http://", "https://")) else f"run `mlflow ui --backend-store-uri {uri}` and "
    out = [f"editharm: {how}open {page} (all runs: {listing})"]
    if model_uri := run.data.tags.get("model_uri"):
        out.append(f"editharm: edited model {model_uri}: mlflow.transformers.load_model(uri), "
                   "mlflow.register_model(uri, name)")
    return out


@rank_zero_only
def print_links(logger: RunLogger, nested: bool = False) -> None:
    """Where to open the run, on stdout (a grid's cells: an INFO line each, the parent's address is what counts)."""
    try:
        lines = links(logger)
    except Exception as err:  # the run is logged and finished; a failed look-up must not fail the command
        lines = [f"editharm: run {logger.run_id} finished; its UI address is unknown ({type(err).__name__}: {err})"]
    if nested:
        for line in lines:
            log.info(line.removeprefix("editharm: "))
    else:
        print("\n".join(lines), flush=True)


def download_checkpoint(run_id: str, out: Path, uri: str | None = None) -> Path:
    """Fetch a run's `checkpoint/` artifact so that `out` is a loadable transformers checkpoint."""
    import mlflow
    from mlflow.exceptions import MlflowException

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise EditharmError(f"--out {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINT, dst_path=tmp,
                                                           tracking_uri=uri or tracking_uri()))
            for item in got.iterdir():
                shutil.move(str(item), out / item.name)
    except MlflowException as err:
        raise EditharmError(f"cannot fetch the checkpoint of run {run_id}: {str(err).splitlines()[0]}") from None
    if not (out / "config.json").exists():
        raise EditharmError(f"run {run_id} has no checkpoint artifact (was tracking.log_checkpoint=false?)")
    return out


def resolve_checkpoint(spec: str, cache: Path, uri: str | None = None) -> Path:
    """A local checkpoint directory for `spec`: a directory as is, or `runs:/<run_id>` downloaded once
    into `<cache>/checkpoints/<run_id>` from store `uri` (default: `tracking_uri()`; pass the run's
    `tracking_uri(cfg)` so that `tracking.uri=` is honoured, not only $MLFLOW_TRACKING_URI)."""
    if spec.startswith("runs:/"):
        run_id = spec[len("runs:/"):].strip("/").split("/")[0]
        out = cache / "checkpoints" / run_id
        return out if (out / "config.json").exists() else download_checkpoint(run_id, out, uri)
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise EditharmError(f"checkpoint={spec!r} is neither runs:/<run_id> nor a directory with config.json")
    return path


def find_runs(tags: dict[str, str], uri: str, status: str | None = "FINISHED") -> list[str]:
    """Ids of the runs (any experiment) carrying all `tags` with `status` (None: any), newest first."""
    return [r.info.run_id for r in _search(uri, status) if all(r.data.tags.get(k) == v for k, v in tags.items())]


def child_runs(parent_id: str, uri: str, status: str | None = "FINISHED") -> dict[str, str]:
    """`config_hash` tag -> run id of the runs nested under `parent_id` (the newest per hash)."""
    out: dict[str, str] = {}
    for r in _search(uri, status, f"tags.`mlflow.parentRunId` = '{_hex(parent_id)}'"):
        h = r.data.tags.get("config_hash")
        if h and h not in out:
            out[h] = r.info.run_id
    return out


def finished_cells(experiment: str, uri: str) -> dict[str, str]:
    """`config_hash` -> run id of the FINISHED cells of experiment grid `experiment`, under any parent (newest)."""
    out: dict[str, str] = {}
    for r in _search(uri, "FINISHED", "tags.kind = 'edit'"):
        h = r.data.tags.get("config_hash")
        if r.data.tags.get("experiment") == experiment and h and h not in out:
            out[h] = r.info.run_id
    return out


def close_stale_children(parent_id: str, uri: str, reason: str) -> None:
    """Mark KILLED the runs under `parent_id` still RUNNING (their process was killed hard), with `reason`."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for r in _search(uri, "RUNNING", f"tags.`mlflow.parentRunId` = '{_hex(parent_id)}'"):
        client.set_tag(r.info.run_id, "error", f"killed: {reason}")
        client.set_terminated(r.info.run_id, "KILLED")


def _hex(run_id: str) -> str:
    if not run_id.isalnum():
        raise EditharmError(f"not a run id: {run_id!r}")
    return run_id


def _search(uri: str, status: str | None, where: str = "") -> list:
    """Every run of the store with `status` (None: any) matching `where`, newest first. Tags with arbitrary values
    are filtered by the callers in Python."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    filters = [f"attributes.status = '{status}'"] if status else []
    return client.search_runs(experiments, " and ".join(filters + ([where] if where else [])),
                              order_by=["attributes.start_time DESC"], max_results=50000)


def fetch_artifact(uri: str, cache: Path, tracking: str | None = None) -> Path:
    """The local folder of a `runs:/<run_id>/<path>` artifact, downloaded once into `<cache>/<run_id>/<path>`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
    out = cache / run_id / path
    if out.is_dir() and any(out.iterdir()):
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # renamed into place whole: never half a folder
            got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path or None, dst_path=tmp,
                                                           tracking_uri=tracking or tracking_uri()))
            shutil.rmtree(out, ignore_errors=True)
            got.rename(out)
    except (MlflowException, OSError) as err:
        raise EditharmError(f"cannot fetch {uri}: {str(err).splitlines()[0]}") from None
    return out


def log_text(logger: RunLogger, artifact: str, text: str) -> None:
    folder, _, name = artifact.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_text(text, encoding="utf-8")
        logger.experiment.log_artifact(logger.run_id, str(Path(tmp) / name), folder or None)
