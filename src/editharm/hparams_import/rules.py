"""What each key of an EasyEdit hparams file becomes here: one rule per key and algorithm, as data.

A rule takes the key's value and the `Context` and returns an `Outcome`:
- `mapped`: the same quantity in the same unit under a key of ours (`v_lr` -> `method.v_lr`);
- `converted`: keys of ours computed from it (`layers: [17]` -> `method.layer: 17`, `early_stop_patience` in
  iterations -> `method.train.patience` in validations, `inner_params` -> `method.layers` and `method.modules`);
- `no counterpart`: nothing of ours reads it. Its note says what ours does instead; `differs` marks a value that
  asks for a behaviour ours does not have (FT's `objective_optimization: prompt_last`, a `fact_token` other than
  `subject_last`), so that the table shows where an imported run cannot match EasyEdit's.

Units, checked against EasyEdit's code: `mom2_n_samples` counts texts in both (EasyEdit's `layer_stats` samples
that many dataset rows, one text each, truncated to the model's context; ours samples that many texts, truncated to
`mom2_max_len`, null = the model's context): no conversion. `v_num_grad_steps` counts loss evaluations in both.
`early_stop_patience` counts training iterations, ours validations: divided by `val_interval`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from editharm.errors import ConfigError
from editharm.hparams_import.model import WEIGHTS, Base, weight_of

MAPPED, CONVERTED, NONE = "mapped", "converted", "no counterpart"
ALGORITHMS = {"ROME": "rome", "MEMIT": "memit", "KN": "kn", "MEND": "mend", "FT": "ft"}
"""EasyEdit's `alg_name` -> our method."""
CORPORA = {"wikipedia": "hf:wikimedia/wikipedia:20231101.en", "wikitext": "hf:Salesforce/wikitext:wikitext-103-raw-v1",
           "wikitext2": "hf:Salesforce/wikitext:wikitext-2-raw-v1"}
"""EasyEdit's `mom2_dataset` names (`layer_stats.py`'s `dataset_map`) -> our `mom2_dataset` (the same hub data)."""
MONITORS = {"loss/total_edit_val": "loss", "edit/acc_val": "edit_success"}
"""EasyEdit's MEND `early_stop_key` -> our `method.train.monitor`."""


class Context(NamedTuple):
    hp: dict
    """The whole file (a rule may read another key: `early_stop_patience` reads `val_interval`)."""
    alg: str
    base: Base

    @property
    def templates(self) -> dict:
        return self.base.node["templates"]

    @property
    def n_layers(self) -> int:
        return self.base.node["n_layers"]


class Outcome(NamedTuple):
    status: str
    values: dict[str, Any]
    """Dotted keys of ours (`method.layer`, `model.templates.ln_f`) -> values."""
    note: str = ""
    differs: bool = False


Rule = Callable[[Any, Context], Outcome]
_ANY = object()


def key(ours: str, note: str = "") -> Rule:
    """Our key `ours` holds the same quantity in the same unit."""
    return lambda value, ctx: Outcome(MAPPED, {ours: value}, note)


def via(convert: Callable[[Any, Context], Any], note: str = "") -> Rule:
    """Keys of ours computed by `convert(value, ctx)`: a dict of them, or an `Outcome` of its own."""
    def rule(value, ctx):
        got = convert(value, ctx)
        return got if isinstance(got, Outcome) else Outcome(CONVERTED, got, note)
    return rule


def none(note: str, same: Any = _ANY) -> Rule:
    """No key of ours: `note` says what ours does. `same` (or `same(ctx)`): the value that asks for exactly that;
    another value differs."""
    def rule(value, ctx):
        expected = same(ctx) if callable(same) else same
        if expected is _ANY:
            return Outcome(NONE, {}, note)
        if _equal(value, expected):
            return Outcome(NONE, {}, f"{note} (as this file asks)")
        return Outcome(NONE, {}, f"{note}; this file asks for {value!r}", differs=True)
    return rule


def _equal(value: Any, expected: Any) -> bool:
    try:  # EasyEdit reads "5e-1" (a string to YAML 1.1) as a number
        return float(value) == float(expected) and type(value) is not bool or value is expected
    except (TypeError, ValueError):
        return value == expected


