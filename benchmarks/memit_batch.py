"""MEMIT's target step: requests per second of the reference's loop (one request at a time, whole rows every
step) against batched requests over cached prefixes, on the same requests, with the edits they make compared.

    python benchmarks/memit_batch.py                       # SmolLM2, 32 CounterFact requests, sizes 1, 10, 32
    python benchmarks/memit_batch.py --requests 8 --sizes 8 --repeats 3 --overrides method.v_num_grad_steps=6 \
        --batched-overrides method.v_autocast=null

Settings: `loop` (z_batch_size=1, v_cache_prefix=false: what MEMIT did before), then `batch<N>` for each size
(prefixes cached), and `batch<max>-nocache` (batching alone); `--batched-overrides` apply to all but the loop,
which stays this model's configured MEMIT. The settings run round robin `--repeats` times (median time), so a
change of a shared machine's load touches all of them alike. For each, one MEMIT batch edit of all the
requests (statistics cached): the target step's seconds (what the settings change) and the whole edit's, the
edited model's efficacy (token accuracy, P(new) > P(old)) on the edit prompts, and how far its targets z and
its ΔW are from the loop's. The settings run one after another in one process, so their ratios are what to
read; absolute times depend on the machine's load.
Figures are printed and logged to MLflow (experiment `editharm-benchmarks`) unless --no-log.
"""
from __future__ import annotations

import argparse
import statistics as st
import time

import torch

from editharm import config, data, deltas as D, models, scoring, tracking
from editharm.methods import memit
from editharm.registry import method


def efficacy(model, tok, requests) -> dict[str, float]:
    prompts = [r.prompt for r in requests]
    new = scoring.score(model, tok, prompts, [r.target_new for r in requests], 16)
    old = scoring.score(model, tok, prompts, [r.ground_truth for r in requests], 16)
    return {"efficacy_token_acc": sum(s.token_acc for s in new) / len(new),
            "efficacy_success": sum(a.nll < b.nll for a, b in zip(new, old)) / len(new)}


def run(cfg, model, tok, requests) -> tuple[dict[str, float], torch.Tensor, D.Deltas]:
    """One batch edit: seconds of the target step and of the whole edit, efficacy after it, Z − H0 and ΔW."""
    module = method("memit")(cfg, model, tok, [], n_requests=len(requests))
    module.on_fit_start()
    module._measured = {}
    seen: dict = {}
    compute_z = memit.compute_z

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        Z, traces = compute_z(*args, **kwargs)
        seen["z_s"], seen["offset"] = time.perf_counter() - t0, Z - args[-1]
        return Z, traces

    memit.compute_z = timed
    try:
        t0 = time.perf_counter()
        deltas = module.compute_deltas(requests)
        total = time.perf_counter() - t0
    finally:
        memit.compute_z = compute_z
    D.apply_(model, deltas)
    try:
        figures = efficacy(model, tok, requests)
    finally:
        D.revert_(model, deltas)
    figures.update(z_s=seen["z_s"], edit_s=total, z_requests_per_s=len(requests) / seen["z_s"],
                   loss_evals=sum(module._measured["value/loss_evals"]) / len(requests))
    return figures, seen["offset"], deltas


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--sizes", default="1,10,32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=1, help="round-robin repetitions; the median time is reported")
    p.add_argument("--overrides", nargs="*", default=[], help="config overrides for every setting, e.g. "
                   "method.v_num_grad_steps=6 (a shorter run; throughput per step is what batching changes)")
    p.add_argument("--batched-overrides", nargs="*", default=[], help="overrides for every setting but the loop, "
                   "e.g. method.v_autocast=null (float32 forward passes)")
    p.add_argument("--no-log", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]

    root = data.data_dir(None)
    requests, _ = data.load_requests(config.load(["edits=counterfact", f"edits.n={args.requests}"]).edits, root)
    base_cfg = config.load([f"model={args.model}", "method=memit"])
    model, tok = models.load(base_cfg.model, models.cache_root())
    print(f"{len(requests)} CounterFact requests, MEMIT layers {list(base_cfg.method.layers)}, "
          f"torch threads {torch.get_num_threads()}; unedited {efficacy(model, tok, requests)}")
    settings = [("loop", 1, False), *[(f"batch{s}", s, True) for s in sizes], (f"batch{max(sizes)}-nocache", max(sizes), False)]
    times: dict[str, list[float]] = {label: [] for label, _, _ in settings}
    last: dict[str, tuple] = {}
    for _ in range(args.repeats):  # round robin: a change of the machine's load touches every setting alike
        for label, size, cached in settings:
            extra = [] if label == "loop" else args.batched_overrides  # the loop: this model's MEMIT as it ran
            cfg = config.load([f"model={args.model}", "method=memit", *args.overrides, *extra,
                               f"method.z_batch_size={size}", f"method.v_cache_prefix={str(cached).lower()}"])
            last[label] = run(cfg, model, tok, requests)
            times[label].append(last[label][0]["z_s"])
    figures = {}
    _, ref_offset, ref_deltas = last["loop"]
    for label, size, cached in settings:
        f, offset, deltas = last[label]
        f["z_s"] = st.median(times[label])
        f["z_requests_per_s"] = len(requests) / f["z_s"]
        f["z_speedup"] = st.median(times["loop"]) / f["z_s"]
        rel = (offset - ref_offset).norm(dim=1) / ref_offset.norm(dim=1)
        f["z_offset_rel_diff_median"], f["z_offset_rel_diff_max"] = rel.median().item(), rel.max().item()
        f["dW_cos_min"] = min(torch.nn.functional.cosine_similarity(d.flatten(), ref_deltas[n].flatten(), 0).item()
                              for n, d in deltas.items())
        figures.update({f"{label}_{k}": v for k, v in f.items()})
        print(f"{label} (z_batch_size {size}, prefix cache {'on' if cached else 'off'}): target step {f['z_s']:.1f} s "
              f"(median of {args.repeats}: {', '.join(f'{t:.1f}' for t in times[label])}), {f['z_requests_per_s']:.2f} "
              f"requests/s, x{f['z_speedup']:.2f} vs the loop; {f['loss_evals']:.1f} loss evaluations per request; "
              f"efficacy token acc {f['efficacy_token_acc']:.3f}, success {f['efficacy_success']:.3f}; z offsets differ "
              f"from the loop's by {f['z_offset_rel_diff_median']:.1e} (median) / {f['z_offset_rel_diff_max']:.1e} "
              f"(max), ΔW cosine ≥ {f['dW_cos_min']:.4f}", flush=True)
    if not args.no_log:
        tracking.log_benchmark(f"memit-batch-{args.model}", vars(args), figures)


if __name__ == "__main__":
    main()
