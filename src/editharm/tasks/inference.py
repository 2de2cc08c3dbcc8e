"""Batched greedy generation and batched log-likelihood of choices.

- `generate`: length-sorted batches, left padding, KV cache, stop strings checked per sequence.
- `choice_logliks`: each context is encoded once (left-padded batch, explicit position ids so absolute
  position embeddings are right too); its KV cache is then shared by all of its choices, whose tokens
  are scored in one more forward pass. Single-token choices need no second pass at all.
- `generate_and_score`: greedy continuations and the gold answer's mean per-token log-probability from one
  prefill per prompt: the gold tokens are scored after the prompt in its KV cache, the cache is cropped back
  to the prompt, and the greedy decoding continues from it.
- `continuation_logprobs`: mean per-token log P(continuation | context), one left-padded pass per batch
  (explicit position ids) that keeps logits only over the continuations.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from editharm.limits import context_length
from editharm.scoring import last_positions, pad, pad_id
from editharm.placement import input_device


class StopOnStrings(StoppingCriteria):
    """Marks a sequence done once its generated text contains one of `stops`."""

    def __init__(self, tok, stops: list[str], prompt_width: int):
        self.tok, self.stops, self.width = tok, stops, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tok.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def cut_at_stop(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=len(text))
    return text[:cut]


@torch.no_grad()
def generate(model: nn.Module, tok, prompts: list[str], max_new_tokens: int, stop: list[str] | None = None,
             batch_size: int = 16) -> list[str]:
    """Greedy continuations of `prompts` (special tokens dropped, cut before the first stop string)."""
    stop = list(stop or [])
    device = input_device(model)
    encoded = [tok(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad_id(tok), eos_token_id=tok.eos_token_id)
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = pad([encoded[i] for i in chunk], tok, device, left=True)
        criteria = StoppingCriteriaList([StopOnStrings(tok, stop, ids.shape[1])]) if stop else None
        gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                             stopping_criteria=criteria)
        texts = tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
        for i, text in zip(chunk, texts):
            out[i] = cut_at_stop(text, stop)
    return out


def encode_continuations(tok, contexts: list[str], continuations: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each context (with special tokens) and of its continuation (without), tokenised apart."""
    cont = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(not c for c in cont):
        raise ValueError("a continuation tokenises to zero tokens")
    return [tok(c)["input_ids"] for c in contexts], cont


@torch.no_grad()
def generate_and_score(model: nn.Module, tok, prompts: list[str], golds: list[str], max_new_tokens: int,
                       stop: list[str] | None = None, batch_size: int = 16) -> tuple[list[str], list[float]]:
    """`(greedy continuations, mean per-token log P(gold | prompt))`: what `generate` and
    `continuation_logprobs` return, from one prefill of each prompt (golds carry their own delimiter).

    Plain greedy decoding that ends at the tokenizer's EOS (else the model's) or a stop string, as `generate`
    with its GenerationConfig does; logits processors a model's own generation config may set (repetition
    penalty and the like) are not applied, by either. A cache that cannot be cropped back after the gold
    (sliding-window layers) has the gold scored by `continuation_logprobs` instead."""
    stop = list(stop or [])
    device = input_device(model)
    ctx, gold = encode_continuations(tok, prompts, golds)
    eos = tok.eos_token_id if tok.eos_token_id is not None else model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) - {None}
    order = sorted(range(len(prompts)), key=lambda i: -len(ctx[i]))
    texts, logps = [""] * len(prompts), [0.0] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        tokens, lps = _generate_chunk(model, tok, [ctx[i] for i in chunk], [gold[i] for i in chunk], max_new_tokens,
                                      stop, eos, device)
        if lps is None:
            lps = continuation_logprobs(model, tok, [prompts[i] for i in chunk], [golds[i] for i in chunk], len(chunk))
        for i, t, lp in zip(chunk, tokens, lps):
            texts[i], logps[i] = cut_at_stop(tok.decode(t, skip_special_tokens=True), stop), lp
    return texts, logps


