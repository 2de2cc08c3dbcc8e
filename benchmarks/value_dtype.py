"""Seconds per edit and ΔW against float32 when the value step (ROME's v*, MEMIT's z) runs in bfloat16.

    python benchmarks/value_dtype.py                 # SmolLM2, 8 CounterFact cases, ROME one at a time, MEMIT as a batch

Each method edits the same cases twice from the unedited model: once with `method.v_autocast=null` (float32
throughout) and once with its configured setting (SmolLM2: bfloat16, a cast copy with eager attention), back
to back in one process. Prints seconds (per edit for ROME, per batch for MEMIT), the ratio, and the cosine of
each ΔW to float32's. Logged to MLflow (experiment `editharm-benchmarks`) unless --no-log.
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
    p.add_argument("--no-log", action="store_true")
    args = p.parse_args()
    requests, _ = data.load_requests(config.load(["edits=counterfact", f"edits.n={args.cases}"]).edits, data.data_dir(None))
    figures = {}
    for name in ("rome", "memit"):
        setting = config.load([f"model={args.model}", f"method={name}"]).method.v_autocast
        exact, s32, _ = edit_deltas(name, args.model, requests, ["method.v_autocast=null"], one_at_a_time=name == "rome")
        fast, s16, _ = edit_deltas(name, args.model, requests, [], one_at_a_time=name == "rome")
        cos = [float(torch.nn.functional.cosine_similarity(a, b, 0)) for a, b in zip(fast, exact)]
        unit = "edit" if name == "rome" else f"batch of {args.cases}"
        print(f"{name}: float32 {s32:.1f} s per {unit}, v_autocast={setting} {s16:.1f} s (x{s32 / s16:.2f}); "
              f"ΔW cosine to float32 min {min(cos):.4f} mean {sum(cos) / len(cos):.4f}", flush=True)
        figures.update({f"{name}_float32_s": s32, f"{name}_configured_s": s16, f"{name}_speedup": s32 / s16,
                        f"{name}_cosine_min": min(cos), f"{name}_cosine_mean": sum(cos) / len(cos)})
    if not args.no_log:
        tracking.log_benchmark(f"value-dtype-{args.model}", vars(args), figures)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
