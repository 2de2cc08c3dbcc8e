"""The output head on the last positions: an int `logits_to_keep` (a strided view of the hidden states) against the
index tensor `scoring.last_positions` gives (the gathered, contiguous rows), back to back in one process.

    python benchmarks/head_slice.py            # SmolLM2's head shape (576 -> 49,152), float32

Prints seconds per product for each shape (rows × positions, the last n kept) and their ratio; the logits agree
to float32 rounding (the largest absolute difference is printed).
"""
from __future__ import annotations

import argparse
import time

import torch

from editharm.scoring import last_positions


def seconds(f, repeats: int) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    W = torch.randn(args.vocab, args.hidden, generator=torch.Generator().manual_seed(0)) * 0.02
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, head {args.hidden} -> {args.vocab}")
    for rows, width, n in ((64, 60, 1), (16, 250, 1)):  # prefills of scoring batches (4,096-token budget)
        h = torch.randn(rows, width, args.hidden)
        index = last_positions(width, n, h.device)
        strided = seconds(lambda: torch.nn.functional.linear(h[:, -n:], W), args.repeats)
        gathered = seconds(lambda: torch.nn.functional.linear(h[:, index], W), args.repeats)
        diff = (torch.nn.functional.linear(h[:, -n:], W) - torch.nn.functional.linear(h[:, index], W)).abs().max()
        print(f"{rows:4d} rows x {width:3d} positions, last {n}: int {strided:.4f} s, index {gathered:.4f} s "
              f"(x{strided / gathered:.1f}); max |difference| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
