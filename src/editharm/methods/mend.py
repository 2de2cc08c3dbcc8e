"""MEND: edits from a trained hypernetwork applied to the fine-tuning gradient's factors.

    factors = gradient_factors(model, tok, inner, prompts, targets)   # {param: (x, δ)}, model untouched
    deltas = mend_deltas(net, model, inner, factors)                  # {param: ΔW in the stored layout}

The hypernetwork is trained by `MENDTraining` (`methods/mend_train.py`, `editharm train-mend`) and named by
`method.hypernetwork`: `runs:/<id>/mend`, a local folder, or `auto` (the newest finished train-mend run for this
model and these inner parameters, trained first as a nested run when there is none). A batch is edited as
MEND does: the hypernetwork applied to the gradient of the batch's mean NLL over its target tokens (every target
token of every request weighs the same, as MEND's `multiclass_log_probs`; `method.reduction=example` instead
weighs each request the same). Padded label positions never enter the loss.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call

from editharm import models
from editharm.config import choice
from editharm.deltas import Deltas
from editharm.errors import ConfigError
from editharm.methods import mend_store
from editharm.methods._shared import frozen
from editharm.methods.mend_net import RELUS, V_INITS, MENDNet, MENDSpec
from editharm.module import EditModule
from editharm.nethook import get_module, get_parameter, is_transposed, linear_weight
from editharm.registry import register_method
from editharm.scoring import encode_pairs, logits_logprobs, mean_example_nll
from editharm.placement import input_device

log = logging.getLogger(__name__)

EDIT_LOSS_ON = ("rephrase", "prompt")
MONITORS = {"loss": "min", "edit_success": "max"}  # train.monitor -> ModelCheckpoint/EarlyStopping mode
REDUCTIONS = ("token", "example")


@dataclass
class MENDTrainConfig:
    """Hypernetwork training (`editharm train-mend`): data, losses and the Trainer's budget."""

    datasets: list[str] = field(default_factory=lambda: ["zsre"])
    """Edit datasets whose `train` split is trained on (records need a paraphrase and a locality pair). zsRE's MEND
    train file, as the paper (`train_MEND.py`); `[zsre, counterfact]` adds CounterFact's train split."""
    n_train: Optional[int] = None
    """Training records drawn (seeded) from all of them; null: all."""
    val_dataset: str = "zsre"
    val_split: str = "train"
    """Where validation records (which pick the logged network and stop training) come from. `train` (ours): `n_val`
    records drawn (seeded) from `val_dataset`'s train split and left out of training. `edit`: the evaluation edit
    set; `val_dataset=zsre val_split=edit` is the paper's choice (`train_MEND.py` validates on `zsre_mend_eval.json`,
    of which our zsRE edit set is the paper's 1,037-record subset): a network selected on the records it is then
    evaluated on, tagged so (`mend.data`) and never picked by `auto` for another data choice. `val`: a split of
    its own (CounterFact)."""
    n_val: int = 100
    """Validation records."""
    max_iters: int = 100000
    """Training examples (edits) at most, as EasyEdit's `max_iters`; optimizer steps = max_iters / accumulate."""
    max_minutes: Optional[float] = None
    """Wall-clock budget of training (Lightning's `max_time`); null: none (`auto` training needs one)."""
    lr: float = 1e-6
    """Adam learning rate of the editors."""
    lr_lr: float = 1e-4
    """Adam learning rate of α (one optimizer, two parameter groups: the paper's fork steps α twice)."""
    accumulate: int = 10
    clip: float = 100.0
    val_every: int = 1000
    """Validate every this many edits (training batches)."""
    monitor: str = "loss"
    """What picks the logged network and stops early: `loss` (val/loss, lowest; EasyEdit's GPT-2 runs) or
    `edit_success` (val/edit_success, highest; its LLaMA runs)."""
    patience: int = 20
    """Early stopping: validations without a better monitored value."""
    c_edit: float = 0.1
    """Weight of L_edit, the target NLL after the edit (averaged as `method.reduction`)."""
    c_loc: float = 1.0
    edit_loss_on: str = "rephrase"
    """`rephrase` (MEND: the target's NLL on the paraphrase) or `prompt` (the paper's fork: on the edit input)."""
    batch_size: int = 1
    """Edits summed into one hypernetwork update per training example (MEND: 1)."""
    log_every: int = 50
    """Training figures are logged as the mean over this many training examples."""
    seed: int = 0


