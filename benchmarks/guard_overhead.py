"""Guards' cost per edit step: milliseconds per call of each guard on one weight change of a given shape.

    python benchmarks/guard_overhead.py                              # SmolLM2's down_proj (576 x 1536)
    python benchmarks/guard_overhead.py --shape 4096 11008 --repeats 3   # Llama-2-7B's down_proj

A dense random ΔW and W of the shape, each registered guard called through the registry as the edit loop
calls it (rect/magnitude/random at k 0.4, pca at its k 0.4 rank, nullspace with a precomputed projector, as a
run holds it); the median of `--repeats` calls. Compare with seconds per edit (`benchmarks/edit_speed.py`).
Printed, and logged to MLflow (experiment `editharm-benchmarks`) unless --no-log.
"""
from __future__ import annotations

import argparse
import statistics as st
import time

import torch

from editharm import guards, tracking
from editharm.registry import guard


def overhead(shape: tuple[int, int], repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    W, dW = torch.randn(*shape, generator=g), 1e-2 * torch.randn(*shape, generator=g)
    X = torch.randn(shape[1], 4 * shape[1], generator=g)
    P = guards.nullspace_projector(X @ X.T / X.shape[1], 1e-2)
    ctx = guards.GuardContext(weights={"w": W}, seed=0, edit_index=0, input_axis={"w": 1}, projectors={"w": P})
    configs = {"rect": guards.RECTConfig(), "magnitude": guards.ShareConfig(name="magnitude"),
               "random": guards.ShareConfig(name="random"), "pca": guards.PCAConfig(),
               "nullspace": guards.NullspaceConfig()}
    out = {}
    for name, cfg in configs.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            guard(name)({"w": dW}, cfg, ctx)
            times.append(time.perf_counter() - t0)
        out[f"{name}_ms"] = 1000 * st.median(times)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=2, default=[576, 1536], metavar=("OUT", "IN"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-log", action="store_true")
    args = p.parse_args()
    figures = overhead(tuple(args.shape), args.repeats)
    print(f"guards on one {args.shape[0]} x {args.shape[1]} weight change, median of {args.repeats} "
          f"(torch threads {torch.get_num_threads()}): "
          + ", ".join(f"{k[:-3]} {v:.1f} ms" for k, v in figures.items()))
    if not args.no_log:
        tracking.log_benchmark(f"guard-overhead-{args.shape[0]}x{args.shape[1]}", vars(args),
                               {f"guard_{k}": v for k, v in figures.items()})


if __name__ == "__main__":
    main()
