"""`LmEvalEvaluator`: an lm-evaluation-harness task in the validation loop (`ability/lm_eval/<task>/...`).

Each batch of documents goes through lm-eval's model interface over the module's current weights (`ModelLM`, no
copy beyond the `tasks.dtype` one every task shares), lm-eval's filters and its `process_results`; the per-example
values (acc, acc_norm, ...) become rows of an `ExampleMetric`, so each score gets our bootstrap interval and, after
the first evaluation, its paired difference (`<score>_delta`), as `TaskEvaluator`'s tasks do; so does the gold
answer's likelihood (`gold_logprob`, and `gold_mass` for multiple choice). Batching, DDP, baselines and resume
state are `TaskEvaluator`'s.
"""
from __future__ import annotations

from dataclasses import replace

from editharm.tasks.evaluator import TaskEvaluator
from editharm.tasks.inference import continuation_logprobs
from editharm.tasks.likelihood import GoldLikelihood, choice_gold, gold_text
from editharm.tasks.lm_eval_task import LmEvalTask, stat_name
from editharm.tasks.task import Item


class LmEvalScores(GoldLikelihood):
    """Per-example values computed by lm-eval, averaged: `update(index, [(acc, acc_norm, ...), ...])`; the first
    statistic is the headline."""

    def __init__(self, stats: tuple[str, ...]):
        super().__init__(stats)
        self.primary = self.stats[0]


class LmEvalEvaluator(TaskEvaluator):
    """Scores an `LmEvalTask`'s documents: per example its doc id, the choices' log-likelihoods (or the generated
    text), the prediction and the gold, lm-eval's metric values and the gold answer's log-probability."""

    task: LmEvalTask

    def make_metric(self):
        return LmEvalScores(self.task.stats)

    def update(self, module, batch: list[Item]) -> None:
        from editharm.tasks.lm_eval_model import ModelLM  # imports lm-eval

        task, choice = self.task, self.task.spec.kind == "choice"
        model, tok = module.scoring_model(self.dtype), module.tokenizer
        # lm-eval's requests with the item's context: the same, or as a chat template or truncation left it
        reqs = {it.index: [replace(r, arguments=(it.prompt, *r.arguments[1:]), resps=[], filtered_resps={})
                           for r in task.requests[it.index]] for it in batch}
        flat = [r for it in batch for r in reqs[it.index]]
        lm = ModelLM(model, tok, len(batch))
        for r, resp in zip(flat, lm.loglikelihood(flat) if choice else lm.generate_until(flat)):
            r.resps.append(resp)
        for ensemble in task.task._filters:
            ensemble.apply(flat)
        if choice:
            outputs = [[r.resps[0][0] for r in reqs[it.index]] for it in batch]
            parsed = [max(range(len(o)), key=o.__getitem__) for o in outputs]
            gold = [choice_gold(o, it.target) for o, it in zip(outputs, batch)]
        else:
            outputs = [reqs[it.index][0].resps[0] for it in batch]
            parsed = [reqs[it.index][0].filtered_resps[task.task._filters[0].name] for it in batch]
            golds = [task.spec.target_delimiter + gold_text(task.spec.gold, it.target) for it in batch]
            gold = [(lp,) for lp in continuation_logprobs(model, tok, [it.prompt for it in batch], golds, len(batch))]
        values = [self.values(reqs[it.index]) for it in batch]
        index = [it.index for it in batch]
        self.metric.update(index, [tuple(v[s] for s in task.stats) for v in values])
        self.likelihood.update(index, gold)
        for it, out, p, g, v in zip(batch, outputs, parsed, gold, values):
            self.rows.append({"index": it.index, "doc_id": it.index, "prompt": it.prompt, "choices": list(it.choices),
                              "output": out, "parsed": p, "gold": it.target, "score": v[task.stats[0]], **v,
                              "gold_logprob": g[0]})

    def replay_key(self) -> None:
        """Never replayed (`editharm.replay`): lm-eval's own code is outside the key's source hash."""
        return None

    def values(self, reqs: list) -> dict[str, float]:
        """lm-eval's per-example metric values of one document, per filter, named as `task.stats`."""
        task, out = self.task.task, {}
        for f in task._filters:
            got = task.process_results(reqs[0].doc, [r.filtered_resps[f.name] for r in reqs])
            for metric in task._metric_fn_list:
                out[stat_name(metric, f.name, len(task._filters))] = float(got[metric])
        return out