def _generate_chunk(model, tok, ctx, gold, max_new_tokens, stop, eos, device):
    """`(generated tokens, gold log-probs or None)` of one batch, from one prefill."""
    ids, mask = pad(ctx, tok, device, left=True)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    first = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                  logits_to_keep=last_positions(ids.shape[1], 1, ids.device))
    cache, last = first.past_key_values, first.logits[:, -1].float()
    logps = None
    if cache.is_croppable:
        logps = _gold_logps(model, tok, cache, mask, pos, last.log_softmax(-1), gold, device)
        if (extra := cache.get_seq_length() - ids.shape[1]) > 0:
            cache.crop(-extra)  # back to the prompt, for the decoding
    return _greedy(model, tok, cache, mask, pos[:, -1:], last.argmax(-1), max_new_tokens, stop, eos, device), logps


def _gold_logps(model, tok, cache, mask, pos, first: torch.Tensor, gold, device) -> list[float]:
    """Mean log P of each row's gold tokens, teacher-forced after the prompt in `cache` (which they extend;
    `first`: the log-probs after the prompt)."""
    sums = [float(first[r, g[0]]) for r, g in enumerate(gold)]
    longest = max(len(g) for g in gold)
    if longest > 1:
        feed = torch.full((len(gold), longest - 1), pad_id(tok), dtype=torch.long)
        for r, g in enumerate(gold):
            feed[r, :len(g) - 1] = torch.tensor(g[:-1], dtype=torch.long)
        feed_mask = torch.cat([mask, torch.ones(len(gold), longest - 1, dtype=mask.dtype, device=device)], 1)
        feed_pos = pos[:, -1:] + 1 + torch.arange(longest - 1, device=device)
        if (limit := context_length(model)) is not None:  # a row's padding past its own gold may run beyond the
            feed_pos = feed_pos.clamp_max(limit - 1)      # model's positions (learned ones index a table): unread
        logits = model(input_ids=feed.to(device), attention_mask=feed_mask, position_ids=feed_pos,
                       past_key_values=cache, use_cache=True).logits
        for r, g in enumerate(gold):  # a row at a time: (rows × gold × vocab) float32 log-probs would be GBs
            logp = logits[r, :len(g) - 1].float().log_softmax(-1)
            sums[r] += float(logp[torch.arange(len(g) - 1), torch.tensor(g[1:], dtype=torch.long)].sum())
    return [s / len(g) for s, g in zip(sums, gold)]


def _greedy(model, tok, cache, mask, pos, nxt: torch.Tensor, max_new_tokens: int, stop, eos: set[int],
            device) -> list[list[int]]:
    """Greedy decoding from a prefilled cache: a row ends at EOS, at a stop string or at `max_new_tokens`.
    A row that ended leaves the batch (its cache rows are dropped), so the rest decode at the live rows' cost."""
    out: list[list[int]] = [[] for _ in range(len(nxt))]
    live = list(range(len(nxt)))  # the rows still decoding, in batch order
    for step in range(max_new_tokens):
        ended = set()
        for b, r in enumerate(live):
            out[r].append(int(nxt[b]))
            text = tok.decode(out[r], skip_special_tokens=True) if stop else ""
            if out[r][-1] in eos or any(s in text for s in stop):
                ended.add(b)
        if len(ended) == len(live) or step == max_new_tokens - 1:
            break
        if ended:
            keep = [b for b in range(len(live)) if b not in ended]
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, pos, nxt = mask[index], pos[index], nxt[index]
            live = [live[b] for b in keep]
        mask = torch.cat([mask, torch.ones(len(live), 1, dtype=mask.dtype, device=device)], 1)
        pos = pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits
        nxt = logits[:, -1].argmax(-1)
    return out


