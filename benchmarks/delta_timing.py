"""Seconds one method takes to compute a batch of edits, and the ΔW it computes, for A/B runs across commits.

    python benchmarks/delta_timing.py --method memit --cases 16 --save /tmp/new.pt
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/delta_timing.py --method memit --cases 16 \
        --save /tmp/old.pt --compare /tmp/new.pt

Runs `compute_deltas` once on the first `--cases` CounterFact requests (the configured method on the model,
statistics from the cache), prints seconds and loss evaluations, saves the flattened ΔW and, given another
run's file, prints the cosine and the relative difference to it. Alternate the two checkouts on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from editharm import config, data, models
try:
    from editharm.building import build
except ImportError:  # a checkout from before building.py: this script times older commits too
    from editharm.registry import method

    def build(cfg, model, tok, evaluators, n_requests):
        return method(cfg.method.name)(cfg, model, tok, evaluators, n_requests)


def edit_deltas(name: str, model_name: str, requests, overrides: list[str] = (),
                one_at_a_time: bool = False) -> tuple[list[torch.Tensor], float, float]:
    """`(flattened ΔW per batch, seconds per batch, loss evaluations)` of `name` on `requests`, from the unedited
    model: one batch of all of them, or each request alone (`one_at_a_time`), statistics from the cache."""
    cfg = config.load([f"model={model_name}", f"method={name}", *overrides])
    model, tok = models.load(cfg.model, models.cache_root(cfg.cache_dir))
    module = build(cfg, model, tok, [], n_requests=len(requests))
    module.on_fit_start()
    module._measured = {}
    batches = [[r] for r in requests] if one_at_a_time else [list(requests)]
    out, t0 = [], time.perf_counter()
    for batch in batches:
        deltas = module.compute_deltas(batch)
        out.append(torch.cat([deltas[k].flatten().float() for k in sorted(deltas)]))
    return out, (time.perf_counter() - t0) / len(batches), sum(module._measured.get("value/loss_evals", [0]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="memit")
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--save", help="write the flattened ΔW here")
    p.add_argument("--compare", help="another run's --save file")
    args = p.parse_args()
    requests, _ = data.load_requests(config.load(["edits=counterfact", f"edits.n={args.cases}"]).edits, data.data_dir(None))
    (flat,), seconds, evals = edit_deltas(args.method, args.model, requests)
    print(f"{args.method}: {seconds:.1f} s for {len(requests)} requests, {evals:.0f} loss evaluations")
    if args.save:
        torch.save(flat, args.save)
    if args.compare:
        other = torch.load(args.compare)
        print(f"ΔW against {args.compare}: cosine {float(torch.nn.functional.cosine_similarity(flat, other, 0)):.6f}, "
              f"relative difference {float((flat - other).norm() / other.norm()):.2e}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
