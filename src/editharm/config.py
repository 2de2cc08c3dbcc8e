"""Typed run configuration: YAML groups + dotted overrides -> a validated `RunConfig`.

    cfg = load(["method=ft", "model=tiny-llama", "edits.n=4"])

`configs/run.yaml` names one file per group (`model`, `method`, `edits`); a `group=name` argument picks
another file, `configs/method/<method>/<model>.yaml` is merged on top when it exists, and `a.b=value`
arguments override single keys. Every key is typed (OmegaConf structured configs): an unknown key or a
value of the wrong type fails with a `ConfigError` that lists what is valid.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from editharm.errors import ConfigError

GROUPS = ("model", "method", "edits", "guard")
MODES = ("single", "instance-sequential", "batch", "batch-sequential")
MODEL_SOURCES = ("embedded", "tiny", "hub")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Templates:
    """Module-name templates: `{}` is replaced by a layer index. Architecture is data, never code."""

    layer: str = MISSING
    """One transformer block, e.g. `model.layers.{}`."""
    mlp_in: str = MISSING
    """The MLP's input projection (`up_proj`, GPT-2 `c_fc`)."""
    mlp_gate: str = MISSING
    """The MLP's first projection, whose output the nonlinearity takes (`gate_proj`, GPT-2 `c_fc`): KN's
    `neuron=pre`."""
    mlp_out: str = MISSING
    """The MLP's output projection (`down_proj`, GPT-2 `c_proj`): the usual rewrite target."""
    ln_f: str = MISSING
    """The final norm before the LM head."""
    lm_head: str = MISSING
    embed: str = MISSING
    """The input token embedding."""


@dataclass
class ModelConfig:
    name: str = MISSING
    """Short name used in tags, run names and cache keys."""
    source: str = MISSING
    """`embedded` (GGUF inside a pip wheel), `tiny` (seeded random model) or `hub` (hub id or local dir)."""
    path: str = ""
    """`hub`: a hub id or a local checkpoint directory. `embedded`: `<distribution>:<file inside it>`."""
    revision: Optional[str] = None
    """Hub revision (commit or tag) for `hub` sources."""
    sha256: Optional[str] = None
    """Expected checksum of the embedded GGUF file."""
    dtype: str = "float32"
    seed: int = 0
    """Initialisation seed of `tiny` models."""
    architecture: dict[str, Any] = field(default_factory=dict)
    """`tiny` only: keyword arguments of the transformers config (must include `model_type`)."""
    n_layers: int = MISSING
    templates: Templates = field(default_factory=Templates)
    chat_template: Any = False
    """Wrap edit and task prompts in a chat template, each as one user turn (chat-tuned models): `true` for the
    tokenizer's own, or a Jinja template string; `false` (default) feeds prompts as plain text."""
    device_map: Any = None
    """Spread the model over devices with accelerate: `auto`, `balanced`, `balanced_low_0`, `sequential`, or a
    map of module names to a GPU index, `cuda:N`, `cpu` or `disk`. Replaces `device`; the model is scored and
    edited in place (no second copy in `tasks.dtype`). Edited weights must sit on a device, not offloaded."""