@dataclass
class MENDConfig:
    name: str = "mend"
    hypernetwork: Optional[str] = "auto"
    """`runs:/<run_id>/mend`, a local folder holding mend.json + mend.safetensors, or `auto`."""
    auto_train: bool = True
    """With `auto` and no finished train-mend run for this model and these parameters: train one first (a nested
    run, `method.train` budget). False: refuse instead."""
    layers: list[int] = field(default_factory=lambda: [29, 30, 31])
    modules: list[str] = field(default_factory=lambda: ["mlp_gate", "mlp_in", "mlp_out"])
    """Model templates whose weights are inner parameters, at every layer of `layers`."""
    rank: int = 1920
    n_hidden: int = 1
    edit_lr: float = 1e-4
    """Initial α of every inner parameter."""
    descent: bool = True
    """ΔW = −α·g(∇W) (the untrained editor is a normalised gradient step); false: +α·g(∇W) as MEND's code."""
    norm: bool = True
    v_init: str = "randn"
    """V of every editor block at init: `randn` (N(0, 1), MEND's `LRLinear`) or `xavier` (our former default: Adam then
    moves g away from the identity 1/std_V as fast, 34-70x slower at our ranks); part of a network's architecture."""
    relu: str = "all"
    """`all`: a ReLU on every editor block, as MEND's `LRLinear` (it ignores its `relu` argument); `hidden`: the last
    block linear (our former reading of `IDMLP`); part of a network's architecture."""
    reduction: str = "token"
    """How a batch's target NLL is averaged, for the edit gradient and for training's L_edit: `token`, the mean over
    all target tokens of the batch (MEND's `multiclass_log_probs`); `example`, the mean of each example's
    per-token mean. They differ only for batches whose targets have unequal lengths."""
    train: MENDTrainConfig = field(default_factory=MENDTrainConfig)

    @staticmethod
    def check(m, run) -> None:
        for key, valid in (("v_init", V_INITS), ("relu", RELUS), ("reduction", REDUCTIONS)):
            choice(f"method.{key}", m[key], valid)
        choice("method.train.edit_loss_on", m.train.edit_loss_on, EDIT_LOSS_ON)
        choice("method.train.monitor", m.train.monitor, tuple(MONITORS))
        if not m.layers or not m.modules:
            raise ConfigError("method.layers and method.modules name MEND's inner weights and must not be empty")
        t = run.model.templates
        kinds = [k for k in t.keys() if k not in ("layer", "ln_f", "embed", "lm_head") and t[k]]  # "": a fused weight
        if bad := [k for k in m.modules if k not in kinds]:
            raise ConfigError(f"method.modules {bad} are not weight templates of model '{run.model.name}'; valid: "
                              f"{', '.join(kinds)}")
        for key, low in (("rank", 1), ("n_hidden", 0), ("train.batch_size", 1), ("train.accumulate", 1), ("train.n_val", 1),
                         ("train.val_every", 1), ("train.log_every", 1), ("train.max_iters", 1), ("train.patience", 1)):
            value = OmegaConf.select(m, key)
            if value < low:
                raise ConfigError(f"method.{key} must be >= {low}, got {value}")
        if m.train.n_train is not None and m.train.n_train < 1:
            raise ConfigError(f"method.train.n_train must be >= 1 or null (all records), got {m.train.n_train}")


def inner_modules(cfg) -> dict[str, str]:
    """{parameter name: module name} of the inner weights, in config order (layers, then modules)."""
    out = {}
    for layer in cfg.method.layers:
        for kind in cfg.method.modules:
            module = getattr(cfg.model.templates, kind).format(layer)
            out[f"{module}.weight"] = module
    return out