def template(ours: str) -> Rule:
    """A module template of EasyEdit's -> `model.templates.<ours>` (a `.weight` suffix dropped)."""
    def rule(value, ctx):
        module = str(value).removesuffix(".weight")
        base = ctx.templates.get(ours)
        note = "" if module == base else f"{ctx.base.source} says {base!r}: the model file takes this file's"
        return Outcome(MAPPED, {f"model.templates.{ours}": module}, note)
    return rule


def _lm_head(value, ctx: Context) -> Outcome:
    """GPT-2's files name `transformer.wte`: the input embedding, whose weight the tied LM head shares."""
    t = ctx.templates
    if value == t.get("embed") and value != t.get("lm_head"):
        return Outcome(CONVERTED, {"model.templates.embed": value},
                       f"the input embedding, whose weight the LM head shares (tied); ours names the head itself: "
                       f"templates.lm_head={t.get('lm_head')}")
    return template("lm_head")(value, ctx)


def _mlp_block(value, ctx: Context) -> Outcome:
    out = ctx.templates.get("mlp_out") or ""
    inside = out.startswith(f"{value}.")
    return Outcome(NONE, {}, "ours names the MLP's weights (templates.mlp_in, mlp_gate, mlp_out), not the block; "
                   "EasyEdit reads it in causal tracing only" + (f" ({out} is inside it)" if inside else ""))


def _one_layer(value, ctx: Context) -> dict:
    layers = value if isinstance(value, list) else [value]
    if len(layers) != 1:
        raise ConfigError(f"ROME layers {value}: ours rewrites one layer (method.layer); give one layer, or import the "
                          "file as MEMIT (alg_name: MEMIT), which spreads an edit over several")
    return {"method.layer": layers[0]}


def _v_loss_layer(value, ctx: Context) -> Outcome:
    if ctx.base.depth_from_v_loss_layer:
        return Outcome(CONVERTED, {"model.n_layers": value + 1},
                       "EasyEdit reads the target loss after its last layer: the depth is this + 1")
    return none("ours reads the target loss at the model's output, after the last layer",
                same=lambda c: c.n_layers - 1)(value, ctx)


def _corpus(value, ctx: Context) -> dict:
    if value not in CORPORA:
        raise ConfigError(f"mom2_dataset {value!r} is not one of EasyEdit's ({', '.join(CORPORA)}); set "
                          "method.mom2_dataset yourself (a built-in corpus, hf:<id>[:<config>] or a local file)")
    return {"method.mom2_dataset": CORPORA[value]}


def _dtype(value, ctx: Context) -> dict:
    return {"model.dtype": "float16" if value is True else "float32"}


def _ft_module(value, ctx: Context) -> Outcome:
    module = str(value).removesuffix(".weight")
    note = ("EasyEdit tunes every parameter whose name contains it (a bias too, where there is one); ours tunes the "
            "weight")
    for kind in WEIGHTS:
        if ctx.templates.get(kind) == module:
            return Outcome(CONVERTED, {"method.module": kind}, note)
    return Outcome(CONVERTED, {"method.module": "mlp_out", "model.templates.mlp_out": module},
                   f"none of {ctx.base.source}'s MLP weights: the model file's mlp_out takes it; {note}")


def _norm_constraint(value, ctx: Context) -> Outcome:
    if isinstance(value, float) or isinstance(value, str) and _is_number(value):
        return Outcome(MAPPED, {"method.norm_constraint": float(value)}, "ε of the box |W - W₀| ≤ ε in both")
    return Outcome(CONVERTED, {"method.norm_constraint": None},
                   "EasyEdit constrains only with a float (`type(...) is float`): none, as this file asks")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _inner_params(value, ctx: Context) -> dict:
    """MEND's inner weights -> `method.layers` × `method.modules` (ours edits the same weights at every layer)."""
    found = []
    for param in value or []:
        got = weight_of(str(param), ctx.templates)
        if got is None or not str(param).endswith(".weight"):
            valid = ", ".join(f"{k}: {ctx.templates.get(k)}.weight" for k in WEIGHTS if ctx.templates.get(k))
            raise ConfigError(f"MEND inner_params {param!r} is not an MLP weight of {ctx.base.name} ({valid}, at a "
                              "layer index); ours edits MLP weights only")
        found.append(got)
    layers = sorted({layer for _, layer in found})
    modules = list(dict.fromkeys(kind for kind, _ in found))
    if not found or sorted(set(found)) != sorted((k, l) for k in modules for l in layers):
        raise ConfigError(f"MEND inner_params {value}: ours edits the same weights at every layer (method.layers × "
                          "method.modules); list each weight at each layer")
    return {"method.layers": layers, "method.modules": modules}


