"""`MENDTraining`: MEND's hypernetwork trained as a LightningModule; `fit` runs it with a Trainer.

    net, figures = fit(cfg, model, tok, train_rows, val_rows, logger)   # `editharm.mend_runs.train` logs it

Per training example (a batch of `method.train.batch_size` edit records):
  1. the factors of ∇W of the target NLL on the edit input (base weights, detached: no second-order terms);
  2. ΔW = g(factors) per inner weight; the edited model is the base called with W + ΔW (`functional_call`);
  3. L = c_edit · L_edit + c_loc · KL(p_base ‖ p_edited), L_edit the target NLL after the paraphrase or the edit
     prompt with the edited weights, averaged over the batch's target tokens (`method.reduction=token`, MEND's
     `multiclass_log_probs`; `example`: per example), the KL averaged over the locality answers' tokens (MEND's
     `kl_loc_loss`).
The Trainer does the rest: Adam on the editors (lr) and α (lr_lr), accumulation, clipping, validation every
`val_every` edits on validation records (`mend_data.training_data`: by default held out of the zsRE train file), checkpointing the best `val/<monitor>` (`val/loss`, as EasyEdit's GPT-2
run, or `val/edit_success`, as its LLaMA run), early stopping on it, a time budget.
`editharm.mend_runs.train` runs `fit` in a train-mend MLflow run and logs the best network as its `mend/`
artifact (`runs:/<id>/mend`).
"""
from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from editharm import models
from editharm.config import accelerator
from editharm.errors import ConfigError
from editharm.methods._shared import frozen
from editharm.methods.mend import MONITORS, L_edit, factors_of, inner_modules, mend_deltas, new_spec, patched
from editharm.methods.mend_net import MENDNet
from editharm.nethook import get_parameter
from editharm.placement import is_spread
from editharm.scoring import IGNORE, encode_pairs, logits_logprobs

log = logging.getLogger(__name__)

LOGGED = ("loss", "edit_nll", "loc_kl", "edit_success", "loc_acc")