@dataclass
class EditsConfig:
    dataset: str = "zsre"
    """`zsre`, `counterfact`, or a path to a .json (array) or .jsonl file of edit records in one of the formats
    of `format`."""
    format: str = "auto"
    """Record format of a file given as `dataset`: `auto` (detected from the first record's fields), `editharm`
    (ours: prompt, subject, target_new, ...), `zsre` (the paper's, MEND's, EasyEdit's), `counterfact` (EasyEdit's),
    `knowedit` or `mquake`."""
    split: str = "edit"
    """CounterFact split file to draw edits from (`edit`, `train` or `val`)."""
    n: int = 10
    """Number of edit requests."""
    mode: str = "instance-sequential"
    """`single` (revert after each edit's evaluation), `instance-sequential`, `batch`, `batch-sequential`."""
    batch_size: int = 1
    """Requests per edit step. `batch` mode uses one batch of `n`."""
    eval_every: int = 5
    """Evaluate after every this many edits (a multiple of `batch_size`); always also after the last."""
    shuffle: bool = False
    """Draw the `n` requests at random (seeded by `seed`) instead of taking the first `n`."""
    seed: int = 0
    """Seed of the request selection and order."""
    eval_batch_size: int = 16
    """Requests per forward pass when scoring edit metrics."""
    generate: bool = False
    """Also score what the model generates (greedy), logged beside the teacher-forced metrics: `*_says_new` (the
    new target occurs in the `gen_tokens` tokens generated after the prompt or paraphrase), `*_says_old` (the old
    answer still does) and `fluency` (ROME's n-gram entropy of `fluency_tokens` tokens generated from each
    `fluency_templates` filled with the request's subject)."""
    gen_tokens: int = 16
    """`generate`: tokens generated after each prompt and paraphrase."""
    fluency_templates: list[str] = field(default_factory=lambda: ["{} is", "{} is known for"])
    """`generate`: prompts about the edited subject ("{}") whose continuations are scored for fluency."""
    fluency_tokens: int = 64
    """`generate`: tokens generated from each fluency template."""
    max_rel_fro: Optional[float] = None
    """Collapse guard: an edit step whose ‖ΔW‖_F/‖W‖_F exceeds this on any weight is reported (tag, metric
    `edit/skipped`) and not applied. Non-finite deltas are always refused."""


@dataclass
class ProbeConfig:
    perplexity: bool = True
    """Measure perplexity on held-out text (WikiText-2 validation, disjoint from statistics corpora)."""
    n_tokens: int = 4096
    chunk_tokens: int = 256


TASKS = ("gsm8k", "rte", "nq_open", "boolq", "mutual", "samsum", "conll03", "sst2")


@dataclass
class TasksConfig:
    names: list[str] = field(default_factory=lambda: list(TASKS))
    """General-ability tasks run in the validation loop (`configs/task/<protocol>/<name>.yaml`); `lm_eval:<task>`
    runs an lm-evaluation-harness task (`pip install 'editharm[lm-eval]'`) on the same weights."""
    lm_eval_include: list[str] = field(default_factory=list)
    """Folders of lm-evaluation-harness task YAMLs for `lm_eval:<task>` names, searched before lm-eval's own tasks
    (its `--include_path`); `task/lm_eval/` on the config search path is always searched."""
    protocol: str = "gu2024"
    """`gu2024` (the paper's files and prompts, its bugs fixed) or `harness` (lm-evaluation-harness practice)."""
    reuse: bool = True
    """Reuse the unedited model's evaluation (step 0) when the same weights, data, settings and code scored it
    before (cache_dir/evaluations/; every cell of a grid starts from the same weights); false scores it again."""
    limit: Optional[int] = 100
    """Examples per task (a seeded, stable, nested subset); null for the full sets."""
    seed: int = 0
    """Seed of the subset selection."""
    batch_size: int = 64
    """Most prompts in one scoring batch."""
    batch_tokens: int = 4096
    """Padded prompt tokens in one scoring batch (prompts × the longest; the gold's and the choices' tokens
    come on top): long prompts go in small batches, short ones in large, so little of a batch is padding."""
    dtype: str = "auto"
    """Precision the tasks are scored in: a copy of the current weights in this dtype, refreshed before
    every evaluation. `auto`: bfloat16 where the device multiplies it natively (GPUs from Ampere on, CPUs with
    AVX512-BF16 or AMX: ~4x faster prefill than float32 there), float32 elsewhere (an AVX2-only CPU runs bfloat16
    ~100x slower than float32). `float32` scores the weights themselves. Edit metrics and perplexity always use
    the model's own dtype."""


