"""Teacher-forced scoring of target continuations: log-probabilities and argmax agreement per token.

Used by edit methods (their losses) and edit metrics alike. A target is scored as the continuation
" " + target after the prompt; prompt and target are tokenised separately, so the boundary is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from editharm.placement import input_device

IGNORE = -100


@dataclass(frozen=True)
class TargetScore:
    """One (prompt, target) pair scored under the model."""

    nll: float
    """Mean negative log-likelihood per target token."""
    token_acc: float
    """Share of target tokens that are the argmax given the gold prefix."""
    predicted: tuple[int, ...]
    """Argmax token at each target position."""


def continuation(target: str) -> str:
    return " " + target.strip()


def pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def last_positions(width: int, n: int, device) -> int | torch.Tensor:
    """`logits_to_keep` for the last `n` of `width` positions: on a CPU an index tensor, elsewhere the int `n`.
    transformers turns an int into the view `hidden[:, -n:]`, whose strides send torch's CPU matmul down a path
    several times slower than on the gathered rows an index gives: SmolLM2's output head on the last of 60
    positions of 64 rows took 0.33 s against 0.052 s (`benchmarks/head_slice.py`, torch 2.13, 2 cores); the logits
    agree to float32 rounding (1e-6). Off the CPU the int stays: a model spread over GPUs holds its last hidden
    states on another device than its inputs, where an index tensor would have to follow them."""
    if not 0 < n <= width:
        raise ValueError(f"cannot keep the last {n} of {width} positions")
    return torch.arange(width - n, width, device=device) if torch.device(device).type == "cpu" else n


def pad(rows: list[list[int]], tok, device, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of token rows padded to one width, on the right or on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(tok), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def encode_pairs(tok, prompts: list[str], targets: list[str], device: torch.device | str = "cpu"):
    """Right-padded `(input_ids, attention_mask, labels)`; labels are IGNORE except on target tokens."""
    p_ids = tok(list(prompts), add_special_tokens=True)["input_ids"]
    t_ids = tok([continuation(t) for t in targets], add_special_tokens=False)["input_ids"]
    if any(len(t) == 0 for t in t_ids):
        raise ValueError("a target tokenises to zero tokens")
    ids, mask = pad([p + t for p, t in zip(p_ids, t_ids)], tok, device)
    labels = torch.full_like(ids, IGNORE)
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
    return ids, mask, labels


def token_logprobs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """`(logp, argmax, counts)`: log P of each target token and the argmax there, flattened over the batch
    in order, and the number of target tokens per example."""
    return logits_logprobs(model(input_ids=ids, attention_mask=mask).logits, labels)


def logits_logprobs(logits: torch.Tensor, labels: torch.Tensor):
    """`token_logprobs` from a forward pass's logits (B, T, V)."""
    logits = logits[:, :-1]
    gold = labels[:, 1:]
    where = gold != IGNORE
    picked = logits[where].float()
    logp = picked.log_softmax(-1).gather(-1, gold[where][:, None]).squeeze(-1)
    return logp, picked.argmax(-1), where.sum(1)


def mean_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Differentiable mean over examples of each example's mean per-token NLL."""
    logp, _, counts = token_logprobs(model, ids, mask, labels)
    return mean_example_nll(logp, counts)


def mean_example_nll(logp: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The mean over examples of each example's mean per-token NLL, from `token_logprobs`' `(logp, counts)`;
    examples without target tokens do not count."""
    return torch.stack([-x.mean() for x in logp.split(counts.tolist()) if len(x)]).mean()


@torch.no_grad()
def score(model: nn.Module, tok, prompts: list[str], targets: list[str], batch_size: int = 16) -> list[TargetScore]:
    """Score each (prompt, target) pair; batching does not change the result."""
    device = input_device(model)
    out: list[TargetScore] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask, labels = encode_pairs(tok, prompts[start:start + batch_size], targets[start:start + batch_size], device)
        logp, argmax, counts = token_logprobs(model, ids, mask, labels)
        gold = labels[:, 1:][labels[:, 1:] != IGNORE]
        for lp, am, g in zip(logp.split(counts.tolist()), argmax.split(counts.tolist()), gold.split(counts.tolist())):
            out.append(TargetScore(nll=float(-lp.mean()), token_acc=float((am == g).float().mean()),
                                   predicted=tuple(am.tolist())))
    return out
