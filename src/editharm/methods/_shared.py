"""Activation plumbing shared by ROME and MEMIT (one copy; neither method subclasses the other).

- `context_templates`: ROME's prefixes "{generated text}. {}", sampled once per run from a seed
  (`run_templates`: or the configured fixed ones).
- `subject_last`: the position of the subject's last token in a text.
- `keys_at`: a module's input (and output) at given positions, from one early-exit forward pass.
- `prefix_kv`, `kv_cache`: tokens that a later change cannot reach, run once and served as a KV cache.
- `lowered`: a frozen copy of the model in a lower precision (the value step's `v_autocast`).
- `frozen`: no parameter gradients inside a block.
The value step (v*, z) is `methods/value.py`.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn
from transformers import DynamicCache

from editharm.nethook import StopForward, get_module, run_until
from editharm.scoring import last_positions, pad
from editharm.placement import input_device, is_spread

TEMPLATE_SEEDS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def context_templates(model: nn.Module, tok, length_params: list[list[int]], seed: int) -> list[str]:
    """`["{}"]` plus, for each `[length, n]`, n // 5 prefixes from each of the five seed words, sampled
    (top-k 5) up to `length` tokens *including the seed word's* (and a BOS the tokenizer adds), as the
    reference's `generate_fast(max_out_len=length)` counts them, each followed by ". {}". Sampling uses its
    own seeded RNG state, so the global RNG is untouched."""
    templates = ["{}"]
    device = input_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for length, n in length_params:
            per_seed = max(1, n // len(TEMPLATE_SEEDS))
            for start in TEMPLATE_SEEDS:
                ids = tok(start, return_tensors="pt")["input_ids"].to(device)
                new = length - ids.shape[1]
                if new > 0:
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                         top_k=5, max_new_tokens=new, min_new_tokens=new,
                                         num_return_sequences=per_seed, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                                         top_p=None, temperature=None)
                else:  # the seed word alone already fills the length: the reference generates nothing
                    out = ids.expand(per_seed, -1)
                for seq in out:
                    text = tok.decode(seq, skip_special_tokens=True).replace("{", " ").replace("}", " ")
                    templates.append(text + ". {}")
    return templates


def run_templates(model: nn.Module, tok, hp, seed: int) -> list[str]:
    """A run's context templates: `hp.context_templates` when configured, else sampled with `seed`."""
    if hp.context_templates is not None:
        return list(hp.context_templates)
    return context_templates(model, tok, hp.context_template_length_params, seed)


def subject_last(tok, text: str, subject: str) -> int:
    """Index of the subject's last token in `tok(text)` (the last occurrence of the subject)."""
    end = text.rindex(subject) + len(subject)
    return len(tok(text[:end])["input_ids"]) - 1


@torch.no_grad()
def keys_at(model: nn.Module, tok, module: str, texts: list[str], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, outputs)` of `module` at `positions[i]` of `texts[i]`, each (n, dim); the forward pass stops
    right after `module` has run."""
    device = input_device(model)
    ids, mask = pad([tok(t)["input_ids"] for t in texts], tok, device)
    rows = torch.arange(len(texts), device=device)
    pos = torch.tensor(positions, device=device)
    got = {}

    def hook(_m, args, out):
        at = (rows.to(args[0].device), pos.to(args[0].device))  # where the layer runs (device_map)
        got["in"] = args[0][at].float()
        got["out"] = hidden(out)[at].float()
        raise StopForward

    handle = get_module(model, module).register_forward_hook(hook)
    try:
        run_until(model, input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
    return got["in"], got["out"]


def hidden(out):
    """A module's hidden-state output (transformer blocks may return a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def lowered(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of `model` with its parameters in `dtype` (buffers as they are) and eager attention, for
    passes that need gradients only with respect to activations. Against `torch.autocast` the weights are
    cast once instead of at every matrix product, and attention's backward pass is matrix products (CPU
    sdpa's backward took 27 % of a bf16 ROME edit); the float32 parameters are never duplicated."""
    if is_spread(model):  # never copied: the passes run on its weights in their own dtype
        return model
    memo = {id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in model.parameters()}
    low = copy.deepcopy(model, memo)
    low.set_attn_implementation("eager")
    return low.eval()


@contextmanager
def frozen(model: nn.Module):
    """No parameter gradients inside (faster backward passes); flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def prefix_kv(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              position_ids: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values of `input_ids` (rows × P), for `kv_cache` to serve to later passes over
    the tokens that follow; empty when P = 0."""
    if input_ids.shape[1] == 0:
        return []
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                logits_to_keep=last_positions(input_ids.shape[1], 1, input_ids.device))
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def kv_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], rows: int | None = None) -> DynamicCache | None:
    """A fresh cache holding `kv` (a forward pass appends to the cache it is given), a one-row prefix
    repeated to `rows` rows without copying; None for an empty prefix."""
    if not kv:
        return None
    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        if rows is not None:
            k, v = k.expand(rows, *k.shape[1:]), v.expand(rows, *v.shape[1:])
        cache.update(k, v, layer)
    return cache
