"""`Editor`: edit a model object in memory from Python, with the very method modules a run drives.

    model, tok = editharm.load_model("tiny-llama")
    editor = editharm.Editor(model, tok, method="rome", guard="rect")
    steps = editor.edit([{"prompt": "The capital of Kenya is", "subject": "Kenya", "target_new": "Paris"}])
    editor.metrics()          # efficacy, generalization, locality of every request edited so far
    editor.revert()           # the weights as they were, bit for bit

A run (`editharm edit`, `mlflow run .`, a grid cell) builds the same module (`building.build`) and lets a Lightning
Trainer call its `training_step`, which is `EditModule.edit_step`; the Editor calls `edit_step` itself. Hyper-
parameters are composed as the CLI composes them: the method's YAML, its per-model file, then the keywords.
Nothing here opens an MLflow run unless `track=` asks for one; untracked, MEND's `hypernetwork="auto"` looks
only at the networks shipped with the package (give `runs:/<id>/mend` or a folder otherwise).
"""
from __future__ import annotations

import copy
import random
import sys
from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from editharm import config as C
from editharm import chat, data, evaluation, limits, models, resume
from editharm.deltas import Deltas, apply_
from editharm.errors import ConfigError, DataError
from editharm.building import build
from editharm.module import EditStep, restore_
from editharm.nethook import get_parameter


