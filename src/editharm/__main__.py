"""Command line: `editharm edit|evaluate|stats|train-mend key=value ...` (also `python -m editharm`),
`editharm experiment NAME key=value ...`, `editharm report RUN_ID ...`, `editharm checkpoint RUN_ID`,
`editharm import-hparams FILE` (`editharm.hparams_import`). What each other command does lives in `editharm.runs`.

Bad input of any kind ends in one `editharm: error: ...` line and exit status 2, with no traceback;
a run already opened (or handed to us by `mlflow run`) is marked FAILED. SIGTERM or SIGINT stops a run
within seconds: it is marked KILLED with the reason, and the exit status is 128 + the signal (143, 130).
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

from editharm.errors import EditharmError
from editharm.stopping import Stopped

log = logging.getLogger("editharm")
RUN_COMMANDS = ("edit", "evaluate", "stats", "train-mend", "experiment")


def parser() -> argparse.ArgumentParser:
    """The command line (the docs' CLI reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="editharm", description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help="a folder of your own config files, looked up before the shipped ones (repeatable; "
                             "also $EDITHARM_CONFIG_PATH)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="print only errors, the final results table and where to open the run")
    sub = parser.add_subparsers(dest="command", required=True)
    p_edit = sub.add_parser("edit", help="apply edits and measure them in one MLflow run")
    p_edit.add_argument("overrides", nargs="*", help="group=name or dotted.key=value, e.g. method=ft edits.n=4")
    p_eval = sub.add_parser("evaluate", help="score a model or an edited checkpoint on the ability tasks")
    p_eval.add_argument("overrides", nargs="*", help="e.g. model=smollm2-135m tasks.limit=50 checkpoint=runs:/<id>")
    p_stats = sub.add_parser("stats", help="precompute a method's key statistics (second moments) into the cache")
    p_stats.add_argument("overrides", nargs="*", help="e.g. method=memit model=smollm2-135m method.mom2_n_samples=1000")
    p_mend = sub.add_parser("train-mend", help="train a MEND hypernetwork for a model (logged as runs:/<id>/mend)")
    p_mend.add_argument("overrides", nargs="*", help="e.g. model=smollm2-135m method.train.max_minutes=30")
    p_exp = sub.add_parser("experiment", help="run a grid of edit runs (configs/experiment/NAME.yaml) and its report")
    p_exp.add_argument("name", help="an experiment name (configs/experiment/) or a YAML file")
    p_exp.add_argument("overrides", nargs="*", help="applied to every cell, e.g. tasks.limit=50 model=tiny-llama")
    p_rep = sub.add_parser("report", help="figures and tables of an experiment's parent run, or of edit runs")
    p_rep.add_argument("run_ids", nargs="+")
    p_rep.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    p_ckpt = sub.add_parser("checkpoint", help="download a run's edited checkpoint")
    p_ckpt.add_argument("run_id")
    p_ckpt.add_argument("--out", required=True, help="directory to write the checkpoint to")
    p_ckpt.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    p_imp = sub.add_parser("import-hparams", help="an EasyEdit hparams YAML (ROME, MEMIT, KN, MEND, FT) as a model and "
                                                  "a method config of ours, with a table of what became of every key")
    p_imp.add_argument("file", help="EasyEdit's hparams/<ALG>/<model>.yaml")
    p_imp.add_argument("--out", default=".", metavar="DIR", help="config folder to write model/<name>.yaml and "
                       "method/<method>/<name>.yaml into (default: the current folder); then --config-dir DIR")
    p_imp.add_argument("--model", default=None, metavar="HUB_ID_OR_DIR",
                       help="the model, where the file's model_name is not a folder here (default: its model_name)")
    p_imp.add_argument("--force", action="store_true", help="overwrite files of DIR that hold other values")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import os

    folders = [*args.config_dir, *filter(None, os.environ.get("EDITHARM_CONFIG_PATH", "").split(os.pathsep))]
    if folders:  # absolute, as workers in other folders (Ray, spawned processes) read it too
        os.environ["EDITHARM_CONFIG_PATH"] = os.pathsep.join(os.path.abspath(os.path.expanduser(f)) for f in folders)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from editharm import console

    console.setup(args.quiet)  # before torch, transformers and tqdm are imported: they read its switches then
    from editharm import runs

    try:
        if args.command == "experiment":
            log.info(f"experiment run {runs.experiment(args.name, args.overrides)} finished")
        elif args.command in RUN_COMMANDS:
            command = {"edit": runs.edit, "evaluate": runs.evaluate, "stats": runs.statistics,
                       "train-mend": runs.train_mend}[args.command]
            log.info(f"run {command(args.overrides)} finished")
        elif args.command == "import-hparams":
            from editharm import hparams_import

            print(hparams_import.command(args.file, args.out, args.model, args.force))
        elif args.command == "report":
            print(f"editharm: report logged to run {runs.report(args.run_ids, args.tracking_uri)} (artifacts: report/)")
        else:
            print(runs.checkpoint(args.run_id, args.out, args.tracking_uri))
    except Stopped as err:  # SIGTERM/SIGINT: the run is marked KILLED (tracking.start)
        print(f"editharm: {getattr(err, 'message', None) or err}", file=sys.stderr, flush=True)
        return err.exit_code
    except EditharmError as err:
        print(f"editharm: error: {err}", file=sys.stderr)
        if args.command in RUN_COMMANDS:
            from editharm import tracking

            tracking.fail_joined_run(err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
