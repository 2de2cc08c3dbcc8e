"""A run's resumable state, and continuing a run from it.

At the end of every evaluation an edit run writes `resume/state.pt` (one file, rewritten): the edits applied,
the edited weights as they are (bit for bit: W + ΣΔ would round differently)
the cumulative ΔW, the evaluators' baselines and running means, the method's own state (its context
templates; AlphaEdit's protected keys), the RNG states, and the metrics of the steps since the last state
(`metrics`; logged after the state is written, so a kill in between loses none and doubles none).

    editharm edit resume=<run_id>          # same run id: the remaining edits, the same final numbers

Work done after the last evaluation is redone: the state is only written at evaluations, which are the
points where every figure of the run is consistent. Loaded with `torch.load(weights_only=True)`: tensors,
lists, dicts and numbers only, no pickled code.
"""
from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from editharm import config as C
from editharm.errors import ConfigError, EditharmError

FOLDER, FILE = "resume", "state.pt"
VERSION = 1
LOCAL_KEYS = ("tracking.uri", "data_dir", "cache_dir", "device")
"""What a resumed run may set anew: where things are on this machine, not what the run computes."""
GROUP_KEYS = {"method": "method.name", "model": "model.name", "guard": "guard.name", "edits": "edits.dataset"}
RESUMABLE = ("RUNNING", "KILLED", "FAILED")


def rng_state() -> dict:
    """Python's, NumPy's and torch's (CPU and every CUDA device's) global RNG states, as tensors and lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@rank_zero_only
def save(logger, state: dict) -> None:
    """Write `state` as the run's `resume/state.pt` (replacing the previous one)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FILE
        torch.save({"version": VERSION, **state}, path)
        logger.experiment.log_artifact(logger.run_id, str(path), FOLDER)


def load(run_id: str, uri: str) -> dict:
    """The run's last resumable state; a clear error when it has none."""
    raw = _fetch(run_id, f"{FOLDER}/{FILE}", uri,
                     f"run {run_id} has no resumable state ({FOLDER}/{FILE}): it stopped before its first "
                     "evaluation ended, or ran with tracking.log_state=false; start it again instead")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (a write cut short by a hard kill)
        raise EditharmError(f"run {run_id}'s resumable state ({FOLDER}/{FILE}) cannot be read "
                            f"({type(err).__name__}); start the run again") from None
    if state.get("version") != VERSION:
        raise EditharmError(f"run {run_id}'s resumable state is version {state.get('version')}; this editharm "
                            f"reads version {VERSION}")
    return state


def mark_resumed(logger, state: dict) -> None:
    """Tag a resumed run (how often, from where; the last stop's reason becomes `resume.<k>.after`) and log the
    metrics of the state's steps that never reached the store (the process died between writing the state and
    logging them)."""
    from editharm import tracking

    client, run_id = logger.experiment, logger.run_id
    tags = client.get_run(run_id).data.tags
    count = int(tags.get("resume.count", 0)) + 1
    tracking.set_tags(logger, {"resume.count": count, f"resume.{count}": f"from the state at {state['n_edits']} edits",
                               f"resume.{count}.after": tags.get("stop_reason", tags.get("error", "a hard kill"))})
    for key in ("stop_reason", "error"):
        if key in tags:
            client.delete_tag(run_id, key)
    joined = os.environ.get("MLFLOW_RUN_ID")
    if joined and joined != run_id:  # `mlflow run` opened a run of its own for this process: point it at ours
        client.set_tag(joined, "resumed_run", run_id)
        client.set_tag(joined, "mlflow.note.content", f"This `mlflow run` resumed run {run_id}; the metrics are there.")
    tracking.log_steps(logger, [(step, m) for step, m in state["metrics"]
                       if m and step not in {h.step for h in client.get_metric_history(run_id, next(iter(m)))}])


def final_logged(logger) -> bool:
    """Whether the run already logged its end-of-run `delta/<param>/final_*` metrics (stopped after them)."""
    return any("/final_" in k for k in logger.experiment.get_run(logger.run_id).data.metrics)


def config_of(run_id: str, argv: list[str]):
    """`(tree, uri)`: the config run `run_id` was started with (its `config/resolved.yaml`), with the overrides
    in `argv` that may change (`LOCAL_KEYS`) applied. Any other override must agree with the run's config: a
    resumed run computes what the run began."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from editharm import tracking

    args = C.split_args(argv)
    local = [a for a in args if a.split("=", 1)[0] in LOCAL_KEYS]
    uri = next((a.split("=", 1)[1] for a in local if a.startswith("tracking.uri=")), None) or tracking.tracking_uri()
    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as err:
        raise ConfigError(f"resume={run_id}: no such run in {uri} ({str(err).splitlines()[0]})") from None
    if run.data.tags.get("kind") != "edit":
        raise ConfigError(f"resume={run_id}: run is a {run.data.tags.get('kind', 'non-editharm')} run; only edit runs "
                          "resume (a grid resumes by running its command again)")
    if run.info.status not in RESUMABLE:
        raise ConfigError(f"resume={run_id}: the run is {run.info.status}; only {', '.join(RESUMABLE)} runs resume")
    stored = _fetch(run_id, "config/resolved.yaml", uri, f"run {run_id} has no config/resolved.yaml")
    tree = C.recompose(stored.decode("utf-8"), local)
    tree.tracking.uri = uri  # where the run was found is where it goes on
    if tree.method.name == "mend" and tree.method.hypernetwork == "auto" and run.data.tags.get("mend.hypernetwork"):
        tree.method.hypernetwork = run.data.tags["mend.hypernetwork"]  # the network it began with, not the newest
    clashes = _clashes([a for a in args if a not in local], tree)
    if clashes:
        raise ConfigError(f"resume={run_id} continues the run with its own config; these overrides change it: "
                          f"{'; '.join(clashes)}. Only {', '.join(LOCAL_KEYS)} may be given anew")
    return tree, uri


def _clashes(args: list[str], tree) -> list[str]:
    """The overrides in `args` whose value differs from the run's config `tree`."""
    flat = C.flatten(tree)
    out = []
    for arg in args:
        key, _ = arg.split("=", 1)
        if key in GROUP_KEYS:
            name = GROUP_KEYS[key]
            got = C.flatten(C.compose([arg]))[name]
        else:
            name = key
            got = OmegaConf.select(OmegaConf.from_dotlist([arg]), key)
        if name not in flat:
            out.append(f"{arg} (the run has no key {name})")
        elif got != flat[name]:
            out.append(f"{arg} (the run has {name}={flat[name]})")
    return out


def _fetch(run_id: str, artifact: str, uri: str, missing: str) -> bytes:
    """The bytes of one artifact file of the run (through the tracking server when `uri` is one)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="editharm-resume-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp,
                                                       tracking_uri=uri)
        except (MlflowException, OSError):
            raise EditharmError(missing) from None
        return Path(path).read_bytes()