class Editor:
    """Edits `model` (any causal LM whose architecture has templates, see `models.spec_from_model`) in place.

    `method`: a registered method (`rome`, `memit`, `kn`, `mend`, `ft`; AlphaEdit is `memit` with
    `nullspace=True`); `guard`: a guard name (`rect`, `magnitude`, `random`, `pca`, `nullspace`) or a dict with its
    `name` and parameters (`{"name": "rect", "k": 0.3}`); `**hparams`: the method's config keys
    (`configs/method/<method>.yaml`). `model_config`: a shipped model name or model YAML whose templates and
    per-model defaults apply, when the model did not come from `editharm.load_model`. `max_rel_fro`: refuse an
    edit step whose ‖ΔW‖/‖W‖ exceeds it. Statistics corpora are read from `data_dir` or $EDITHARM_DATA_DIR.
    `track`: log an MLflow edit run (a string names it): each step's metrics at step = edits so far, `metrics()`
    results, and Σ ΔW as `deltas/` when it ends (`close()`, or the end of a `with` block); without it nothing is
    logged and MLflow is not imported.

    Used as a context manager, the weights are restored on exit (after the run, if any, is closed)."""

    def __init__(self, model: nn.Module, tokenizer, method: str = "rome", guard: str | dict | None = None, *,
                 model_config: str | C.ModelConfig | None = None, seed: int = 0, data_dir: str | None = None,
                 cache_dir: str | None = None, max_rel_fro: float | None = None, track: bool | str = False,
                 **hparams):
        if guard is not None and not isinstance(guard, (str, dict)):
            raise ConfigError(f"guard must be a guard name or a dict with its name and parameters, got {guard!r}; "
                              f"e.g. guard='rect' or guard={{'name': 'rect', 'k': 0.3}}")
        guard = {"name": guard} if isinstance(guard, str) else dict(guard or {"name": "none"})
        spec = models.resolve_spec(model, model_config)
        self.cfg = C.to_object(C.compose(
            [f"method={method}", f"guard={guard.pop('name', 'none')}"],
            model=C.OmegaConf.to_container(C.OmegaConf.structured(spec)),
            overrides={"method": hparams, "guard": guard, "seed": seed, "data_dir": data_dir, "cache_dir": cache_dir,
                       "edits": {"max_rel_fro": max_rel_fro}, "tasks": {"names": []},
                       "probe": {"perplexity": False}}))
        self.model, self.tokenizer = model, tokenizer
        self._run = ExitStack()
        self.logger = None
        self._rng: dict | None = None  # the editor's own global-RNG state between calls (seeded once, as a run)
        if track:
            from editharm import api_runs

            self.logger = self._run.enter_context(api_runs.opened(
                self.cfg, api_runs.run_name(track, f"{method}-{self.cfg.model.name}"), "edit", method=method,
                guard=self.cfg.guard.name))
        try:
            self.module = build(self.cfg, model, tokenizer, [], 0, self.logger)
            self._wrap = chat.wrapper(self.cfg.model, tokenizer)
            self.module.originals = {}
            with self._own_rng():  # what the method computes from the unedited model, as a run's fit starts
                self.module.on_fit_start()
                self.module.on_train_start()
        except BaseException:
            self._run.__exit__(*sys.exc_info())  # a tracked run ends FAILED with what it logged
            raise
        self._initial_state = copy.deepcopy(self.module.method_state())
        self.requests: list[data.EditRequest] = []
        """Every request edited and kept so far (what `metrics()` scores by default)."""
        self.steps: list[EditStep] = []
        """Every edit step so far: its deltas, metrics (`time/edit_s`, `delta/...`), tags, and why it was refused."""

    @property
    def hparams(self):
        """The method's typed config, as composed (YAML defaults, per-model file, keywords)."""
        return self.cfg.method

    @property
    def deltas(self) -> Deltas:
        """Σ ΔW of the edits kept so far (float32), by parameter name: what a run logs as its `deltas/`."""
        return self.module.cumulative

    def edit(self, requests, mode: str = "instance-sequential", batch_size: int = 1) -> list[EditStep]:
        """Edit `requests` (EditRequests or dicts: prompt, subject, target_new; optional ground_truth, rephrase,
        locality_prompt, locality_answer) and return the steps, each with the deltas it applied.

        `mode`, as a run's `edits.mode`: `instance-sequential` (one request per step, each kept), `batch-sequential`
        (steps of `batch_size`), `batch` (all in one step), `single` (each request edited from the current weights
        and undone before the next: the model ends as it began; apply a step's deltas with `applied`)."""
        C.choice("mode", mode, C.MODES)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        reqs = chat.wrap_requests(data.requests_of(requests), self._wrap)
        size = len(reqs) if mode == "batch" else 1 if mode in ("single", "instance-sequential") else batch_size
        limits.check_requests(reqs, self.tokenizer, limits.context_length(self.model),
                              limits.request_margin(self.cfg.method))
        self.module.check_requests(reqs)
        keep = mode != "single"
        out = []
        for i in range(0, len(reqs), size):
            batch = reqs[i:i + size]
            with self._own_rng():
                step = self.module.edit_step(batch, keep=keep)
            if not keep:
                self.module.undo_pending()
            elif step.refused is None:
                self.requests.extend(batch)
            if self.logger is not None:
                from editharm import api_runs

                api_runs.log_step(self.logger, step, self.module.n_edits)
            out.append(step)
            self.steps.append(step)
        return out

    @contextmanager
    def applied(self, deltas: Deltas | Sequence[Deltas]) -> Iterator[nn.Module]:
        """Apply `deltas` (one step's, or several) for the duration of the block; the weights they touch are
        restored bit for bit on exit."""
        many = [deltas] if isinstance(deltas, dict) else list(deltas)
        names = {n for d in many for n in d}
        saved = {n: get_parameter(self.model, n).detach().clone() for n in names}
        try:
            for d in many:
                apply_(self.model, d)
            yield self.model
        finally:
            restore_(self.model, saved)

    @contextmanager
    def unedited(self) -> Iterator[nn.Module]:
        """The weights as they were before the first edit, for the duration of the block."""
        edited = {n: get_parameter(self.model, n).detach().clone() for n in self.module.originals}
        restore_(self.model, self.module.originals)
        try:
            yield self.model
        finally:
            restore_(self.model, edited)

    def revert(self) -> None:
        """Restore every weight the edits changed, bit for bit, and forget the edits (AlphaEdit's protected keys
        included): the editor is as it was when built."""
        restore_(self.model, self.module.originals)
        m = self.module
        m.originals, m.cumulative, m.n_edits, m.n_skipped = {}, {}, 0, 0
        m.load_method_state(copy.deepcopy(self._initial_state))
        self.requests, self.steps, self._rng = [], [], None

    def metrics(self, requests=None, batch_size: int = 16) -> evaluation.Results:
        """Edit metrics of `requests` (default: every request edited and kept) on the current weights, with
        `locality_unchanged` measured against the unedited weights' predictions (`evaluation.edit_metrics`)."""
        if requests is None and not self.requests:
            raise DataError("Editor.metrics: no edit has been kept yet (single mode keeps none); pass requests=[...]")
        reqs = chat.wrap_requests(data.requests_of(requests), self._wrap) if requests is not None else self.requests
        with self.unedited():
            before = evaluation.edit_metrics(self.model, self.tokenizer, reqs, batch_size=batch_size, chat=False)
        results = evaluation.edit_metrics(self.model, self.tokenizer, reqs, baseline=before, batch_size=batch_size,
                                          chat=False)
        if self.logger is not None:
            from editharm import api_runs

            api_runs.log_results(self.logger, results, step=self.module.n_edits)
            results.run_id = self.logger.run_id
        return results

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """The global RNGs as the editor left them (seeded with `seed` at first, as a run seeds them once), and the
        caller's put back after: edits do not depend on, nor change, what the caller draws."""
        outer = resume.rng_state()
        try:
            if self._rng is None:
                seed = self.cfg.seed
                random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
            else:
                resume.set_rng_state(self._rng)
            yield
            self._rng = resume.rng_state()
        finally:
            resume.set_rng_state(outer)

    def close(self) -> None:
        """End the tracked run (`track=`): Σ ΔW of the kept edits logged as `deltas/`, the run FINISHED."""
        if self.logger is not None:
            from editharm import api_runs

            api_runs.log_deltas(self.logger, self.model, self.module.cumulative)
            self.logger = None
            self._run.close()

    def __enter__(self) -> Editor:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.close()
            elif self.logger is not None:  # the run ends FAILED (or KILLED) with what it logged
                self.logger = None
                self._run.__exit__(*exc)
        finally:
            self.revert()