def new_spec(cfg, model: nn.Module, identity: str) -> MENDSpec:
    inner, m = inner_modules(cfg), cfg.method
    dims = {p: list(linear_weight(model, mod).shape[::-1]) for p, mod in inner.items()}
    return MENDSpec(params=list(inner), dims=dims, rank=m.rank, n_hidden=m.n_hidden, edit_lr=m.edit_lr,
                    descent=m.descent, norm=m.norm, v_init=m.v_init, relu=m.relu, model_identity=identity)


def L_edit(logp: torch.Tensor, counts: torch.Tensor, reduction: str = "token") -> torch.Tensor:
    """The batch's target NLL from `logits_logprobs`' `(logp, counts)`. `token`: −Σ log p / (number of target
    tokens), MEND's `multiclass_log_probs` (`nll = −Σ log p·mask / Σ mask` over the whole batch); `example`: the
    mean over examples of each example's per-token mean NLL."""
    if reduction == "token":
        return -logp.mean()
    if reduction == "example":
        return mean_example_nll(logp, counts)
    raise ConfigError(f"method.reduction={reduction!r} is not valid; choose one of: {', '.join(REDUCTIONS)}")


def patched(model: nn.Module, weights: dict[str, torch.Tensor]) -> Callable:
    """`model` called with `weights` in place of its own parameters (`torch.func.functional_call`)."""
    return lambda **inputs: functional_call(model, weights, args=(), kwargs=inputs)