@dataclass
class TrackingConfig:
    experiment: str = "editharm"
    """MLflow experiment name (ignored when joining a run started by `mlflow run`)."""
    uri: Optional[str] = None
    """Tracking URI; default: $MLFLOW_TRACKING_URI, else MLflow's default `sqlite:///mlflow.db`."""
    run_name: Optional[str] = None
    log_checkpoint: bool = True
    """Log the edited model as a transformers checkpoint under the `checkpoint/` artifact."""
    log_model: bool = True
    """Log the edited model as an MLflow Model (transformers flavour, `models:/<model_id>`, run tag `model_uri`):
    `mlflow.transformers.load_model(uri)` loads it, `mlflow.register_model(uri, name)` registers it."""
    log_predictions: bool = True
    log_state: bool = True
    """Write the resumable state (`resume/state.pt`: edits applied, cumulative ΔW, baselines, RNG) at every
    evaluation, so `editharm edit resume=<run_id>` can continue the run after a stop or a crash."""
    log_report: bool = True
    """Draw the run's own report (`report/`: ability against edits, tables with paired differences) at its end;
    a run inside an experiment leaves that to the experiment's report."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None
    """The selected method's own config dataclass (see `editharm.methods`)."""
    guard: Any = None
    """The selected guard's config dataclass (see `editharm.guards`): what shapes each edit's ΔW."""
    edits: EditsConfig = field(default_factory=EditsConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    """Global seed, applied once in the entry point."""
    data_dir: Optional[str] = None
    """Local data directory; default $EDITHARM_DATA_DIR, else hub dataset names."""
    cache_dir: Optional[str] = None
    """Converted models and statistics; default $EDITHARM_CACHE_DIR, else ~/.cache/editharm."""
    device: str = "auto"
    """Where a run computes: `auto` (a GPU if there is one), `cpu`, `cuda` (`gpu`) or `cuda:N` (GPU N)."""
    devices: int = 1
    """`editharm evaluate`: processes that split the task items (DDP, one per GPU, or CPU processes); the numbers
    equal one process's. An edit run is one process (its model changes as it goes)."""
    checkpoint: Optional[str] = None
    """`evaluate`: a local checkpoint directory or `runs:/<run_id>` (the run's edited checkpoint) to score
    instead of the model's own weights; the model config still supplies templates and the name."""


def config_dir() -> Path:
    """The package's own `configs/` (inside the installed package; in a checkout, the repository's top-level
    `configs/`, which `src/editharm/configs` links to), or $EDITHARM_CONFIG_DIR, which replaces it whole."""
    if env := os.environ.get("EDITHARM_CONFIG_DIR"):
        return Path(env)
    return Path(__file__).resolve().parent / "configs"


def search_path() -> list[Path]:
    """Where config files are looked up, first match first: the folders of $EDITHARM_CONFIG_PATH (`os.pathsep`
    separated; `editharm --config-dir DIR` prepends DIR), then `config_dir()`. A user's folder holds only the files
    it adds or replaces (`model/my-model.yaml`, `method/rome/my-model.yaml`, `task/gu2024/my-task.yaml`, ...)."""
    extra = [Path(p).expanduser() for p in os.environ.get("EDITHARM_CONFIG_PATH", "").split(os.pathsep) if p]
    return [*extra, config_dir()]


def find(rel: str) -> Path:
    """The first file `rel` (e.g. `model/tiny-llama.yaml`; `.yml` found too) on the search path, else where the
    package would hold it (a path that does not exist, for the caller's error)."""
    for root in search_path():
        for candidate in (root / rel, (root / rel).with_suffix(".yml")):
            if candidate.is_file():
                return candidate
    return config_dir() / rel


def names(folder: str) -> list[str]:
    """The YAML names in `folder` (e.g. `model`, `task/gu2024`) over the whole search path."""
    return sorted({p.stem for root in search_path() for ext in ("yaml", "yml") for p in (root / folder).glob(f"*.{ext}")})


def group_names(group: str) -> list[str]:
    return names(group)


def _merged_table(rel: str) -> dict:
    """A YAML table merged over the search path, the first folder's entries winning."""
    out: dict = {}
    for root in reversed(search_path()):
        if (root / rel).is_file():
            out.update(OmegaConf.to_container(OmegaConf.load(root / rel), resolve=True) or {})
    return out


def model_config(name: str | dict, **overrides: Any) -> ModelConfig:
    """The typed config of a shipped model (`configs/model/<name>.yaml`), a model YAML file or a model node (a dict,
    `hf_model`'s), with `overrides` (e.g. `dtype="bfloat16"`) on top."""
    node = name if isinstance(name, dict) else _group_file("model", name)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), node, overrides))


