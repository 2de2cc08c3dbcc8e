"""Chat-tuned models read prompts inside their chat template (`model.chat_template`): each edit prompt, paraphrase,
locality prompt and task prompt becomes one user turn followed by the assistant's opening, and the model's answer
(the edit target, the task's gold continuation or generation) follows it.

    wrap = wrapper(cfg.model, tok)      # None when the template is off
    requests, tasks = wrap_requests(requests, wrap), wrap_tasks(tasks, wrap)
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from editharm.config import ModelConfig
from editharm.data import EditRequest
from editharm.errors import ModelError
from editharm.tasks.task import Task

Wrap = Callable[[str], str]


def wrapper(spec: ModelConfig, tok) -> Wrap | None:
    """`text -> text in the chat template`: the tokenizer's own (`chat_template: true`) or the Jinja template given
    (`chat_template: "<template>"`); None when off. A BOS the template writes is dropped when the tokenizer adds its
    own, so the prompt is not opened twice."""
    template = spec.chat_template
    if template is False or template is None:
        return None
    own = None if template is True else str(template)
    if own is None and not getattr(tok, "chat_template", None):
        raise ModelError(f"model.chat_template=true: the tokenizer of model '{spec.name}' has no chat template; give "
                         "one as a Jinja string (model.chat_template='...') or leave it false")
    bos = tok.bos_token if tok.bos_token and tok("x")["input_ids"][:1] == [tok.bos_token_id] else None

    def wrap(text: str) -> str:
        out = tok.apply_chat_template([{"role": "user", "content": text}], chat_template=own, tokenize=False,
                                      add_generation_prompt=True)
        return out[len(bos):] if bos and out.startswith(bos) else out

    return wrap


def wrap_requests(requests: list[EditRequest], wrap: Wrap | None) -> list[EditRequest]:
    """Each request's prompts (edit, paraphrase, locality, portability) as user turns; subjects, targets and
    answers as they are."""
    if wrap is None:
        return requests
    return [dataclasses.replace(r, prompt=wrap(r.prompt), rephrase=r.rephrase and wrap(r.rephrase),
                                locality_prompt=r.locality_prompt and wrap(r.locality_prompt),
                                more_locality=tuple((wrap(q), a) for q, a in r.more_locality),
                                portability=tuple((wrap(q), a) for q, a in r.portability)) for r in requests]


def wrap_tasks(tasks: list[Task], wrap: Wrap | None) -> list[Task]:
    """Each task item's prompt (its few-shot examples included) as one user turn."""
    if wrap is None:
        return tasks
    return [dataclasses.replace(t, items=[dataclasses.replace(it, prompt=wrap(it.prompt)) for it in t.items])
            for t in tasks]