@contextmanager
def _capture(model: nn.Module, inner: dict[str, str]):
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(param):
        def fn(_m, args, out):
            seen[param] = (args[0], out)
        return fn

    handles = [get_module(model, mod).register_forward_hook(hook(p)) for p, mod in inner.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def gradient_factors(model: nn.Module, tok, inner: dict[str, str], prompts: list[str], targets: list[str],
                     reduction: str = "token") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per inner parameter, the rows (x_t, δ_t) of ∇W = Σ_t δ_t x_tᵀ for the target NLL `L_edit` of `prompts` →
    `targets` (averaged as `reduction`), over the tokens that carry gradient (not padding, not after the last
    target token).

    Leaves the model untouched: its own weights are replaced by detached copies for the one forward pass."""
    ids, mask, labels = encode_pairs(tok, prompts, targets, input_device(model))
    return factors_of(model, inner, ids, mask, labels, reduction)[0]


def factors_of(model: nn.Module, inner: dict[str, str], ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
               reduction: str = "token") -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """`gradient_factors` of encoded rows, and the pass's logits (detached). Rows without target labels add
    nothing to the loss, so their tokens carry no gradient: they ride along for their logits."""
    leaves = {p: get_parameter(model, p).detach().requires_grad_(True) for p in inner}
    with frozen(model), torch.enable_grad(), _capture(model, inner) as seen:
        logits = patched(model, leaves)(input_ids=ids, attention_mask=mask).logits
        logp, _, counts = logits_logprobs(logits, labels)
        loss = L_edit(logp, counts, reduction)
        grads = torch.autograd.grad(loss, [seen[p][1] for p in inner])
    rows = mask.bool().flatten()
    out = {}
    for p, g in zip(inner, grads):
        x = seen[p][0].detach().reshape(-1, seen[p][0].shape[-1])[rows.to(g.device)]
        d = g.reshape(-1, g.shape[-1])[rows.to(g.device)]
        carries = (d != 0).any(-1)
        out[p] = (x[carries], d[carries])
    return out, logits.detach()


def mend_deltas(net: MENDNet, model: nn.Module, inner: dict[str, str],
                factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Deltas:
    """ΔW of every inner parameter in its stored layout (GPT-2 Conv1D transposed), differentiable in `net`."""
    out = {}
    for p, (x, d) in factors.items():
        dw = net.update(p, x, d)
        out[p] = dw.T if is_transposed(get_module(model, inner[p])) else dw
    return out


ARCH = ("rank", "n_hidden", "descent", "norm", "v_init", "relu")  # edit_lr only initialises α: not architecture


def check_compatible(spec: MENDSpec, expected: MENDSpec, where: str) -> None:
    """Refuse a hypernetwork trained for another model, other inner parameters or another architecture (the
    configured `method.rank`, `n_hidden`, `descent`, `norm`, `v_init`, `relu`), saying which. A network saved
    before `v_init`/`relu` were recorded loads as built (`xavier`, `hidden`) and is refused unless configured so."""
    if spec.model_identity != expected.model_identity:
        raise ConfigError(f"the MEND hypernetwork {where} was trained for model {spec.model_identity!r}, not "
                          f"{expected.model_identity!r}; train one for this model (`editharm train-mend model=...`)")
    if spec.params != expected.params or spec.dims != expected.dims:
        raise ConfigError(f"the MEND hypernetwork {where} edits {spec.params}, but method.layers/method.modules "
                          f"name {expected.params}; set them to match or train a hypernetwork for these")
    differ = [f"method.{k}={getattr(spec, k)} (configured: {getattr(expected, k)})" for k in ARCH
              if getattr(spec, k) != getattr(expected, k)]
    if differ:
        raise ConfigError(f"the MEND hypernetwork {where} was built with {', '.join(differ)}; set these to match")


def load_network(cfg, model) -> tuple[MENDNet, frozenset[str]]:
    """The hypernetwork (eval mode) and the prompts it was trained on; refused when built for another model or
    other inner parameters."""
    where = mend_store.folder(cfg)
    net = MENDNet.load(where)
    check_compatible(net.spec, new_spec(cfg, model, models.identity(cfg.model)), f"at {cfg.method.hypernetwork}")
    if net.spec.meta.get("selected_on_eval"):
        log.warning(f"the MEND hypernetwork at {cfg.method.hypernetwork} was selected on an evaluation edit set "
                    f"({net.spec.meta.get('data')}, the paper's choice): its scores on that set are not held-out scores")
    prompts = where / mend_store.TRAIN_PROMPTS
    trained_on = frozenset(prompts.read_text(encoding="utf-8").splitlines()) if prompts.is_file() else frozenset()
    return net, trained_on


@register_method("mend", config=MENDConfig)
class MEND(EditModule):
    """MEND with the hypernetwork in the folder `method.hypernetwork` names (`editharm.mend_runs.resolve` makes
    `auto` and `runs:/` one, before any compute), used in eval mode: its normalisation statistics stay as trained
    (the paper's fork left them updating on test edits)."""

    def __init__(self, cfg, model, tokenizer, evaluators, n_requests):
        super().__init__(cfg, model, tokenizer, evaluators, n_requests)
        self.inner = inner_modules(cfg)
        net, self.trained_on = load_network(cfg, model)
        self._net = [net.eval()]  # in a list: not a submodule (never trained, never checkpointed)

    def edited_modules(self) -> list[str]:
        return list(self.inner.values())

    def check_requests(self, requests) -> None:
        seen = [r.prompt for r in requests if r.prompt in self.trained_on]
        if seen:
            raise ConfigError(f"{len(seen)} edit request(s) were training records of this MEND hypernetwork "
                              f"(e.g. {seen[0]!r}); edit held-out facts only")

    def compute_deltas(self, requests) -> Deltas:
        device = input_device(self.model)
        self._net[0].to(device)  # Lightning moves the model, not the network
        factors = gradient_factors(self.model, self.tokenizer, self.inner, [r.prompt for r in requests],
                                   [r.target_new for r in requests], self.cfg.method.reduction)
        factors = {p: (x.to(device), d.to(device)) for p, (x, d) in factors.items()}  # the network's device
        with torch.no_grad():
            return {p: d.detach() for p, d in mend_deltas(self._net[0], self.model, self.inner, factors).items()}