def model_types() -> dict[str, dict[str, str]]:
    """`model_types.yaml`: module-name templates by transformers `model_type` (a user's folder may add families)."""
    return _merged_table("model_types.yaml")


def architecture_node(hf_config, name: str, required: bool = True, **fields: Any) -> dict:
    """A model group node for a transformers config: its `model_type`'s templates (`configs/model_types.yaml`) and
    depth, with `fields` (source, path, dtype, ...). A family not in the table is a `ConfigError` naming the file
    (`required=False`: empty templates, enough to score a model)."""
    table = model_types()
    kind = getattr(hf_config, "model_type", None)
    if kind not in table and required:
        raise ConfigError(f"model_type {kind!r} has no module templates; known: {', '.join(sorted(table))}. Add its "
                          f"layer, mlp_in, mlp_gate, mlp_out, ln_f, lm_head and embed module names to "
                          f"model_types.yaml in a folder of $EDITHARM_CONFIG_PATH (or give a model YAML)")
    templates = table.get(kind) or {k: "" for k in Templates.__dataclass_fields__}
    return {"name": name, "n_layers": int(hf_config.num_hidden_layers), "templates": dict(templates), **fields}


def hf_model(where: str) -> dict:
    """The model node of `model=hf:<hub id[@revision] or checkpoint folder>`: the shipped model whose `path` it is
    (`hf:meta-llama/Llama-2-7b-hf` is `llama-2-7b`); else read from the checkpoint's config (the local Hugging Face
    cache when offline) with its dtype as stored, named `hub--<org>--<name>` or `local--<folder>` (a folder by its
    absolute path, which is also its cache identity)."""
    from transformers import AutoConfig

    where, _, revision = where.partition("@") if not Path(where).expanduser().exists() else (where, "", "")
    for name in group_names("model"):
        node = _group_file("model", name)
        if node.get("path") == where and (node.get("revision") or "") == revision:
            return node
    folder = Path(where).expanduser()
    if folder.is_dir():
        where = str(folder.resolve())
    try:
        hf_config = AutoConfig.from_pretrained(where, **({"revision": revision} if revision else {}))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model=hf:{where}: cannot read its config ({str(err).splitlines()[0]}); give a hub id in the "
                          "local Hugging Face cache (hf:org/name or hf:org/name@revision) or a checkpoint folder") from None
    stored = str(getattr(hf_config, "dtype", None) or "float32").removeprefix("torch.")
    name = f"local--{folder.resolve().name}" if folder.is_dir() else "hub--" + where.replace("/", "--")
    return architecture_node(hf_config, name, source="hub", path=where, revision=revision or None,
                             dtype=stored if stored in DTYPES else "float32")


def layer_defaults(method: str, n_layers: int) -> dict:
    """`layer_rules.yaml` applied to a depth: the method's default layer keys for a model that is not shipped
    (`model=hf:`, a model object in the Python API), under any per-model file of its own. Layers are clipped to
    the model's and never repeated."""
    rules = _merged_table("layer_rules.yaml").get(method, {})
    out = {}
    for key, rule in rules.items():
        if isinstance(rule, dict):
            picked = range(n_layers - max(1, int(rule["last"])), n_layers)
        elif isinstance(rule, list):
            picked = range(int(rule[0] * n_layers), int(rule[1] * n_layers) + 1)
        else:
            picked = [int(rule * n_layers)]
        layers = sorted({min(max(layer, 0), n_layers - 1) for layer in picked})
        out[key] = layers[0] if key == "layer" else layers
    return out


