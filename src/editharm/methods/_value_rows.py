"""The rows a value optimisation runs, batched over requests and split where δ starts to matter.

δ is added to one module's output at each row's subject position p. Under causal attention nothing at a
position before p depends on δ, in any layer, so each row is cut there: its **prefix** (tokens before p) is
run once, without gradients, and kept as a KV cache; each optimisation step runs only the **suffix** (from p:
the subject's last token, the rest of the prompt and the teacher-forced target) against that cache. Both
halves are left-padded, so the suffixes end together and every logit a loss needs sits in the last `keep`
positions (the padding between a short prefix and its suffix is masked out).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from editharm.methods._shared import kv_cache, prefix_kv, subject_last
from editharm.scoring import continuation, pad
from editharm.placement import input_device


class Rows(NamedTuple):
    """One request tokenised: its rows (edit prompts + target[:-1], then the KL prompts), the subject's last
    position in each, the target's ids and how many rows are edit prompts."""

    rows: list[list[int]]
    pos: list[int]
    tgt: list[int]
    n_rw: int

    def kl_from_end(self) -> list[int]:
        """Each KL row's subject position, counted back from the row's end."""
        return [len(r) - p for r, p in zip(self.rows[self.n_rw:], self.pos[self.n_rw:])]

    def needed(self) -> int:
        """How many final positions hold a logit this request needs: its target's and its KL subjects'."""
        return max(len(self.tgt), *self.kl_from_end())


def tokenise(tok, prompts: list[str], subject: str, target: str, kl_prompts: list[str]) -> Rows:
    tgt = tok(continuation(target), add_special_tokens=False)["input_ids"]
    rows = [tok(p)["input_ids"] + tgt[:-1] for p in prompts] + [tok(k)["input_ids"] for k in kl_prompts]
    pos = [subject_last(tok, p, subject) for p in [*prompts, *kl_prompts]]
    return Rows(rows, pos, tgt, len(prompts))


class Batch:
    """The rows of some requests as one forward pass: `owner[row]` the request (0..n−1) a row belongs to,
    `first[j]` request j's first row, `at[row]` the subject's position in the suffix. Without `cache_prefix`
    every row is all suffix (the whole row runs at every step, as the reference does)."""

    def __init__(self, model: nn.Module, tok, requests: list[Rows], cache_prefix: bool = True):
        device = input_device(model)
        rows = [(r, p) for q in requests for r, p in zip(q.rows, q.pos)]
        cut = [p if cache_prefix else 0 for _, p in rows]
        self.owner = torch.tensor([j for j, q in enumerate(requests) for _ in q.rows], device=device)
        self.first = [0]
        for q in requests:
            self.first.append(self.first[-1] + len(q.rows))
        self.keep = max(q.needed() for q in requests)
        prefix_ids, prefix_mask = pad([r[:c] for (r, _), c in zip(rows, cut)], tok, device, left=True)
        self.ids, suffix_mask = pad([r[c:] for (r, _), c in zip(rows, cut)], tok, device, left=True)
        self.at = torch.tensor([self.ids.shape[1] - (len(r) - p) for r, p in rows], device=device)
        self.mask = torch.cat([prefix_mask, suffix_mask], 1)
        positions = (self.mask.cumsum(-1) - 1).clamp_min(0)
        self.position_ids = positions[:, prefix_ids.shape[1]:]
        self.kv = prefix_kv(model, prefix_ids, prefix_mask, positions[:, :prefix_ids.shape[1]])

    def subset(self, kept: list[int]) -> Batch:
        """The same batch without the requests not in `kept` (positions 0..n−1, in order): their rows are
        dropped from every tensor and from the cached prefixes, which are not run again; the remaining rows
        keep their padding, which is masked."""
        rows = [r for j in kept for r in range(self.first[j], self.first[j + 1])]
        index = torch.tensor(rows, device=self.ids.device)
        out = object.__new__(Batch)
        out.owner = torch.tensor([k for k, j in enumerate(kept) for _ in range(self.first[j], self.first[j + 1])],
                                 device=self.ids.device)
        out.first = [0]
        for j in kept:
            out.first.append(out.first[-1] + self.first[j + 1] - self.first[j])
        out.keep = self.keep
        out.ids, out.at, out.mask, out.position_ids = self.ids[index], self.at[index], self.mask[index], self.position_ids[index]
        out.kv = [(k[index.to(k.device)], v[index.to(v.device)]) for k, v in self.kv]
        return out

    def logits(self, model: nn.Module) -> torch.Tensor:
        """(rows, keep, vocab) logits of the suffixes' last `keep` positions, over the cached prefixes.

        The output head runs on every suffix position and the last `keep` are sliced off after it (not
        `logits_to_keep`): near convergence ∂L/∂h = Wᵀ(p − e_target) is a small difference of large terms
        summed over the vocabulary; with the head run on a slice of the positions float32 rounds it
        differently from the reference (which runs the head on every position), and Adam carried that to
        1e-4 in ΔW (SmolLM2 fixture, the prompts with several tokens after the subject)."""
        cache = kv_cache(self.kv)
        out = model(input_ids=self.ids, attention_mask=self.mask, position_ids=self.position_ids,
                    past_key_values=cache, use_cache=cache is not None)
        return out.logits[:, -self.keep:]
