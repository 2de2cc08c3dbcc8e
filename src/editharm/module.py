"""`EditModule`: the Lightning spine. A method computes deltas; the module applies, counts and logs them.

    trainer.validate(module, dm)   # step 0: the unedited baseline
    trainer.fit(module, dm)        # each training_step applies one batch of edits; the validation loop
                                   # runs every `edits.eval_every` edits

Metrics are logged at step = number of edits applied (Lightning's global_step stays 0 under manual
optimization), so MLflow plots every curve against the number of edits, the paper's x-axis.
"""
from __future__ import annotations

import copy
import logging
import time
from typing import NamedTuple

import lightning as L
import torch
from torch import nn

from editharm import deltas as D
from editharm import guards, limits, models, registry, replay, resume, stats, tracking
from editharm.config import RunConfig
from editharm.data import EditRequest, data_dir
from editharm.errors import EditharmError
from editharm.evaluators import EditEvaluator, Evaluator, headline
from editharm.nethook import get_module, get_parameter, is_transposed
from editharm.placement import input_device, is_spread, weight_device

log = logging.getLogger(__name__)


@torch.no_grad()
def restore_(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` (parameter name -> value) back into `model`, bit for bit."""
    for name, value in weights.items():
        get_parameter(model, name).copy_(value)


class EditStep(NamedTuple):
    """What one edit step did: the requests `first`.. of the batch, the deltas applied (none when refused),
    its metrics (`time/edit_s`, `delta/...`, the method's and guard's figures), its tags, and why it was
    refused (or None)."""

    first: int
    deltas: D.Deltas
    metrics: dict[str, float]
    tags: dict[str, str]
    refused: str | None


class EditModule(L.LightningModule):
    """Base of every edit method: subclasses implement `compute_deltas` and nothing else of the loop."""

    name: str
    config_class: type

    def __init__(self, cfg: RunConfig, model: nn.Module, tokenizer, evaluators: list[Evaluator], n_requests: int):
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.hp = cfg.method
        self.model = model
        self.tokenizer = tokenizer
        self.evaluators = nn.ModuleList(evaluators)
        self.n_requests = n_requests
        self.n_edits = 0
        self.n_skipped = 0
        self.cumulative: D.Deltas = {}
        self.history: list[tuple[int, dict[str, float]]] = []
        self.constants: dict[str, float] = {}
        """The evaluators' constants (`<prefix>/<name>`), logged once as run params at the first evaluation."""
        self._pending: dict[str, torch.Tensor] = {}
        """Single mode: the weights the applied edit changed, as they were, put back after its evaluation."""
        self._last_batch = range(0)
        self._eval_t0 = 0.0
        self._copies: dict[torch.dtype, nn.Module] = {}  # not submodules: never saved, never moved
        self._stats: dict[str, torch.Tensor] = {}
        self._measured: dict[str, list[float]] = {}
        self._guard = registry.guard(cfg.guard.name) if cfg.guard is not None else None
        self._projectors: dict[str, torch.Tensor] = {}
        self._unlogged: list[tuple[int, dict[str, float]]] = []
        """Training-step metrics since the last evaluation: logged with its state (`editharm.resume`), so a run
        resumed from that state never logs a step twice."""
        self._resumed: dict | None = None
        self.fresh_weights = False
        """Whether the weights are the configured model's as loaded (set by `runs`): only then is the first
        evaluation recorded and replayed (`editharm.replay`); never for a model handed in from Python."""
        self._replay_keys: dict[int, str] = {}
        """At the first evaluation: each replayable evaluator's key (`editharm.replay`)."""
        self._replay_cache = models.cache_root(cfg.cache_dir) / "evaluations"
        self._tags: dict[str, str] = {}
        self.originals: dict[str, torch.Tensor] | None = None
        """When a dict (the Python API sets one): each parameter's value before its first applied delta."""

    def check_requests(self, requests: list[EditRequest]) -> None:
        """Refuse requests this method must not edit (MEND: its own training records), before any compute."""

    def compute_deltas(self, requests: list[EditRequest]) -> D.Deltas:
        """The weight changes that make `requests` hold. Must leave the model as it found it."""
        raise NotImplementedError

    def measured(self, prefix: str, values: dict[str, float]) -> None:
        """Figures a method measured while computing this step's deltas (e.g. its value optimisation), logged
        with the step's metrics as `<prefix>/<name>`: the mean over the step's calls (a batch's requests)."""
        for name, value in values.items():
            self._measured.setdefault(f"{prefix}/{name}", []).append(float(value))

    def statistics_modules(self) -> list[str]:
        """Modules whose input second moments the method uses (`editharm stats` precomputes them)."""
        return []

    def edits_kept(self) -> None:
        """Called after this step's deltas were applied to stay (not single mode, not refused): a method that
        remembers what it edited (AlphaEdit's protected keys) records it here."""

    def edited_modules(self) -> list[str]:
        """Modules whose weights the method changes (guards that need their statistics read them up front)."""
        return []

    def method_state(self) -> dict:
        """What the method carries across edits that its config does not fix (ROME's sampled context templates,
        AlphaEdit's protected keys): plain tensors, lists and numbers, saved in the resumable state."""
        return {}

    def load_method_state(self, state: dict) -> None:
        """Put back what `method_state` returned; called after `on_fit_start`, which computes it afresh."""

    def guard_statistics_modules(self) -> list[str]:
        """Modules whose statistics the configured guard needs (`editharm stats` precomputes these too)."""
        return self.edited_modules() if self.cfg.guard is not None and self.cfg.guard.name == "nullspace" else []

    def on_train_start(self) -> None:
        """The null-space projectors of the edited modules, from their key statistics, before the first edit."""
        g = self.cfg.guard
        if g is not None and g.name == "nullspace" and not self.edited_modules():
            raise EditharmError(f"guard=nullspace needs the key statistics of the modules method {self.hp.name} "
                                "edits, and the method does not name them (EditModule.edited_modules)")
        for module in self.guard_statistics_modules():
            C = self.second_moments([module], g)[module]
            self._projectors[f"{module}.weight"] = guards.nullspace_projector(C, g.threshold, g.rule)
        if self._resumed is not None:  # after everything computed from the unedited model
            self.apply_resumed()

    def resume_state(self, metrics: list[tuple[int, dict[str, float]]]) -> dict:
        """Everything a run resumed from here needs beside its config (see `editharm.resume`)."""
        return {"n_edits": self.n_edits, "n_skipped": self.n_skipped, "history": self.history,
                "constants": self.constants, "cumulative": {n: d.detach().cpu() for n, d in self.cumulative.items()},
                "weights": {n: get_parameter(self.model, n).detach().cpu().clone() for n in self.cumulative},
                "method": self.method_state(), "evaluators": [ev.resume_state() for ev in self.evaluators],
                "rng": resume.rng_state(), "metrics": metrics}

    def load_resume_state(self, state: dict) -> None:
        """Continue from `state`: counters and evaluators now; ΔW, the method's state and the RNG at the start of
        training (`apply_resumed`), once what the method computes from the unedited model is computed."""
        self.n_edits, self.n_skipped = state["n_edits"], state["n_skipped"]
        self.history, self.constants = list(state["history"]), dict(state["constants"])
        for ev, st in zip(self.evaluators, state["evaluators"], strict=True):
            ev.load_resume_state(st)
        self._resumed = state

    def apply_resumed(self) -> None:
        state, self._resumed = self._resumed, None
        self.cumulative = {n: d.to(weight_device(self.model, n)) for n, d in state["cumulative"].items()}
        with torch.no_grad():  # the edited weights as they were, bit for bit (W + ΣΔ would round differently)
            for n, w in state["weights"].items():
                get_parameter(self.model, n).copy_(w)
        self.load_method_state(state["method"])
        resume.set_rng_state(state["rng"])

    def second_moments(self, modules: list[str], spec) -> dict[str, torch.Tensor]:
        """E[k kᵀ] of each module's input over the texts `spec` (a config with the `stats.KeyStatistics` keys)
        names: from the disk cache, or computed with early exit and cached; logged to the run as `stats/`
        artifacts, with what they average over as params (`stats.<module>.{n_texts,n_tokens,tokens_per_dim}`).
        Call before the first edit."""
        missing = [m for m in modules if m not in self._stats]
        if missing:
            sample = stats.StatsSpec.of(spec)
            corpus = stats.load_corpus(data_dir(self.cfg.data_dir), sample.dataset)
            got, paths, counts = stats.cached_second_moments(
                self.model, self.tokenizer, missing, corpus, sample, models.identity(self.cfg.model),
                models.cache_root(self.cfg.cache_dir) / "stats", context=limits.context_length(self.model))
            self._stats.update({m: c.to(weight_device(self.model, m)) for m, c in got.items()})
            tracking.log_statistics(self.logger, paths, counts, {m: c.shape[0] for m, c in got.items()})
        return {m: self._stats[m] for m in modules}

    def module_name(self, kind: str, layer: int) -> str:
        """`templates.<kind>` of the model config, formatted with `layer`."""
        return getattr(self.cfg.model.templates, kind).format(layer)

    @property
    def single(self) -> bool:
        return self.cfg.edits.mode == "single"

    def requests_due(self) -> range:
        """Indices of the requests the edit metrics should score now."""
        if self.n_edits == 0:
            return range(self.n_requests)
        return self._last_batch if self.single else range(self.n_edits)

    def configure_optimizers(self):
        return None

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """Edit requests stay on the host (methods tokenize them); tensors move to the device."""
        if isinstance(batch, list) and batch and not isinstance(batch[0], torch.Tensor):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: list[EditRequest], batch_idx: int) -> None:
        step = self.edit_step(batch, keep=not self.single)
        figures = {k.split("/")[-1]: v for k, v in step.metrics.items() if k in ("value/loss", "value/loss_evals")}
        change = max((v for k, v in step.metrics.items() if k.endswith("/rel_fro")), default=None)
        log.info("  done in %.1f s%s%s", step.metrics["time/edit_s"] * len(batch),
                 f", |dW|/|W| {change:.3g}" if change is not None else "",
                 "".join(f", {k} {v:.3g}" for k, v in figures.items()))
        if step.refused:
            log.warning(f"edits {step.first}-{self.n_edits - 1}: {step.refused}; not applied")
        tracking.set_tags(self.logger, step.tags)
        self._log(step.metrics)

    def edit_step(self, batch: list[EditRequest], keep: bool = True) -> EditStep:
        """One edit step, with or without a Trainer: compute the batch's deltas, shape them by the guard, refuse
        non-finite or collapsing ones, apply the rest; `keep` adds them to `cumulative` (single mode does not:
        they are reverted after the evaluation)."""
        self.model.eval()  # Lightning switches to train mode for fit; edits are computed without dropout
        t0 = time.perf_counter()
        self._measured, self._tags = {}, {}
        deltas = {n: d.to(weight_device(self.model, n)) for n, d in self.compute_deltas(batch).items()}
        seconds = time.perf_counter() - t0
        start, self.n_edits = self.n_edits, self.n_edits + len(batch)
        self._last_batch = range(start, self.n_edits)
        metrics = {"time/edit_s": seconds / len(batch)}
        metrics.update({name: sum(v) / len(v) for name, v in self._measured.items()})
        if self._guard is not None and self.cfg.guard.name != "none" and D.is_finite(deltas):
            deltas, shaped = self._guarded(deltas, start)
            metrics.update(shaped)
        finite = D.is_finite(deltas)
        summary = D.stats(self.model, deltas) if finite else {}
        problem = self._collapse(summary) if finite else "non-finite deltas"
        if problem:
            self.n_skipped += len(batch)
            metrics["edit/skipped"] = self.n_skipped
            self._tags[f"skipped_edit.{start}"] = f"requests {start}-{self.n_edits - 1}: {problem}"
            return EditStep(start, {}, metrics, self._tags, problem)
        for param, s in summary.items():
            metrics.update({f"delta/{param}/{k}": v for k, v in s.items() if k in ("fro", "rel_fro")})
        if not keep:  # reverted after the evaluation, bit for bit
            self._pending = {name: get_parameter(self.model, name).detach().clone() for name in deltas}
        if self.originals is not None:  # W as it was before its first delta: a bitwise revert (`editharm.Editor`)
            for name in deltas:
                self.originals.setdefault(name, get_parameter(self.model, name).detach().clone())
        D.apply_(self.model, deltas)
        if keep:
            self.cumulative = D.accumulate(self.cumulative, deltas)
            self.edits_kept()
        return EditStep(start, deltas, metrics, self._tags, None)

    def phase(self, text: str) -> None:
        """What the method is computing now, for the console (`editharm.console`; a logging INFO line)."""
        log.info("  %s", text)

    def tag(self, name: str, value: str) -> None:
        """A note on this edit step (KN: a request that selected no neuron), logged as a run tag."""
        self._tags[name] = str(value)

    @torch.no_grad()
    def _guarded(self, deltas: D.Deltas, edit_index: int) -> tuple[D.Deltas, dict[str, float]]:
        """The configured guard's ΔW̄ and, per parameter, the share of ΔW's nonzero elements it kept nonzero and
        ‖ΔW̄‖/‖ΔW‖ (plus the guard's own figures), as `guard/<param>/<name>` metrics."""
        t0 = time.perf_counter()
        ctx = guards.GuardContext(
            weights={n: get_parameter(self.model, n).detach() for n in deltas}, seed=self.cfg.seed,
            edit_index=edit_index, projectors=self._projectors,
            input_axis={n: 0 if is_transposed(get_module(self.model, n.rsplit(".", 1)[0])) else 1 for n in deltas})
        shaped, extra = self._guard(deltas, self.cfg.guard, ctx)
        metrics = {f"guard/{k}": v for k, v in extra.items()}
        for n, d in deltas.items():
            nonzero = d != 0  # of ΔW's nonzero elements, the share still nonzero (a projection may fill zeros)
            metrics[f"guard/{n}/kept"] = float((nonzero & (shaped[n] != 0)).sum() / nonzero.sum().clamp_min(1))
            metrics[f"guard/{n}/norm_ratio"] = float(shaped[n].float().norm() / d.float().norm().clamp_min(D.EPS))
        metrics["time/guard_s"] = time.perf_counter() - t0
        return shaped, metrics

    def _collapse(self, summary: dict[str, dict[str, float]]) -> str | None:
        """Why these deltas look like a collapse (‖ΔW‖/‖W‖ above `edits.max_rel_fro`), or None."""
        limit = self.cfg.edits.max_rel_fro
        if limit is None or not summary:
            return None
        worst = max(summary.items(), key=lambda kv: kv[1]["rel_fro"])
        if worst[1]["rel_fro"] > limit:
            return f"|dW|/|W| = {worst[1]['rel_fro']:.3g} on {worst[0]} exceeds edits.max_rel_fro={limit}"
        return None

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluators[dataloader_idx].update(self, batch)

    def scoring_model(self, dtype: torch.dtype) -> nn.Module:
        """The model in `dtype`: itself, or a copy holding the current weights (refreshed every evaluation); a model
        spread by `model.device_map` is scored in its own dtype."""
        if dtype == self.model.dtype or is_spread(self.model):  # a spread model is never copied
            return self.model
        if dtype not in self._copies:
            self._copies[dtype] = copy.deepcopy(self.model).to(dtype).eval()
        return self._copies[dtype]

    @torch.no_grad()
    def on_validation_epoch_start(self) -> None:
        self._eval_t0 = time.perf_counter()
        for twin in self._copies.values():
            for mine, theirs in zip(twin.parameters(), self.model.parameters()):
                mine.copy_(theirs)
        one_process = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        if not self.history and self.fresh_weights and self.cfg.tasks.reuse and one_process:  # scored before?
            self._replay_keys = {}
            part = replay.model_key(self.model, self.cfg)
            for i, ev in enumerate(self.evaluators):
                if (own := ev.replay_key()) is not None:
                    self._replay_keys[i] = replay.key(part, own)
                    record = replay.load(self._replay_cache, self._replay_keys[i])
                    if record is not None:
                        ev.replay(record)
            reused = [ev.name for ev in self.evaluators if ev.replayed]
            if reused:
                self.tag("replayed_at_0", ",".join(reused))
                log.info(f"evaluation after 0 edits: {', '.join(reused)} reused from an earlier evaluation of the "
                         "same weights, data, settings and code (tasks.reuse=false scores them again)")

    def on_validation_epoch_end(self) -> None:
        step, first = self.n_edits, not self.history
        metrics, rows = self.measure()
        if first and self.constants and self.logger is not None:  # constant series would clutter the metrics
            self.logger.log_hyperparams(self.constants)  # params, once
        if self.cfg.tracking.log_predictions:
            for name, logged in rows.items():
                tracking.log_jsonl(self.logger, f"predictions/{name}/edits_{step}.jsonl", logged)
        tracking.log_evaluation(self.logger, step, metrics)
        plotted = headline(metrics, {ev.prefix: ev.series() for ev in self.evaluators})  # the rest: in the table
        due, self._unlogged = [*self._unlogged, (step, plotted)], []
        if self.logger is not None and self.cfg.tracking.log_state and self.n_requests:  # edit runs only
            resume.save(self.logger, self.resume_state(due))
        tracking.log_steps(self.logger, due)

    def measure(self) -> tuple[dict[str, float], dict[str, list[dict]]]:
        """The end of an evaluation: every evaluator's metrics (`<prefix>/<name>`) and its prediction rows that
        are due (by evaluator name; single mode's edit rows once, at the last edit, as they average over every
        edit so far), appended to `history`; a single-mode edit is reverted after it."""
        step = self.n_edits
        running = self.single and step > 0  # single mode: edit metrics average over every edit so far
        if not self.history:
            self.constants = {f"{ev.prefix}/{k}": v for ev in self.evaluators for k, v in ev.constants().items()}
        metrics, due = {}, {}
        for i, ev in enumerate(self.evaluators):
            values, rows = ev.compute()
            if i in self._replay_keys and not ev.replayed:  # the first evaluation: recorded for the next run
                replay.save(self._replay_cache, self._replay_keys[i], ev.recording())
            metrics.update({f"{ev.prefix}/{k}": v for k, v in values.items()})
            keep = running and isinstance(ev, EditEvaluator)
            if rows and (not keep or step == self.n_requests):
                due[ev.name] = rows
            if not keep:
                ev.reset()
        metrics["time/eval_s"] = time.perf_counter() - self._eval_t0
        self._replay_keys = {}
        self.history.append((step, metrics))
        self.undo_pending()
        return metrics, due

    def evaluate(self) -> tuple[dict[str, float], dict[str, list[dict]]]:
        """One evaluation without a Trainer (the Python API): every evaluator over its dataloader, batches on the
        model's device, then `measure`. The validation loop of a run does the same through Lightning's hooks."""
        device = input_device(self.model)
        self.model.eval()
        self.evaluators.to(device)  # their metric states, as Lightning's strategy moves them in a run
        self.on_validation_epoch_start()
        with torch.no_grad():
            for i, ev in enumerate(self.evaluators):
                for batch in ev.dataloader():
                    self.validation_step(self.transfer_batch_to_device(batch, device, i), 0, i)
        return self.measure()

    def undo_pending(self) -> None:
        """Put back the weights of an edit applied with `keep=False` (single mode), bit for bit."""
        restore_(self.model, self._pending)
        self._pending = {}

    def _log(self, metrics: dict[str, float]) -> None:
        self._unlogged.append((self.n_edits, metrics))
