"""Seconds per edit and ΔW of the value step (ROME's v*, MEMIT's z) at its configured settings against a baseline
setting: by default float32 (`method.v_autocast=null`), so the figures are what bfloat16 buys where it is native.

    python benchmarks/value_dtype.py                 # SmolLM2, 8 CounterFact cases, ROME one at a time, MEMIT as a batch
    python benchmarks/value_dtype.py --against method.v_cache_prefix=false --methods memit --cases 16

Each method edits the same cases twice from the unedited model: once with the `--against` overrides and once with
its configuration (SmolLM2: `v_autocast` auto, bfloat16 on a cast copy with eager attention where bfloat16 is
native; prefixes cached), back to back in one process. Prints seconds (per edit for ROME, per batch for MEMIT), the
ratio, and the cosine of each ΔW to the baseline's. Logged to MLflow (experiment `editharm-benchmarks`, figures
`<method>_baseline_s` and `<method>_configured_s`; runs before 2026-12-06 named the baseline's `_float32_s`)
unless --no-log.
"""
from __future__ import annotations

import argparse
import os
import torch

from delta_timing import edit_deltas
from editharm import config, data, tracking


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--methods", default="rome,memit")
    p.add_argument("--against", nargs="+", default=["method.v_autocast=null"], help="the baseline's overrides")
    p.add_argument("--no-log", action="store_true")
    args = p.parse_args()
    requests, _ = data.load_requests(config.load(["edits=counterfact", f"edits.n={args.cases}"]).edits, data.data_dir(None))
    figures = {}
    against = " ".join(args.against)
    for name in args.methods.split(","):
        step = config.load([f"model={args.model}", f"method={name}"]).method
        exact, s_base, _ = edit_deltas(name, args.model, requests, args.against, one_at_a_time=name == "rome")
        fast, s_conf, _ = edit_deltas(name, args.model, requests, [], one_at_a_time=name == "rome")
        cos = [float(torch.nn.functional.cosine_similarity(a, b, 0)) for a, b in zip(fast, exact)]
        unit = "edit" if name == "rome" else f"batch of {args.cases}"
        print(f"{name}: {against} {s_base:.1f} s per {unit}, configured (v_autocast={step.v_autocast}) {s_conf:.1f} s "
              f"(x{s_base / s_conf:.2f}); ΔW cosine to the baseline's min {min(cos):.4f} mean {sum(cos) / len(cos):.4f}",
              flush=True)
        figures.update({f"{name}_baseline_s": s_base, f"{name}_configured_s": s_conf, f"{name}_speedup": s_base / s_conf,
                        f"{name}_cosine_min": min(cos), f"{name}_cosine_mean": sum(cos) / len(cos)})
    if not args.no_log:
        tracking.log_benchmark(f"value-dtype-{args.model}", vars(args), figures)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