def _patience(value, ctx: Context) -> dict:
    every = ctx.hp.get("val_interval") or 1000
    return {"method.train.patience": max(1, math.ceil(float(value) / float(every)))}


def _monitor(value, ctx: Context) -> Outcome:
    if value in MONITORS:
        return Outcome(CONVERTED, {"method.train.monitor": MONITORS[value]})
    return Outcome(NONE, {}, f"ours monitors {' or '.join(MONITORS)} (method.train.monitor=loss kept)", differs=True)


COMMON: dict[str, Rule] = {
    "device": none("the run's device: device=cuda:N on the command line"),
    "model_parallel": none("ours spreads a model over GPUs with model.device_map=auto", same=False),
    "max_length": none("EasyEdit truncates its inputs to this many tokens; ours does not truncate edit prompts"),
    "fp16": via(_dtype, "EasyEdit loads float16 with fp16: true, else float32"),
}
TEMPLATES: dict[str, Rule] = {
    "layer_module_tmp": template("layer"),
    "ln_f_module": template("ln_f"),
    "lm_head_module": _lm_head,
    "mlp_module_tmp": _mlp_block,
    "attn_module_tmp": none("ours edits no attention module; EasyEdit reads it in causal tracing only"),
}
VALUE_STEP: dict[str, Rule] = {
    "rewrite_module_tmp": template("mlp_out"),
    "fact_token": none("ours reads keys and values at the subject's last token", same="subject_last"),
    "v_num_grad_steps": key("method.v_num_grad_steps", "loss evaluations in both (at most this minus one Adam steps)"),
    "v_lr": key("method.v_lr"),
    "v_loss_layer": _v_loss_layer,
    "v_weight_decay": key("method.v_weight_decay"),
    "clamp_norm_factor": key("method.clamp_norm_factor"),
    "kl_factor": key("method.kl_factor"),
    "context_template_length_params": key("method.context_template_length_params", "[length, count] pairs in both"),
    "mom2_dataset": via(_corpus, "the same hub data set (a run reads it from the hub or its local cache)"),
    "mom2_n_samples": key("method.mom2_n_samples", "texts in both, each truncated to the model's context: no "
                                                   "conversion"),
    "mom2_dtype": none("ours accumulates the statistics in float32", same="float32"),
    "stats_dir": none("ours caches statistics under the run's cache_dir, keyed by model, module, corpus, sample and "
                      "dtype"),
}
RULES: dict[str, dict[str, Rule]] = {
    "rome": {**COMMON, **TEMPLATES, **VALUE_STEP,
             "layers": via(_one_layer, "ROME rewrites one layer"),
             "mom2_adjustment": key("method.mom2_adjustment")},
    "memit": {**COMMON, **TEMPLATES, **VALUE_STEP,
              "layers": key("method.layers"),
              "layer_selection": none("ours updates every layer of method.layers", same="all"),
              "mom2_adjustment": none("unused by EasyEdit's MEMIT: both always weigh the preserved keys' statistics"),
              "mom2_update_weight": key("method.mom2_update_weight", "λ in both"),
              "batch_size": none("requests per edit step: the run's edits.batch_size (edits.mode=batch or "
                                 "batch-sequential)")},
    "kn": {**COMMON,
           "lr_scale": none("unused by EasyEdit's KN"),
           "n_toks": none("unused by EasyEdit's KN"),
           "refine": key("method.refine"),
           "batch_size": none("integrated-gradient copies per forward pass, speed only; ours batches layers × steps "
                              "together (method.ig_batch_size)"),
           "steps": key("method.steps", "integrated-gradient steps m in both"),
           "adaptive_threshold": key("method.adaptive_threshold"),
           "p": key("method.p")},
    "ft": {**COMMON, **TEMPLATES,
           "rewrite_module_tmp": _ft_module,
           "layers": key("method.layers"),
           "num_steps": key("method.steps", "Adam steps per edit step (EasyEdit: per chunk of batch_size requests)"),
           "lr": key("method.lr"),
           "weight_decay": none("ours: Adam without weight decay", same=0),
           "kl_factor": none("unused by EasyEdit's FT"),
           "norm_constraint": _norm_constraint,
           "objective_optimization": none("ours minimises the NLL of every target token after the prompt, teacher "
                                          "forced", same="target_new"),
           "batch_size": none("requests per Adam step: ours tunes on all requests of an edit step together (the "
                              "run's edits.batch_size)")},
    "mend": {**COMMON,
             "archive": none("EasyEdit's trained MEND is not a network of ours: method.hypernetwork stays auto "
                             "(editharm train-mend trains one; or name runs:/<id>/mend)"),
             "model_class": none("ours loads model and tokenizer from model.path with transformers' Auto classes"),
             "tokenizer_class": none("ours loads model and tokenizer from model.path with transformers' Auto classes"),
             "tokenizer_name": none("ours loads the tokenizer from model.path"),
             "inner_params": via(_inner_params, "each MLP weight at each layer"),
             "lr": key("method.train.lr", "the editors' Adam learning rate"),
             "edit_lr": key("method.edit_lr", "initial α of every inner weight"),
             "lr_lr": key("method.train.lr_lr"),
             "lr_scale": none("unused by EasyEdit's MEND"),
             "seed": key("method.train.seed", "the training seed"),
             "debug": none("EasyEdit's debug switch"),
             "cedit": key("method.train.c_edit"),
             "cloc": key("method.train.c_loc"),
             "cbase": none("weight of the base model's own loss, read only with train_base"),
             "dropout": none("ours trains the editor with the model's dropout off", same=0),
             "train_base": none("ours never trains the base model", same=False),
             "no_grad_layers": none("ours keeps every layer of the base model as it is", same=None),
             "one_sided": none("ours edits both factors", same=False),
             "x_only": none("ours edits both factors", same=False),
             "delta_only": none("ours edits both factors", same=False),
             "n_hidden": key("method.n_hidden"),
             "hidden_dim": none("ours sizes the editor's blocks by method.rank", same=None),
             "init": none("ours initialises the editor as MEND's id (U = 0: the identity)", same="id"),
             "norm": key("method.norm"),
             "combine": none("ours runs one editor on the concatenated factors", same=True),
             "act": none("ours: ReLU", same="relu"),
             "rank": key("method.rank"),
             "mlp_class": none("ours: MEND's IDMLP editor", same="IDMLP"),
             "shared": none("ours shares one editor per weight shape", same=True),
             "results_dir": none("ours logs to MLflow"),
             "batch_size": key("method.train.batch_size", "edits per training example"),
             "model_save_pt": none("ours logs the best network to MLflow"),
             "silent": none("EasyEdit's console switch"),
             "verbose": none("EasyEdit's console switch"),
             "max_iters": key("method.train.max_iters", "training examples in both"),
             "max_epochs": none("ours bounds training by method.train.max_iters and max_minutes"),
             "max_output_length": none("ours scores whole targets"),
             "log_interval": key("method.train.log_every", "training figures averaged over this many examples"),
             "eval_log_interval": none("EasyEdit's console logging"),
             "final_eval": none("ours scores edits in the edit run"),
             "val_interval": key("method.train.val_every", "training examples between validations"),
             "early_stop_patience": via(_patience, "EasyEdit counts training iterations, ours validations: "
                                                   "/ val_interval, rounded up"),
             "early_stop_key": _monitor,
             "eval_only": none("EasyEdit's switch to skip training"),
             "half": none("ours trains in model.dtype", same=False),
             "save": none("ours logs the best network to MLflow"),
             "val_batch_size": none("ours validates one record at a time"),
             "accumulate_bs": key("method.train.accumulate"),
             "val_steps": none("validation batches in EasyEdit's debug mode"),
             "opt": none("ours: Adam", same="Adam"),
             "grad_clip": key("method.train.clip")},
}
IMPLIED: dict[str, dict[str, tuple[Any, str]]] = {
    "kn": {"method.variant": ("paper", "EasyEdit's KN code, as the paper ran it"),
           "method.neuron": ("pre", "EasyEdit's KN attributes the first MLP projection's outputs")},
    "mend": {"method.descent": (False, "EasyEdit's MEND adds the update (ΔW = +α·g)"),
             "method.train.edit_loss_on": ("prompt", "EasyEdit's trainer takes the edit loss on the edit input")},
}
"""Keys of ours that select EasyEdit's behaviour where its file has no key: set so that the import reproduces it."""