def split_args(argv: list[str]) -> list[str]:
    """`key=value` arguments; an argument holding several (as `mlflow run` passes `overrides`) is split
    shell-style, and one holding a single override whose value has spaces
    (`method.context_templates=["{}", "A. {}"]`) is kept as it is."""
    out = []
    for arg in argv:
        out += _overrides(arg)
    bad = [a for a in out if "=" not in a]
    if bad:
        raise ConfigError(f"expected key=value arguments, got {bad}; e.g. `method=ft edits.n=4`")
    return out


def _overrides(arg: str) -> list[str]:
    if not any(c.isspace() for c in arg):
        return [arg] if arg else []
    try:
        words = shlex.split(arg)
    except ValueError:  # an unbalanced quote: one override whose value holds it
        return [arg]
    return words if len(words) > 1 and all(re.match(r"[\w.]+=", w) for w in words) else [arg]


def load(argv: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve `configs/run.yaml`, group selections and dotted overrides into a validated `RunConfig`."""
    return to_object(compose(argv))


def compose(argv: list[str] | tuple[str, ...] = (), model: dict | None = None,
            overrides: dict | None = None) -> DictConfig:
    """The merged, type-checked config tree (before conversion to dataclasses). `model`: the model group's node
    itself (a model without a YAML file, `editharm.Editor`); `overrides`: a nested dict of values merged after
    the group files and before the dotted arguments (`{"method": {"layer": 3}}`)."""
    args = split_args(list(argv))
    picks = {k: v for k, v in (a.split("=", 1) for a in args) if k in GROUPS}
    dotted = [a for a in args if a.split("=", 1)[0] not in GROUPS]
    raw = OmegaConf.load(find("run.yaml"))
    raw = OmegaConf.to_container(raw)
    hf = str(picks.get("model", "")).startswith("hf:")
    for group in GROUPS:
        if group == "model" and (model is not None or hf):
            raw[group] = dict(model) if model is not None else hf_model(picks["model"][3:])
        else:
            raw[group] = _group_file(group, str(picks.get(group, raw[group])))
    shipped = {p.stem for p in (config_dir() / "model").glob("*.yaml")}
    if raw["model"]["name"] not in shipped:  # hf:, a model object, a user's model YAML: the method's layers by the
        # depth rule, under any per-model file of its own
        raw["method"].update(layer_defaults(raw["method"]["name"], raw["model"]["n_layers"]))
    per_model = find(f"method/{raw['method']['name']}/{raw['model']['name']}.yaml")
    if per_model.exists():  # merged deeply: a per-model `train:` block overrides single keys
        raw["method"] = OmegaConf.to_container(OmegaConf.merge(raw["method"], OmegaConf.load(per_model)))
    schema = OmegaConf.structured(RunConfig)
    schema.method = OmegaConf.structured(_method_config(raw["method"].get("name")))
    schema.guard = OmegaConf.structured(_guard_config(raw["guard"].get("name")))
    cfg = _merge(schema, OmegaConf.create(raw), OmegaConf.create(overrides or {}), _dotlist(dotted))
    validate(cfg)
    resolve_precision(cfg)
    return cfg


def recompose(stored: str, dotted: list[str] = ()) -> DictConfig:
    """A tree a run logged (`config/resolved.yaml`), type-checked against the schema again, with `dotted`
    overrides on top: how a resumed run gets the config it began with."""
    raw = OmegaConf.to_container(OmegaConf.create(stored))
    schema = OmegaConf.structured(RunConfig)
    schema.method = OmegaConf.structured(_method_config(raw["method"].get("name")))
    schema.guard = OmegaConf.structured(_guard_config(raw["guard"].get("name")))
    cfg = _merge(schema, OmegaConf.create(raw), _dotlist(list(dotted)))
    validate(cfg)
    resolve_precision(cfg)
    return cfg


def resolve_precision(cfg: DictConfig) -> None:
    """`tasks.dtype` and `method.v_autocast` set to `auto` become what the run's device multiplies fast: bfloat16
    where it is native, float32 (the weights themselves) elsewhere (`editharm.precision`); a run logs the result."""
    from editharm import precision

    keys = [("tasks", "dtype", "float32")] + ([("method", "v_autocast", None)] if "v_autocast" in cfg.method else [])
    if not any(cfg[group][key] in (precision.AUTO, "bfloat16") for group, key, _ in keys):
        return
    device = torch_device(cfg.device)
    for group, key, otherwise in keys:
        cfg[group][key] = precision.resolve(f"{group}.{key}", cfg[group][key], device, otherwise)


def to_object(cfg: DictConfig) -> RunConfig:
    return OmegaConf.to_object(cfg)


def to_yaml(cfg: RunConfig | DictConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg) if not isinstance(cfg, DictConfig) else cfg)


def flatten(cfg: RunConfig | DictConfig) -> dict[str, Any]:
    """Dotted keys -> values, for MLflow params."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg) if not isinstance(cfg, DictConfig) else cfg)
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", tree)
    return out


def accelerator(device: str) -> tuple[str, int | list[int]]:
    """Lightning's `(accelerator, devices)` for the `device` key: `cuda:N` is GPU N, `cuda` the first GPU."""
    if match := re.fullmatch(r"cuda:(\d+)", device):
        return "gpu", [int(match.group(1))]
    return {"cuda": "gpu"}.get(device, device), 1


def torch_device(device: str) -> str:
    """The torch device the `device` key names (`auto`: the first GPU when there is one)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return {"gpu": "cuda"}.get(device, device)


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "gpu", "mps")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: Any, device: str) -> None:
    """`model.device_map`: one of accelerate's strategies or a map of module names to devices; with `device=auto`
    (the map places the model, Lightning does not move it)."""
    if device != "auto":
        raise ConfigError(f"model.device_map places the model itself; device={device} conflicts (leave device=auto)")
    if isinstance(device_map, str):
        choice("model.device_map", device_map, DEVICE_MAPS + ("<module: device map>",))
        return
    if not isinstance(device_map, (dict, DictConfig)) or not device_map:
        raise ConfigError(f"model.device_map must be one of {', '.join(DEVICE_MAPS)} or a map of module names to "
                          f"devices, got {device_map!r}")
    for module, where in device_map.items():
        if where is None and ":" in str(module):
            raise ConfigError(f"model.device_map: {module!r} has no device; write each entry as `module: device`, "
                              "with a space after the colon (YAML), e.g. \"model.device_map={model.layers.0: 0}\"")
        if not (isinstance(where, int) or where in ("cpu", "disk", "mps") or re.fullmatch(r"cuda:\d+", str(where))):
            raise ConfigError(f"model.device_map.{module}={where!r}: a device is a GPU index, cuda:N, cpu, mps or disk")


def validate(cfg: DictConfig) -> None:
    """Checks across keys that types alone cannot express."""
    e = cfg.edits
    if cfg.device not in DEVICES and not re.fullmatch(r"cuda:\d+", cfg.device):
        raise ConfigError(f"device={cfg.device!r} is not valid; choose one of: {', '.join(DEVICES)} (cuda:N: GPU N)")
    choice("edits.mode", e.mode, MODES)
    choice("model.source", cfg.model.source, MODEL_SOURCES)
    if not isinstance(cfg.model.chat_template, (bool, str)):
        raise ConfigError(f"model.chat_template must be true, false or a Jinja template string, "
                          f"got {cfg.model.chat_template!r}")
    if cfg.model.chat_template is not False and cfg.method.name == "mend":
        raise ConfigError("method=mend with model.chat_template: MEND's hypernetworks are trained on plain prompts "
                          "(and checked against their training prompts as plain text); leave the template off")
    if cfg.model.device_map is not None:
        check_device_map(cfg.model.device_map, cfg.device)
    if cfg.devices < 1 or (cfg.devices > 1 and (cfg.model.device_map is not None or ":" in cfg.device)):
        raise ConfigError(f"devices={cfg.devices}: give a count >= 1; several take the first GPUs (device=auto or "
                          "cuda) or CPU processes (device=cpu), so not with device=cuda:N or model.device_map")
    choice("model.dtype", cfg.model.dtype, DTYPES)
    choice("tasks.dtype", cfg.tasks.dtype, DTYPES + ("auto",))
    if cfg.method.get("v_autocast") not in (None, "auto", *DTYPES):
        raise ConfigError(f"method.v_autocast={cfg.method.v_autocast!r} is not valid; choose one of: null (float32), "
                          f"auto, {', '.join(DTYPES)}")
    for key in ("n", "batch_size", "eval_every", "eval_batch_size", "gen_tokens", "fluency_tokens"):
        if e[key] < 1:
            raise ConfigError(f"edits.{key} must be >= 1, got {e[key]}")
    bad = [t for t in e.fluency_templates if t.count("{}") != 1 or not _fills(t)]
    if bad or not e.fluency_templates:
        raise ConfigError(f"edits.fluency_templates: each template holds the subject as one '{{}}' and no other "
                          f"braces, got {bad or '[]'}")
    if e.mode == "batch":
        if e.batch_size not in (1, e.n):
            raise ConfigError(f"edits.mode=batch applies one batch of edits.n={e.n} requests; "
                              f"edits.batch_size={e.batch_size} conflicts (leave it at 1 or set it to {e.n})")
        e.batch_size = e.eval_every = e.n
    if e.mode == "instance-sequential" and e.batch_size != 1:
        raise ConfigError("edits.mode=instance-sequential edits one request at a time; for batches of "
                          f"{e.batch_size} use edits.mode=batch-sequential")
    if e.mode == "single" and e.eval_every != e.batch_size:
        raise ConfigError(f"edits.mode=single evaluates every edit before reverting it: edits.eval_every "
                          f"must equal edits.batch_size ({e.batch_size}), got {e.eval_every}")
    if e.eval_every % e.batch_size:
        raise ConfigError(f"edits.eval_every={e.eval_every} must be a multiple of edits.batch_size={e.batch_size}")
    if e.n % e.batch_size:
        raise ConfigError(f"edits.n={e.n} must be a multiple of edits.batch_size={e.batch_size}")
    if cfg.tasks.limit is not None and cfg.tasks.limit < 1:
        raise ConfigError(f"tasks.limit must be >= 1 or null, got {cfg.tasks.limit}")
    for key in ("batch_size", "batch_tokens"):
        if cfg.tasks[key] < 1:
            raise ConfigError(f"tasks.{key} must be >= 1, got {cfg.tasks[key]}")
    n_layers, m = cfg.model.n_layers, cfg.method
    chosen = ([m.layer] if "layer" in m else []) + (list(m.layers) if m.get("layers") is not None else [])
    if outside := [layer for layer in chosen if not 0 <= layer < n_layers]:
        raise ConfigError(f"method {m.name}: layer(s) {outside} out of range for model '{cfg.model.name}', "
                          f"which has {n_layers} layers (valid: 0 to {n_layers - 1})")
    if "v_num_grad_steps" in m and m.v_num_grad_steps < 1:
        raise ConfigError(f"method.v_num_grad_steps counts loss evaluations and must be >= 1, got {m.v_num_grad_steps}")
    for spec in (m, cfg.guard):  # a method's or guard's own checks, beside its code (`check(node, run)`)
        check = getattr(_config_class(spec), "check", None)
        if check is not None:
            check(spec, cfg)
    if "z_batch_size" in m and m.z_batch_size < 1:
        raise ConfigError(f"method.z_batch_size is the number of requests optimised per forward pass and must be "
                          f">= 1, got {m.z_batch_size}")
    if m.get("context_templates") is not None:
        _check_templates(list(m.context_templates))
    for prefix, spec in (("method.", m), ("guard.", cfg.guard)):
        if "mom2_n_samples" in spec and spec.mom2_n_samples < 1:
            raise ConfigError(f"{prefix}mom2_n_samples counts the texts the key statistics average over and must be "
                              f">= 1, got {spec.mom2_n_samples}")
        if spec.get("mom2_max_len") is not None and spec.mom2_max_len < 1:
            raise ConfigError(f"{prefix}mom2_max_len must be >= 1 or null (the model's context), got {spec.mom2_max_len}")
    g = cfg.guard
    if "k" in g and not 0 < g.k <= 1:
        raise ConfigError(f"guard.k is the share of ΔW kept and must be in (0, 1], got {g.k} (guard={g.name})")
    if g.get("rank") is not None and g.rank < 1:
        raise ConfigError(f"guard.rank must be >= 1 or null (from guard.k), got {g.rank}")
    if cfg.model.source == "hub" and not cfg.model.path:
        raise ConfigError(f"model '{cfg.model.name}' has source=hub but no model.path (hub id or local dir)")


def _fills(template: str) -> bool:
    """Whether `template.format(subject)` works and holds the subject."""
    try:
        return "\x00" in template.format("\x00")
    except (IndexError, KeyError, ValueError):
        return False


def _check_templates(templates: list[str]) -> None:
    """Fixed context templates: the bare "{}" first (the value step's v0 and MEMIT's key average read it),
    then prefixes each holding one "{}" and no other brace."""
    bad = [t for t in templates if "{}" not in t or set("{}") & set(t.replace("{}", "", 1))]
    if not templates or templates[0] != "{}" or bad:
        raise ConfigError('method.context_templates must start with "{}" and hold one "{}" (no other brace) per '
                          f'template, e.g. ["{{}}", "The weather is nice. {{}}"]; got {templates!r}'
                          + (f" (bad: {bad!r})" if bad else ""))


def choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    """A `ConfigError` naming the valid values unless `value` is one of them."""
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _group_file(group: str, name: str) -> dict:
    path = Path(name) if name.endswith((".yaml", ".yml")) else find(f"{group}/{name}.yaml")
    if not path.is_file():
        hint = " (or a path to a model YAML; set model.path to use a local checkpoint)" if group == "model" else ""
        raise ConfigError(f"unknown {group} {name!r}; valid: {', '.join(group_names(group))}{hint}")
    try:
        node = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # YAML syntax errors come from several libraries
        raise ConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(node, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    if group != "edits":
        node.setdefault("name", path.stem)
    return node


def _method_config(name: str | None) -> type:
    from editharm import registry

    valid = registry.method_names()
    if name not in valid:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(valid)}")
    return registry.method(name).config_class


def _guard_config(name: str | None) -> type:
    from editharm import registry

    return registry.guard(name).config_class


def _config_class(spec: DictConfig) -> type:
    """The dataclass a method's or guard's node was typed with."""
    return OmegaConf.get_type(spec)


def _dotlist(args: list[str]) -> DictConfig:
    try:
        return OmegaConf.from_dotlist(args)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"cannot parse overrides {args}: {err}") from None


def _merge(*nodes: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(*nodes)
    except ConfigKeyError as err:
        key = err.full_key or str(err.key)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(nodes[0], parent) if parent else nodes[0]
        valid = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else "(none)"
        where = f"'{parent}'" if parent else "the top level"
        raise ConfigError(f"unknown config key '{key}'; valid keys of {where}: {valid}") from None
    except ValidationError as err:
        msg = str(err.msg).splitlines()[0]
        raise ConfigError(f"invalid value for '{err.full_key}': {msg}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config: {str(err).splitlines()[0]}") from None
