"""`MENDTraining`: MEND's hypernetwork trained as a LightningModule; `train` runs it in one MLflow run.

    run_id = train(cfg, model, tok)          # `editharm train-mend`, or nested in an edit run (`auto`)

Per training example (a batch of `method.train.batch_size` edit records):
  1. the factors of ∇W of the target NLL on the edit input (base weights, detached: no second-order terms);
  2. ΔW = g(factors) per inner weight; the edited model is the base called with W + ΔW (`functional_call`);
  3. L = c_edit · NLL(target | paraphrase or edit prompt, edited) + c_loc · KL(p_base ‖ p_edited) on the
     locality answer positions.
The Trainer does the rest: Adam on the editors (lr) and α (lr_lr), accumulation, clipping, validation every
`val_every` edits on held-out records, checkpointing the best `val/edit_success`, early stopping, a time budget.
The best network is logged as the run's `mend/` artifact (`runs:/<id>/mend`).
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from editharm import data, models, tracking
from editharm.config import EditsConfig
from editharm.errors import DataError
from editharm.methods._shared import frozen
from editharm.methods.mend import factors_of, inner_modules, mend_deltas, new_spec, patched
from editharm.methods.mend_net import MENDNet
from editharm.methods.mend_store import ARTIFACT, TRAIN_PROMPTS, params_tag
from editharm.nethook import get_parameter
from editharm.scoring import IGNORE, encode_pairs, logits_logprobs

EVAL_SETS = (("zsre", "edit"), ("counterfact", "edit"))
MONITOR = "val/edit_success"


def records(dataset: str, split: str, root) -> tuple[list[data.EditRequest], int]:
    """A split's records (those with an empty target skipped, as MEND does) and how many were skipped; every
    record must carry a paraphrase and a locality prompt/answer."""
    path, fields, _ = data.edit_file(EditsConfig(dataset=dataset, split=split), root)
    skipped: list[int] = []
    rows = data.parse_jsonl(path, fields, skipped)
    bad = [i for i, r in enumerate(rows) if not (r.rephrase and r.locality_prompt and r.locality_answer)]
    if bad:
        raise DataError(f"MEND training needs a paraphrase and a locality prompt/answer on every record; "
                        f"{len(bad)} record(s) of {path} lack them (first: {rows[bad[0]].prompt!r})")
    return rows, len(skipped)


def training_data(cfg, root) -> tuple[list[data.EditRequest], list[data.EditRequest], dict[str, int]]:
    """`(train, val, counts)`: the configured train splits and validation records, without any record whose
    prompt is in an evaluation edit set (zsRE's and CounterFact's `edit` splits, where present)."""
    t = cfg.method.train
    held_out: set[str] = set()
    for dataset, split in EVAL_SETS:
        try:
            held_out |= {r.prompt for r in records_of(dataset, split, root)}
        except DataError:
            continue  # an evaluation set not in this data directory cannot overlap
    counts = {"skipped_empty_target": 0, "dropped_eval_overlap": 0}
    train: list[data.EditRequest] = []
    for dataset in t.datasets:
        rows, skipped = records(dataset, "train", root)
        counts["skipped_empty_target"] += skipped
        kept = [r for r in rows if r.prompt not in held_out]
        counts["dropped_eval_overlap"] += len(rows) - len(kept)
        train += kept
    if t.n_train is not None:
        if t.n_train > len(train):
            raise DataError(f"method.train.n_train={t.n_train} but the training splits hold {len(train)} records")
        train = random.Random(t.seed).sample(train, t.n_train)
    val_rows, _ = records(t.val_dataset, t.val_split, root)
    val = [r for r in val_rows if r.prompt not in held_out][:t.n_val]
    counts.update(n_train=len(train), n_val=len(val))
    return train, val, counts


def records_of(dataset: str, split: str, root) -> list[data.EditRequest]:
    path, fields, _ = data.edit_file(EditsConfig(dataset=dataset, split=split), root)
    return data.parse_jsonl(path, fields, [])


class MENDTraining(L.LightningModule):
    """Trains `net` to edit the frozen `model`'s inner weights. The base model is not a submodule: it is
    never optimised, moved by Lightning or written into checkpoints."""

    def __init__(self, cfg, model: nn.Module, tokenizer, net: MENDNet):
        super().__init__()
        self.hp = cfg.method.train
        self.net = net
        self.tokenizer = tokenizer
        self.inner = inner_modules(cfg)
        self._base = [model.eval()]

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def on_fit_start(self) -> None:
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
        factors, logits = factors_of(base, self.inner, ids, mask, edit_only)
        where = labels[n:, 1:] != IGNORE
        pre = logits[n:, :-1][where].float().log_softmax(-1)
        deltas = mend_deltas(self.net, base, self.inner, factors)
        edited = patched(base, {p: get_parameter(base, p).detach() + d for p, d in deltas.items()})
        ids, mask, labels = encode_pairs(tok, on + [r.locality_prompt for r in batch], targets + loc, device)
        logits = edited(input_ids=ids, attention_mask=mask).logits
        logp, argmax, counts = logits_logprobs(logits[:n], labels[:n])
        gold = labels[:n, 1:][labels[:n, 1:] != IGNORE]
        edit_nll = torch.stack([-x.mean() for x in logp.split(counts.tolist())]).mean()
        success = torch.stack([h.all() for h in (argmax == gold).split(counts.tolist())]).float().mean()
        post = logits[n:, :-1][labels[n:, 1:] != IGNORE].float().log_softmax(-1)
        kl = (pre.exp() * (pre - post)).sum(-1).mean()
        loss = self.hp.c_edit * edit_nll + self.hp.c_loc * kl
        return {"loss": loss, "edit_nll": edit_nll, "loc_kl": kl, "edit_success": success,
                "loc_acc": (pre.argmax(-1) == post.argmax(-1)).float().mean()}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self.base.eval()
        out = self.losses(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, batch_size=len(batch))
        return out["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        out = self.losses(batch)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, batch_size=len(batch), on_epoch=True)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return batch  # edit records stay on the host (tokenised per step)


def _loader(rows, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=list,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


def train(cfg, model: nn.Module, tok, parent=None, rows=None) -> str:
    """Train a hypernetwork for `cfg.model` and `cfg.method`'s inner parameters in one MLflow run (nested under
    `parent` when given); returns the run id, whose `mend/` artifact holds the best network. `rows`: the result
    of `training_data`, when already read."""
    t = cfg.method.train
    train_rows, val_rows, counts = rows or training_data(cfg, data.data_dir(cfg.data_dir))
    L.seed_everything(t.seed, workers=True, verbose=False)
    if counts["dropped_eval_overlap"]:
        print(f"editharm: MEND training leaves out {counts['dropped_eval_overlap']} record(s) whose prompt is in an "
              "evaluation edit set")
    identity = models.identity(cfg.model)
    net = MENDNet(new_spec(cfg, model, identity))
    module = MENDTraining(cfg, model, tok, net)
    name = f"train-mend-{cfg.model.name}"
    with tracking.start(cfg, name, parent=parent) as logger:
        tracking.log_config(logger, cfg)
        tracking.set_tags(logger, {"kind": "train-mend", "model": cfg.model.name, "model_identity": identity,
                                   "mend.params": params_tag(cfg), "git_commit": tracking.git_commit(),
                                   **{f"data.{k}": v for k, v in counts.items()}})
        with tempfile.TemporaryDirectory() as tmp:
            best = ModelCheckpoint(dirpath=tmp, monitor=MONITOR, mode="max", save_top_k=1, save_last=False)
            loaders = _loader(train_rows, t.batch_size, True, t.seed), _loader(val_rows, t.batch_size, False, t.seed)
            epochs = math.ceil(t.max_steps * t.accumulate / len(loaders[0]))  # max_steps decides; the bar shows it
            trainer = L.Trainer(
                accelerator=cfg.device, devices=1, logger=logger, max_steps=t.max_steps, max_epochs=epochs,
                max_time=timedelta(minutes=t.max_minutes) if t.max_minutes else None,
                accumulate_grad_batches=t.accumulate, gradient_clip_val=t.clip, val_check_interval=t.val_every,
                check_val_every_n_epoch=None, num_sanity_val_steps=0, inference_mode=False,
                callbacks=[best, EarlyStopping(monitor=MONITOR, mode="max", patience=t.patience)],
                log_every_n_steps=1, enable_model_summary=False)
            with frozen(model):  # the base model is never trained: no gradients of its own weights
                trainer.validate(module, loaders[1], verbose=False)  # step 0: the untrained editor
                t0 = time.perf_counter()
                trainer.fit(module, *loaders)
                seconds = time.perf_counter() - t0
            if best.best_model_path:
                state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
                module.load_state_dict(state)
            logger.log_metrics({"time/train_s": seconds, "time/step_s": seconds / max(trainer.global_step, 1),
                                "train/steps": trainer.global_step}, step=trainer.global_step)
            net.spec.meta = {"run_id": logger.run_id, "steps": trainer.global_step, **counts}
            folder = net.save(Path(tmp) / ARTIFACT)
            (folder / TRAIN_PROMPTS).write_text("\n".join(sorted({r.prompt for r in train_rows})), encoding="utf-8")
            logger.experiment.log_artifacts(logger.run_id, str(folder), ARTIFACT)
        return logger.run_id