class MENDTraining(L.LightningModule):
    """Trains `net` to edit the frozen `model`'s inner weights. The base model is not a submodule: it is
    never optimised, moved by Lightning or written into checkpoints."""

    def __init__(self, cfg, model: nn.Module, tokenizer, net: MENDNet):
        super().__init__()
        self.hp = cfg.method.train
        self.reduction = cfg.method.reduction
        self.net = net
        self.tokenizer = tokenizer
        self.inner = inner_modules(cfg)
        self._base = [model.eval()]
        self.window = nn.ModuleDict({k: MeanMetric() for k in LOGGED})  # training figures, averaged per window
        self.seen = 0  # training examples so far, across epochs (batch_idx restarts every epoch)

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def setup(self, stage: str) -> None:
        self.base.requires_grad_(False)  # never trained (`train` restores the caller's flags afterwards)
        self.base.to(self.device)

    def configure_optimizers(self):
        editors = [p for n, p in self.net.named_parameters() if n != "alpha"]
        return torch.optim.Adam([{"params": editors, "lr": self.hp.lr}, {"params": [self.net.alpha], "lr": self.hp.lr_lr}])

    def losses(self, batch: list[data.EditRequest]) -> dict[str, torch.Tensor]:
        """The edit and locality terms of one training example, and its edit success / locality accuracy.

        Two forward passes of 2·B rows: the base model on [edit inputs; locality inputs] (the factors, and the
        locality logits before the edit), the edited model on [paraphrases or edit inputs; locality inputs]."""
        tok, base, device, n = self.tokenizer, self.base, self.device, len(batch)
        targets, loc = [r.target_new for r in batch], [r.locality_answer for r in batch]
        on = [r.rephrase if self.hp.edit_loss_on == "rephrase" else r.prompt for r in batch]
        ids, mask, labels = encode_pairs(tok, [r.prompt for r in batch] + [r.locality_prompt for r in batch],
                                         targets + loc, device)
        edit_only = labels.clone()
        edit_only[n:] = IGNORE
        factors, logits = factors_of(base, self.inner, ids, mask, edit_only, self.reduction)
        where = labels[n:, 1:] != IGNORE
        pre = logits[n:, :-1][where].float().log_softmax(-1)
        deltas = mend_deltas(self.net, base, self.inner, factors)
        edited = patched(base, {p: _plus(get_parameter(base, p), d) for p, d in deltas.items()})
        ids, mask, labels = encode_pairs(tok, on + [r.locality_prompt for r in batch], targets + loc, device)
        logits = edited(input_ids=ids, attention_mask=mask).logits
        logp, argmax, counts = logits_logprobs(logits[:n], labels[:n])
        gold = labels[:n, 1:][labels[:n, 1:] != IGNORE]
        edit_nll = L_edit(logp, counts, self.reduction)
        success = torch.stack([h.all() for h in (argmax == gold).split(counts.tolist())]).float().mean()
        post = logits[n:, :-1][labels[n:, 1:] != IGNORE].float().log_softmax(-1)
        kl = (pre.exp() * (pre - post)).sum(-1).mean()
        loss = self.hp.c_edit * edit_nll + self.hp.c_loc * kl
        return {"loss": loss, "edit_nll": edit_nll, "loc_kl": kl, "edit_success": success,
                "loc_acc": (pre.argmax(-1) == post.argmax(-1)).float().mean()}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self.base.eval()
        out = self.losses(batch)
        for k, metric in self.window.items():
            metric.update(out[k].detach())
        self.seen += 1
        if self.seen % self.hp.log_every == 0:  # the mean of the last `log_every` edits, not one noisy edit
            # straight to the logger: Lightning re-logs a step metric's last value at each epoch end, which
            # duplicates a window when epochs are shorter than `log_every`
            if self.logger is not None:
                self.logger.log_metrics({f"train/{k}": m.compute().item() for k, m in self.window.items()},
                                        step=self.global_step)
            for m in self.window.values():
                m.reset()
        return out["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        out = self.losses(batch)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, batch_size=len(batch), on_epoch=True)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return batch  # edit records stay on the host (tokenised per step)


def _plus(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """W + ΔW in W's dtype (a bfloat16 model stays bfloat16), differentiable in ΔW."""
    return (weight.detach().float() + delta).to(weight.dtype)


def _loader(rows, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=list,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


@contextmanager
def _restored_rng():
    """The global RNGs as they were: training nested in an edit run must not change what the edit run draws."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])


def _trainer(cfg, logger, best: ModelCheckpoint, n_batches: int) -> L.Trainer:
    t = cfg.method.train
    steps = math.ceil(t.max_iters / t.accumulate)  # optimizer steps; max_iters counts edits, as EasyEdit's
    kind, devices = accelerator(cfg.device)
    return L.Trainer(
        accelerator=kind, devices=devices, logger=logger, max_steps=steps,
        max_epochs=math.ceil(t.max_iters / n_batches),  # max_steps decides; the progress bar shows the epochs
        max_time=timedelta(minutes=t.max_minutes) if t.max_minutes else None,
        accumulate_grad_batches=t.accumulate, gradient_clip_val=t.clip, val_check_interval=t.val_every,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, inference_mode=False,
        callbacks=[best, EarlyStopping(monitor=f"val/{t.monitor}", mode=MONITORS[t.monitor], patience=t.patience)],
        log_every_n_steps=1, enable_model_summary=False)


def fit(cfg, model: nn.Module, tok, train_rows, val_rows, logger=None) -> tuple[MENDNet, dict[str, float]]:
    """Train a hypernetwork for `cfg.model` and `cfg.method`'s inner parameters, logging through `logger` (any
    Lightning logger, or None); returns the best validation's network (the last one when no validation ran) and
    the figures of the training (`time/train_s`, `time/step_s`, `train/steps`, `train/saved_step`). The model's
    weights, flags and the global RNGs are as they were."""
    if is_spread(model):
        raise ConfigError("training a MEND hypernetwork on a model spread by model.device_map is not supported (its "
                          "trainer moves the model to one device): train it where the model fits (editharm "
                          "train-mend), then edit the spread model with method.hypernetwork=runs:/<run_id>/mend")
    t = cfg.method.train
    with _restored_rng(), frozen(model), tempfile.TemporaryDirectory() as tmp:
        L.seed_everything(t.seed, workers=True, verbose=False)
        net = MENDNet(new_spec(cfg, model, models.identity(cfg.model)))
        module = MENDTraining(cfg, model, tok, net)
        best = ModelCheckpoint(dirpath=tmp, monitor=f"val/{t.monitor}", mode=MONITORS[t.monitor], save_top_k=1)
        loaders = _loader(train_rows, t.batch_size, True, t.seed), _loader(val_rows, t.batch_size, False, t.seed)
        trainer = _trainer(cfg, logger or False, best, len(loaders[0]))  # None would mean TensorBoard
        trainer.validate(module, loaders[1], verbose=False)  # step 0: the untrained editor
        t0 = time.perf_counter()
        trainer.fit(module, *loaders)
        seconds = time.perf_counter() - t0
        saved = trainer.global_step
        if best.best_model_path:
            checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
            module.load_state_dict(checkpoint["state_dict"])
            saved = checkpoint["global_step"]
        else:
            log.info("no validation ran during training (val_every beyond the budget); the final network "
                     "is kept")
    return net.cpu(), {"time/train_s": seconds, "time/step_s": seconds / max(trainer.global_step, 1),
                       "train/steps": trainer.global_step, "train/saved_step": saved}