@torch.no_grad()
def choice_logliks(model: nn.Module, tok, contexts: list[str], choices: list[list[str]],
                   batch_size: int = 16, greedy: bool = False) -> list[list]:
    """Sum of log P(choice tokens | context) for every choice of every context (choices carry their own
    leading delimiter, e.g. " True"); with `greedy`, `(sum, whether greedy decoding would produce the choice)`."""
    device = input_device(model)
    ctx = [tok(c)["input_ids"] for c in contexts]
    cont = [[tok(c, add_special_tokens=False)["input_ids"] for c in cs] for cs in choices]
    order = sorted(range(len(contexts)), key=lambda i: -len(ctx[i]))
    out: list[list] = [[] for _ in contexts]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, scores in zip(chunk, _score_chunk(model, tok, [ctx[i] for i in chunk], [cont[i] for i in chunk], device)):
            out[i] = scores if greedy else [s for s, _ in scores]
    return out


def _score_chunk(model, tok, ctx: list[list[int]], cont: list[list[list[int]]],
                 device) -> list[list[tuple[float, bool]]]:
    """(sum of log-probs, all tokens the argmax) of every continuation of every context in one batch."""
    ids, mask = pad(ctx, tok, device, left=True)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    first = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                  logits_to_keep=last_positions(ids.shape[1], 1, ids.device))
    last = first.logits[:, -1].float().log_softmax(-1)  # predicts every choice's first token
    owner = [d for d, cs in enumerate(cont) for _ in cs]
    flat = [c for cs in cont for c in cs]
    scores = [float(last[d, c[0]]) for d, c in zip(owner, flat)]
    picks = last.argmax(-1).tolist()
    greedy = [picks[d] == c[0] for d, c in zip(owner, flat)]
    longest = max(len(c) for c in flat)
    if longest > 1:  # the rest of each choice, fed on a copy of its context's cache
        feed = torch.full((len(flat), longest - 1), pad_id(tok), dtype=torch.long)
        for j, c in enumerate(flat):
            feed[j, :len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
        idx = torch.tensor(owner, device=device)
        cache = first.past_key_values
        cache.reorder_cache(idx)
        feed_mask = torch.cat([mask[idx], torch.ones(len(flat), longest - 1, dtype=mask.dtype, device=device)], 1)
        feed_pos = pos[idx, -1:] + 1 + torch.arange(longest - 1, device=device)
        logp = model(input_ids=feed.to(device), attention_mask=feed_mask, position_ids=feed_pos,
                     past_key_values=cache).logits.float().log_softmax(-1)
        rest = logp.argmax(-1).tolist()
        for j, c in enumerate(flat):
            for t in range(1, len(c)):
                scores[j] += float(logp[j, t - 1, c[t]])
            greedy[j] = greedy[j] and rest[j][:len(c) - 1] == c[1:]
    per_doc: list[list[tuple[float, bool]]] = [[] for _ in cont]
    for d, s, g in zip(owner, scores, greedy):
        per_doc[d].append((s, g))
    return per_doc


@torch.no_grad()
def continuation_logprobs(model: nn.Module, tok, contexts: list[str], continuations: list[str],
                          batch_size: int = 16) -> list[float]:
    """Mean per-token log P(continuation tokens | context) of each pair, teacher-forced (continuations carry
    their own leading delimiter; context and continuation are tokenised apart, as in `choice_logliks`)."""
    device = input_device(model)
    ctx, cont = encode_continuations(tok, contexts, continuations)
    out: list[float] = []
    for start in range(0, len(ctx), batch_size):
        tails = cont[start:start + batch_size]
        ids, mask = pad([c + t for c, t in zip(ctx[start:start + batch_size], tails)], tok, device, left=True)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        width = max(len(t) for t in tails)  # left padding: every continuation ends the row
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                       logits_to_keep=last_positions(ids.shape[1], width + 1, ids.device)).logits
        logp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, -width:, None]).squeeze(-1)
        out.extend(float(logp[i, width - len(t):].mean()) for i, t in enumerate(tails))
    return out
