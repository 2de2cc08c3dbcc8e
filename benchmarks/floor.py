"""The machine's floor: measured GEMM peak, and the FLOPs a causal LM's forward pass needs.

    peak = gemm_peak(torch.bfloat16)                    # GFLOP/s of plain matrix products, this machine
    f = Forward.of(model)
    f.flops(n_new=300)                                  # a 300-token prompt, logits at its last position
    f.flops(n_new=1, n_past=300)                        # one decoding step after it

Benchmarks print achieved GFLOP/s as useful FLOPs (no padding counted) over seconds, beside the peak measured in
the same process: machines of one kind differ by 3x in their bf16 peak, so only a ratio within a run means much.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

PREFILL_SHAPES = ((4096, 576, 1536), (4096, 1536, 576))
"""(M, K, N) of SmolLM2's MLP products at a 4,096-token prefill: the shapes an evaluation spends its time in."""


def gemm_peak(dtype: torch.dtype, shapes=PREFILL_SHAPES, seconds: float = 1.0) -> float:
    """GFLOP/s of `torch.matmul` at `shapes` (the best of them), each timed for about `seconds`."""
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return best


@dataclass(frozen=True)
class Forward:
    """What one forward pass costs, from the model's own shapes."""

    linear: int
    """Weights of the decoder's matrix products (every Linear/Conv1D but the output head)."""
    head: int
    """Weights of the output head (vocabulary × width)."""
    layers: int
    heads: int
    head_dim: int

    @classmethod
    def of(cls, model: nn.Module) -> Forward:
        c = model.config
        head = model.get_output_embeddings()
        linear = sum(m.weight.numel() for m in model.modules()
                     if m is not head and (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"))
        width = getattr(c, "hidden_size", None) or c.n_embd
        heads = getattr(c, "num_attention_heads", None) or c.n_head
        layers = getattr(c, "num_hidden_layers", None) or c.n_layer
        return cls(linear=linear, head=head.weight.numel(), layers=layers, heads=heads,
                   head_dim=getattr(c, "head_dim", None) or width // heads)

    def attention_pairs(self, n_new: int, n_past: int = 0) -> int:
        """(query, key) pairs a causal pass over `n_new` tokens after `n_past` cached ones scores."""
        return n_new * n_past + n_new * (n_new + 1) // 2

    def flops(self, n_new: int, n_past: int = 0, logits: int = 1) -> int:
        """Multiply-adds × 2 of a causal pass: the matrix products over `n_new` tokens, QKᵀ and AV over the
        causal pairs, and the output head at `logits` positions."""
        attention = 4 * self.layers * self.heads * self.head_dim * self.attention_pairs(n_new, n_past)
        return 2 * self.linear * n_new + attention + 2 * self.head * logits
