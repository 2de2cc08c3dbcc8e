"""Inputs that cannot hang a run: every text a run will feed the model, measured against its context length
before any compute.

    limit = context_length(model)                  # max_position_embeddings / n_positions
    check_requests(requests, tok, limit, margin)   # one error naming the record and the limit
    truncated = fit_tasks(tasks, tok, limit)       # tasks with `truncate: left` lose their oldest tokens
    check_probe(probe_cfg, limit)

A model far past its positions does not fail: it slows down, allocates attention for 10,000 tokens and emits
a transformers warning; these checks turn that into one clear error (or, for tasks that say so, a counted
truncation) before the first edit.
"""
from __future__ import annotations

import dataclasses
import logging

from editharm.errors import DataError
from editharm.tasks.likelihood import gold_text

log = logging.getLogger(__name__)
TEMPLATE_SLACK = 2
"""Tokens beyond a context template's generated length (its joining ". " and the space before the prompt)."""


def context_length(model) -> int | None:
    """The model's position limit, or None when its config names none."""
    c = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(c, key, None), int):
            return getattr(c, key)
    return None


def request_margin(method_cfg) -> int:
    """Tokens a method may put before a request's prompt: its longest context template (ROME, MEMIT)."""
    params = getattr(method_cfg, "context_template_length_params", None) or []
    return max((length for length, _ in params), default=0) + (TEMPLATE_SLACK if params else 0)


def check_requests(requests: list, tok, limit: int | None, margin: int = 0) -> None:
    """Every scored text of every request (prompt, paraphrase, locality prompts and portability questions, each with
    its answer) fits in `limit` tokens with `margin` to spare; else one error naming the first record that does not."""
    if limit is None:
        return
    for i, r in enumerate(requests):
        texts = [("prompt", r.prompt, r.target_new), ("rephrase", r.rephrase, r.target_new)]
        texts += [("locality prompt", q, a) for q, a in r.localities]
        texts += [("portability question", q, a) for q, a in r.portability]
        for field, text, answer in texts:
            if not text:
                continue
            n = len(tok(f"{text} {answer or ''}")["input_ids"])
            if n + margin > limit:
                raise DataError(f"edit request {i} (case_id {r.case_id or '?'}): its {field} and answer are {n} tokens; "
                                f"with {margin} for the method's context templates that exceeds the model's context "
                                f"length of {limit} tokens; shorten or drop the record")


def fit_tasks(tasks: list, tok, limit: int | None) -> dict[str, int]:
    """Make every task item fit: prompt + its longest continuation (the longest choice; or the generated tokens or
    the gold answer scored on the prompt's cache, whichever is longer) within `limit`. Tasks with `truncate: left`
    keep the prompt's last tokens (a warning says how many); others fail naming the item. Returns the number of
    truncated items per task (tasks with none left out)."""
    counts: dict[str, int] = {}
    if limit is None:
        return counts
    for task in tasks:
        spec, items = task.spec, []
        for it in task.items:
            ids = tok(it.prompt)["input_ids"]
            if spec.kind == "choice":
                after = max((len(tok(c, add_special_tokens=False)["input_ids"]) for c in it.choices), default=0)
            else:
                gold = spec.target_delimiter + gold_text(spec.gold, it.target)
                after = max(spec.generation.max_new_tokens, len(tok(gold, add_special_tokens=False)["input_ids"]))
            room = limit - after
            if len(ids) > room:
                if spec.truncate != "left" or room < 1:
                    raise DataError(f"task {spec.name}, item {it.index}: the prompt is {len(ids)} tokens and needs "
                                    f"{limit - room} more for its answer, over the model's context length of {limit}; "
                                    "the task's config can allow `truncate: left`")
                it = dataclasses.replace(it, prompt=_keep_last(tok, ids, room))
                counts[spec.name] = counts.get(spec.name, 0) + 1
            items.append(it)
        task.items = items
    for name, n in counts.items():
        log.warning(f"task {name}: {n} prompts longer than the model's {limit} positions keep their last tokens")
    return counts


def _keep_last(tok, ids: list[int], room: int) -> str:
    """The text of the last tokens of `ids` that re-tokenises (special tokens included) to at most `room`."""
    keep = room
    while keep > 0:
        text = tok.decode(ids[len(ids) - keep:], skip_special_tokens=True)
        if len(tok(text)["input_ids"]) <= room:
            return text
        keep -= 1
    return ""


def check_probe(probe_cfg, limit: int | None) -> None:
    if limit is not None and probe_cfg.perplexity and probe_cfg.chunk_tokens > limit:
        raise DataError(f"probe.chunk_tokens={probe_cfg.chunk_tokens} exceeds the model's context length of {limit}; "
                        f"set probe.chunk_tokens <= {limit}")
