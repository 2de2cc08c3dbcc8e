"""Ability-task throughput on a real model, and an independent check of our scoring against lm-eval.

    python benchmarks/eval_throughput.py                       # the eight gu2024 tasks, limit 100, dtype auto
    python benchmarks/eval_throughput.py --two-pass            # also today's reference path, side by side
    python benchmarks/eval_throughput.py --protocol harness --limit 200
    python benchmarks/eval_throughput.py --tasks sst2,rte,boolq --protocol harness --dtype float32 \
        --limit 200 --compare-lm-eval                          # needs `pip install lm-eval`

Prints examples/second, the score, the useful FLOPs (prompt, gold and generated tokens through the model, no
padding; `floor.Forward`) and the achieved GFLOP/s against the bf16/float32 GEMM peak measured at the start of
the same run. With --two-pass, the generation tasks are also scored the way they were before one-prefill
scoring (`generate`, then `continuation_logprobs` prefilling every prompt again), on the same batches: both
times, outputs equal per example, and the gold log-probability's largest and mean difference. With
--compare-lm-eval, scores the same examples with lm-evaluation-harness (its json loader on the same local
files, the same model object and batch size) and prints both accuracies, per-example agreement and the
throughput ratio. Figures are logged to MLflow (experiment `editharm-benchmarks`) unless --no-log.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from editharm import config, data, models, precision
from editharm.module import EditModule
from editharm.tasks import load_task
from editharm.tasks.evaluator import TaskEvaluator
from editharm.tasks.inference import continuation_logprobs, generate
from editharm.tasks.likelihood import gold_text
from editharm.tasks.task import stable_subset

from floor import Forward, gemm_peak


def run_ours(scorer, tok, task, batch_size: int, dtype: str, batch_tokens: int) -> dict:
    t0 = time.perf_counter()
    ev = TaskEvaluator(task, tok, batch_size, dtype, batch_tokens)
    for batch in ev.dataloader():
        ev.update(scorer, batch)
    values, rows = ev.compute()
    values.update(ev.constants())  # n, chance, majority: params in a run, figures here
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "n": len(task.items), "per_s": len(task.items) / seconds, "values": values, "rows": rows,
            "primary": ev.metric.primary, "items": ev.items}


def useful_flops(forward: Forward, tok, task, rows: list[dict]) -> float:
    """FLOPs the task's scoring needs without padding: each prompt once (logits at its end), the gold's tokens
    after it, and the generated tokens fed back (counted by re-tokenising the output, cut at the stop)."""
    spec, total = task.spec, 0
    for row in rows:
        n = len(tok(row["prompt"])["input_ids"])
        total += forward.flops(n)
        if spec.kind == "choice":
            continue
        gold = len(tok(spec.target_delimiter + gold_text(spec.gold, row["gold"]), add_special_tokens=False)["input_ids"])
        made = len(tok(row["output"], add_special_tokens=False)["input_ids"])
        total += forward.flops(gold - 1, n, logits=gold - 1) + forward.flops(max(made - 1, 0), n, logits=max(made - 1, 0))
    return float(total)


def run_two_pass(model, tok, task, ours: dict, batch_size: int) -> dict:
    """A generation task scored as before (length-sorted batches of `batch_size` prompts, each prefilled by
    `generate` and again by `continuation_logprobs`); its time and agreement with ours."""
    spec = task.spec
    t0, outputs, logps = time.perf_counter(), {}, {}
    for start in range(0, len(ours["items"]), batch_size):
        batch = ours["items"][start:start + batch_size]
        prompts = [it.prompt for it in batch]
        golds = [spec.target_delimiter + gold_text(spec.gold, it.target) for it in batch]
        texts = generate(model, tok, prompts, spec.generation.max_new_tokens, list(spec.generation.stop), len(batch))
        for it, text, lp in zip(batch, texts, continuation_logprobs(model, tok, prompts, golds, len(batch))):
            outputs[it.index], logps[it.index] = text, lp
    seconds = time.perf_counter() - t0
    diffs = [abs(r["gold_logprob"] - logps[r["index"]]) for r in ours["rows"]]
    return {"two_pass_seconds": seconds, "speedup": seconds / ours["seconds"],
            "outputs_equal": sum(r["output"] == outputs[r["index"]] for r in ours["rows"]) / len(diffs),
            "gold_logprob_max_diff": max(diffs), "gold_logprob_mean_diff": sum(diffs) / len(diffs)}


def run_lm_eval(model, tok, name: str, task, root: Path, batch_size: int) -> dict:
    """Score the same documents with lm-eval's multiple-choice path and its own HF model, over the package's lm-eval
    definition of the task (`configs/task/lm_eval/<name>_local.yaml`, the same local file); returns accuracy, time,
    per-doc preds in our items' order."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from editharm.tasks import lm_eval_task

    local = f"{name}_local"
    theirs = lm_eval_task.build(lm_eval_task.task_manager([f"lm_eval:{local}"], []), local, root)
    ids = stable_subset(len(theirs.eval_docs), len(task.items), f"{name}:0")  # our subset, in our items' order
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[theirs], samples={local: ids}, log_samples=True, num_fewshot=0)
    seconds = time.perf_counter() - t0
    samples = out["samples"][local]
    preds = {s["doc_id"]: max(range(len(s["filtered_resps"])), key=lambda k: s["filtered_resps"][k][0])
             for s in samples}
    return {"seconds": seconds, "per_s": len(ids) / seconds, "acc": out["results"][local]["acc,none"],
            "preds": [preds[i] for i in ids]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--protocol", default="gu2024")
    p.add_argument("--tasks", default=",".join(config.TASKS))
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--dtype", default="auto", help="scoring dtype; auto: bfloat16 where it is native, else float32")
    p.add_argument("--compare-lm-eval", action="store_true")
    p.add_argument("--two-pass", type=int, nargs="?", const=32, metavar="BATCH",
                   help="also score as before one-prefill scoring (fixed batches of BATCH prompts, 32), side by side")
    p.add_argument("--no-log", action="store_true")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args()
    args.dtype = precision.resolve("--dtype", args.dtype, "cpu", "float32")

    root = data.data_dir(None)
    cfg = config.load([f"model={args.model}"])
    t_load = time.perf_counter()
    model, tok = models.load(cfg.model, models.cache_root())
    load_s = time.perf_counter() - t_load
    scorer = EditModule(cfg, model, tok, [], n_requests=0)  # for its scoring_model(dtype)
    forward = Forward.of(model)
    # the scoring dtype's peak and float32's (bfloat16 products take seconds each where they are not native)
    peak = {name: gemm_peak(getattr(torch, name)) for name in dict.fromkeys((args.dtype, "float32"))}
    print(f"model {args.model} loaded in {load_s:.1f} s; torch threads {torch.get_num_threads()}; "
          f"protocol {args.protocol}, limit {args.limit}, batch {args.batch_size}, dtype {args.dtype}")
    print("GEMM peak at the prefill shapes: " + ", ".join(f"{name} {v:.0f} GFLOP/s" for name, v in peak.items()))
    figures: dict = {"load_s": load_s, "peak_gflops": peak, "tasks": {}}
    t_all = time.perf_counter()
    for name in args.tasks.split(","):
        task = load_task(name, args.protocol, root, args.limit)
        ours = run_ours(scorer, tok, task, args.batch_size, args.dtype, args.batch_tokens)
        main_key = ours["primary"]
        line = (f"{name:12s} n={ours['n']:4d} {ours['seconds']:6.1f} s {ours['per_s']:7.2f} ex/s  "
                f"{main_key}={ours['values'][main_key]:.3f} [{ours['values'][main_key + '_ci_low']:.3f}, "
                f"{ours['values'][main_key + '_ci_high']:.3f}] valid={ours['values']['valid_rate']:.2f}")
        flops = useful_flops(forward, tok, task, ours["rows"])
        gflops = flops / ours["seconds"] / 1e9
        line += f" {flops / 1e12:.2f} TFLOP {gflops:.0f} GFLOP/s ({gflops / peak[args.dtype]:.0%} of peak)"
        fig = {"primary": main_key, "n": ours["n"], "seconds": ours["seconds"], "examples_per_s": ours["per_s"],
               "tflop": flops / 1e12, "gflops": gflops, "fraction_of_peak": gflops / peak[args.dtype], **ours["values"]}
        if args.two_pass and task.spec.kind != "choice":
            ref = run_two_pass(scorer.scoring_model(getattr(torch, args.dtype)), tok, task, ours, args.two_pass)
            fig.update(ref)
            line += (f" | before {ref['two_pass_seconds']:.1f} s (x{ref['speedup']:.2f}), outputs equal "
                     f"{ref['outputs_equal']:.2f}, gold logp diff max {ref['gold_logprob_max_diff']:.3f} "
                     f"mean {ref['gold_logprob_mean_diff']:.4f}")
        if args.compare_lm_eval:
            theirs = run_lm_eval(model, tok, name, task, root, args.batch_size)
            mine = [r["parsed"] for r in sorted(ours["rows"], key=lambda r: r["index"])]
            agree = sum(a == b for a, b in zip(mine, theirs["preds"])) / len(mine)
            fig.update(lm_eval_accuracy=theirs["acc"], lm_eval_seconds=theirs["seconds"],
                       lm_eval_examples_per_s=theirs["per_s"], agreement=agree,
                       speedup=theirs["seconds"] / ours["seconds"])
            line += (f" | lm-eval acc={theirs['acc']:.3f} {theirs['per_s']:.2f} ex/s; "
                     f"diff {100 * (ours['values'][main_key] - theirs['acc']):+.2f} pts, "
                     f"agreement {agree:.3f}, speed x{fig['speedup']:.2f}")
        print(line, flush=True)
        figures["tasks"][name] = fig
    figures["pass_s"] = sum(f["seconds"] for f in figures["tasks"].values())
    figures["wall_s"] = time.perf_counter() - t_all
    figures["tflop"] = sum(f["tflop"] for f in figures["tasks"].values())
    figures["fraction_of_peak"] = figures["tflop"] * 1e3 / figures["pass_s"] / peak[args.dtype]
    if args.two_pass:
        before = sum(f.get("two_pass_seconds", f["seconds"]) for f in figures["tasks"].values())  # choice tasks: unchanged
        figures.update(before_s=before, before_fraction_of_peak=figures["tflop"] * 1e3 / before / peak[args.dtype])
        print(f"before (two passes, batches of {args.two_pass}): {before:.1f} s, {figures['before_fraction_of_peak']:.0%} "
              f"of the {args.dtype} peak: x{before / figures['pass_s']:.2f}")
    print(f"whole pass: {figures['pass_s']:.1f} s scoring ({figures['wall_s']:.1f} s wall incl. loading tasks); "
          f"{figures['tflop']:.1f} TFLOP, {figures['fraction_of_peak']:.0%} of the {args.dtype} peak "
          f"(the floor at peak: {figures['tflop'] * 1e3 / peak[args.dtype]:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    if not args.no_log:
        log(args, figures)


def log(args, figures: dict) -> None:
    import mlflow

    mlflow.set_experiment("editharm-benchmarks")
    with mlflow.start_run(run_name=f"eval-throughput-{args.protocol}-{args.model}"):
        mlflow.log_params(vars(args))
        mlflow.log_metrics({"bench/pass_s": figures["pass_s"], "bench/tflop": figures["tflop"],
                            "bench/fraction_of_peak": figures["fraction_of_peak"],
                            **{f"bench/peak_gflops_{k}": v for k, v in figures["peak_gflops"].items()}})
        for name, fig in figures["tasks"].items():
            mlflow.log_metrics({f"bench/{name}/{k}": float(v) for k, v in fig.items() if isinstance(v, (int, float))})
        mlflow.log_dict(figures, "benchmark/eval_throughput.json")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
