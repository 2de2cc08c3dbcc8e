"""Command line: `editharm edit key=value ...` (also `python -m editharm`) and `editharm checkpoint RUN_ID`.

Bad input of any kind ends in one `editharm: error: ...` line and exit status 2, with no traceback;
a run already opened (or handed to us by `mlflow run`) is marked FAILED.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from editharm.errors import EditharmError


def edit(argv: list[str]) -> str:
    """Apply the configured edits in one MLflow run; returns its run id."""
    import lightning as L

    from editharm import config, data, models, registry, tracking
    from editharm.evaluators import EditEvaluator, PerplexityEvaluator

    _quiet_lightning()
    tree = config.compose(argv)
    cfg = config.to_object(tree)
    root = data.data_dir(cfg.data_dir)
    requests, success = data.load_requests(cfg.edits, root)
    probe = data.read_probe_text(root, cfg.probe.n_tokens * 8) if cfg.probe.perplexity else None
    e = cfg.edits
    every = min(e.eval_every, e.n)
    run_name = f"{cfg.method.name}-{cfg.model.name}-{e.mode}-n{e.n}"
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with tracking.start(cfg, run_name) as logger:
        tracking.log_config(logger, tree)
        tracking.set_tags(logger, {"method": cfg.method.name, "model": cfg.model.name, "mode": e.mode,
                                   "eval_every": every, "edits_dataset": e.dataset,
                                   "protocol": cfg.tasks.protocol, "model_identity": models.identity(cfg.model),
                                   "git_commit": tracking.git_commit()})
        model, tok = models.load(cfg.model, models.cache_root(cfg.cache_dir))
        dataset = Path(e.dataset).stem if e.dataset.endswith(".jsonl") else e.dataset
        evaluators = [EditEvaluator(requests, _metric_name(dataset), success, e.eval_batch_size)]
        if probe is not None:
            evaluators.append(PerplexityEvaluator(tok, probe, cfg.probe.n_tokens, cfg.probe.chunk_tokens))
        module = registry.method(cfg.method.name)(cfg, model, tok, evaluators, len(requests))
        dm = data.EditDataModule(requests, e.batch_size, evaluators)
        trainer = L.Trainer(accelerator=cfg.device, devices=1, logger=logger, max_epochs=1,
                            val_check_interval=every // e.batch_size, num_sanity_val_steps=0,
                            enable_checkpointing=False, enable_model_summary=False, inference_mode=False,
                            use_distributed_sampler=False, log_every_n_steps=1)
        trainer.validate(module, datamodule=dm, verbose=False)
        trainer.fit(module, datamodule=dm)
        if e.n % every:
            trainer.validate(module, datamodule=dm, verbose=False)
        tracking.log_deltas(logger, module.model, module.cumulative)
        if cfg.tracking.log_checkpoint:
            tracking.log_checkpoint(logger, module.model, tok)
        return logger.run_id


def _quiet_lightning() -> None:
    """Silence Lightning's advice that does not apply to edit runs (no optimizer, eval-mode modules by
    design, requests kept on the host)."""
    for message in ("`LightningModule.configure_optimizers` returned `None`", "Found .* module\\(s\\) in eval mode",
                    "You have overridden `transfer_batch_to_device`", ".*treespec, LeafSpec"):
        warnings.filterwarnings("ignore", message=message)


def _metric_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text.lower())


def checkpoint(run_id: str, out: str, uri: str | None) -> Path:
    from editharm import tracking

    return tracking.download_checkpoint(run_id, Path(out), uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="editharm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_edit = sub.add_parser("edit", help="apply edits and measure them in one MLflow run")
    p_edit.add_argument("overrides", nargs="*", help="group=name or dotted.key=value, e.g. method=ft edits.n=4")
    p_ckpt = sub.add_parser("checkpoint", help="download a run's edited checkpoint")
    p_ckpt.add_argument("run_id")
    p_ckpt.add_argument("--out", required=True, help="directory to write the checkpoint to")
    p_ckpt.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        if args.command == "edit":
            run_id = edit(args.overrides)
            print(f"editharm: run {run_id} finished")
        else:
            print(checkpoint(args.run_id, args.out, args.tracking_uri))
    except EditharmError as err:
        print(f"editharm: error: {err}", file=sys.stderr)
        if args.command == "edit":
            from editharm import tracking

            tracking.fail_joined_run(err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
