"""lm-eval's model interface over a model object in memory: `ModelLM(model, tokenizer)` is an `lm_eval.api.model.LM`.

    lm = ModelLM(module.scoring_model(dtype), module.tokenizer, batch_size=16)
    lm.loglikelihood(instances)     # [(sum log P(continuation | context), is greedy), ...]
    lm.generate_until(instances)    # greedy continuations, cut before the first `until` string

No copy and no loading: it scores the weights it is given, as they are when called (the edited ones, inside a
run's validation loop), with our batched inference (`tasks/inference.py`), so lm-eval tasks and ours share one
implementation of choice log-likelihoods and greedy decoding. Importing this module imports lm-eval.
"""
from __future__ import annotations

from lm_eval.api.model import LM

from editharm.errors import DataError
from editharm.tasks.inference import choice_logliks, generate

DEFAULT_MAX_GEN_TOKS = 256
"""lm-eval's HF model's default for `max_gen_toks`."""


class ModelLM(LM):
    """A causal LM and its tokenizer behind lm-eval's `LM` interface.

    - `loglikelihood`: requests sharing a context are scored together (its KV cache shared by its continuations),
      each with whether greedy decoding would produce it; an empty context is refused (no context-free scores).
    - `generate_until`: greedy decoding to `until` or EOS, at most `max_gen_toks` tokens (default 256).
    - `loglikelihood_rolling`: not supported (perplexity has its own probe, `probe.perplexity`).
    """

    def __init__(self, model, tokenizer, batch_size: int = 16):
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        by_context: dict[str, list[int]] = {}  # context -> positions of its requests, in first-seen order
        for i, req in enumerate(requests):
            by_context.setdefault(req.args[0], []).append(i)
        if "" in by_context:
            raise DataError("lm-eval request with an empty context: context-free scores are not supported")
        contexts = list(by_context)
        scores = choice_logliks(self.model, self.tokenizer, contexts,
                                [[requests[i].args[1] for i in by_context[c]] for c in contexts], self.batch_size,
                                greedy=True)
        out: list = [None] * len(requests)
        for c, row in zip(contexts, scores):
            for i, scored in zip(by_context[c], row):
                out[i] = scored
        return out

    def generate_until(self, requests) -> list[str]:
        groups: dict[tuple, list[int]] = {}  # (stops, max tokens) -> positions of its requests
        for i, req in enumerate(requests):
            kwargs = req.args[1] or {}
            until = kwargs.get("until") or []
            stops = tuple([until] if isinstance(until, str) else until)
            key = (stops, int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)))
            groups.setdefault(key, []).append(i)
        out: list[str] = [""] * len(requests)
        for (until, n), positions in groups.items():
            texts = generate(self.model, self.tokenizer, [requests[i].args[0] for i in positions], n, list(until),
                             self.batch_size)
            for i, text in zip(positions, texts):
                out[i] = text
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError("ModelLM: loglikelihood_rolling tasks are not supported")
