"""What the validation loop measures: one `Evaluator` per validation dataloader.

An evaluator owns its data, updates torchmetrics states in `update` (one validation batch) and returns
`(metrics, prediction rows)` from `compute`, and the numbers that never change across evaluations from
`constants` (logged once, as run params). Metric names are `<prefix>/<metric>`.

- `EditEvaluator`: efficacy, generalization and locality of the edit requests (`edit/<dataset>/...`).
- `PerplexityEvaluator`: perplexity of held-out text (`probe/perplexity`), a cheap continuous probe.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric, Metric, SumMetric

from editharm import says, scoring
from editharm.data import EditRequest
from editharm.says import Generation
from editharm.tasks.inference import generate


class Evaluator(nn.Module):
    name: str
    prefix: str
    replayed: bool = False

    def dataloader(self) -> DataLoader:
        raise NotImplementedError

    def update(self, module, batch) -> None:
        raise NotImplementedError

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        raise NotImplementedError

    def constants(self) -> dict[str, float]:
        """Figures fixed for the whole run (a task's chance level, its number of examples)."""
        return {}

    def resume_state(self) -> dict:
        """What this evaluator carries from one evaluation to the next (a baseline, running means), as plain
        tensors, lists and numbers: part of the run's resumable state (`editharm.resume`)."""
        return {}

    def load_resume_state(self, state: dict) -> None:
        """Put back what `resume_state` returned."""

    def baseline_state(self) -> dict:
        """What paired comparisons with this evaluation need (`editharm.evaluate(..., baseline=)`); {} for none."""
        return {}

    def data_key(self) -> str:
        """What this evaluator scores, as a string a paired baseline must share."""
        return self.name

    def load_baseline(self, state: dict) -> None:
        """Measure later evaluations against `state` (another evaluator's `baseline_state`, same data)."""

    def replay_key(self) -> str | None:
        """What this evaluator's scores depend on besides the weights and the code (its data as scored, its
        settings), for `editharm.replay`; None: never replayed."""
        return None

    def recording(self) -> Any:
        """What `replay` needs to give the last evaluation's numbers again, taken before `reset`."""
        raise NotImplementedError

    def replay(self, record: Any) -> None:
        """Update the metrics with a recorded evaluation's per-example outputs instead of scoring; the batches of
        this evaluation are then skipped (`replayed`)."""
        raise NotImplementedError

    def series(self) -> tuple[str, ...] | None:
        """The metric names (without the prefix) a run plots as MLflow series; the others (intervals, secondary
        scores) are kept in the evaluation's table artifact only (`tracking.log_evaluation`). None: every one."""
        return None


def headline(metrics: dict[str, float], series: dict[str, tuple[str, ...] | None]) -> dict[str, float]:
    """`metrics` without what an evaluator keeps out of its series (`series`: by prefix, `Evaluator.series`)."""
    drop = [(f"{prefix}/", set(keep)) for prefix, keep in series.items() if keep is not None]
    return {k: v for k, v in metrics.items()
            if not any(k.startswith(p) and k[len(p):] not in keep for p, keep in drop)}


def metric_state(metric: Metric) -> dict:
    """A torchmetrics metric's accumulated states and update count (what `reset` clears)."""
    return {"states": {name: getattr(metric, name) for name in metric._defaults}, "updates": metric._update_count}


def load_metric_state(metric: Metric, state: dict) -> None:
    for name, value in state["states"].items():
        setattr(metric, name, value)
    metric._update_count = state["updates"]
    metric._computed = None


class EditEvaluator(Evaluator):
    """Scores the requests the module says are due (`module.requests_due()`), teacher-forced:

    - `*_token_acc`: share of target tokens predicted (argmax) given the gold prefix;
    - `*_success` (CounterFact-style data): P(new) > P(old) by mean per-token NLL; for locality,
      P(locality answer) > P(new) on the neighbourhood prompt;
    - `locality_unchanged`: share of the locality answer's argmax tokens equal to the pre-edit ones (a request with
      several locality pairs: the mean over its pairs, each listed in its row's `locality`; so for `_success`);
    - `portability_token_acc` (requests with portability questions): the token accuracy of each question's answer,
      as generalization's, averaged over a request's questions, then over requests;
    - with `generation` (`edits.generate=true`): `efficacy_says_new` / `generalization_says_new`, whether the new
      target occurs in the greedy continuation of the prompt / paraphrase, `*_says_old` the old answer, and
      `fluency`, ROME's n-gram entropy of text generated about the subject (`says`).
    """

    name = "edit"

    def __init__(self, requests: list[EditRequest], dataset: str, success: bool, batch_size: int,
                 generation: Generation | None = None):
        super().__init__()
        self.requests = requests
        self.prefix = f"edit/{dataset}"
        self.success = success
        self.batch_size = batch_size
        self.generation = generation
        keys = ["efficacy_token_acc", "generalization_token_acc", "locality_unchanged"]
        if success:
            keys += ["efficacy_success", "generalization_success", "locality_success"]
        if any(r.portability for r in requests):
            keys.append("portability_token_acc")
        if generation is not None:
            keys += ["efficacy_says_new", "generalization_says_new", "fluency"]
            if any(r.ground_truth for r in requests):
                keys += ["efficacy_says_old", "generalization_says_old"]
        self.metrics = nn.ModuleDict({k: MeanMetric() for k in keys})
        self.pre_locality: dict[tuple[int, int], tuple[int, ...]] = {}
        self.rows: list[dict] = []

    def dataloader(self) -> DataLoader:
        return DataLoader(list(enumerate(self.requests)), batch_size=self.batch_size, collate_fn=list)

    def update(self, module, batch: list[tuple[int, EditRequest]]) -> None:
        due = module.requests_due()
        batch = [(i, r) for i, r in batch if i in due]
        if not batch:
            return
        idx, reqs = zip(*batch)
        model, tok = module.model, module.tokenizer
        prompts = [r.prompt for r in reqs]
        rows = [{"index": i, "case_id": r.case_id, "prompt": r.prompt, "target_new": r.target_new} for i, r in batch]
        self._score(rows, "efficacy", model, tok, prompts, reqs, old=[r.ground_truth for r in reqs])
        with_re = [(row, r) for row, r in zip(rows, reqs) if r.rephrase]
        if with_re:
            sub_rows, sub = zip(*with_re)
            self._score(sub_rows, "generalization", model, tok, [r.rephrase for r in sub], sub,
                        old=[r.ground_truth for r in sub])
        with_loc = [(i, row, r) for i, row, r in zip(idx, rows, reqs) if r.localities]
        if with_loc:
            self._locality(with_loc, model, tok)
        with_port = [(row, r) for row, r in zip(rows, reqs) if r.portability]
        if with_port:
            self._portability(with_port, model, tok)
        if self.generation is not None:
            self._generated(rows, reqs, model, tok)
        self.rows.extend(rows)

    def _generated(self, rows, reqs, model, tok) -> None:
        """Greedy generations after each prompt and paraphrase (does the new answer occur, does the old one), and
        from each fluency template filled with the subject (n-gram entropy, averaged per request)."""
        g = self.generation
        for kind, field in (("efficacy", "prompt"), ("generalization", "rephrase")):
            items = [(row, r) for row, r in zip(rows, reqs) if getattr(r, field)]
            texts = generate(model, tok, [getattr(r, field) for _, r in items], g.max_new_tokens,
                             batch_size=self.batch_size)
            for (row, r), text in zip(items, texts):
                row[f"{kind}_generated"] = text
                row[f"{kind}_says_new"] = float(says.says_answer(text, r.target_new))
                self.metrics[f"{kind}_says_new"].update(row[f"{kind}_says_new"])
                if r.ground_truth:
                    row[f"{kind}_says_old"] = float(says.says_answer(text, r.ground_truth))
                    self.metrics[f"{kind}_says_old"].update(row[f"{kind}_says_old"])
        prompts = [t.format(r.subject) for r in reqs for t in g.fluency_templates]
        texts = generate(model, tok, prompts, g.fluency_tokens, batch_size=self.batch_size)
        k = len(g.fluency_templates)
        for j, row in enumerate(rows):
            mine = texts[j * k:(j + 1) * k]
            row["fluency_texts"] = mine
            row["fluency"] = sum(says.n_gram_entropy(t) for t in mine) / k
            self.metrics["fluency"].update(row["fluency"])

    def _portability(self, items, model, tok) -> None:
        pairs = [(row, q, a) for row, r in items for q, a in r.portability]
        scores = scoring.score(model, tok, [q for _, q, _ in pairs], [a for _, _, a in pairs], self.batch_size)
        for (row, q, _), s in zip(pairs, scores):
            row.setdefault("portability", []).append({"prompt": q, "predicted": tok.decode(list(s.predicted)),
                                                      "token_acc": s.token_acc})
        for row, _ in items:
            row["portability_token_acc"] = sum(p["token_acc"] for p in row["portability"]) / len(row["portability"])
            self.metrics["portability_token_acc"].update(row["portability_token_acc"])

    def _score(self, rows, kind, model, tok, prompts, reqs, old) -> None:
        new = scoring.score(model, tok, prompts, [r.target_new for r in reqs], self.batch_size)
        for row, s in zip(rows, new):
            row[f"{kind}_predicted"] = tok.decode(list(s.predicted))
            row[f"{kind}_token_acc"] = s.token_acc
            self.metrics[f"{kind}_token_acc"].update(s.token_acc)
        if self.success:
            olds = scoring.score(model, tok, prompts, old, self.batch_size)
            for row, s_new, s_old in zip(rows, new, olds):
                row[f"{kind}_success"] = float(s_new.nll < s_old.nll)
                self.metrics[f"{kind}_success"].update(row[f"{kind}_success"])

    def _locality(self, items, model, tok) -> None:
        """Every (prompt, answer) pair of each request; a request's scores are the means over its pairs."""
        pairs = [(i, j, row, r, q, a) for i, row, r in items for j, (q, a) in enumerate(r.localities)]
        answers = scoring.score(model, tok, [q for *_, q, _ in pairs], [a for *_, a in pairs], self.batch_size)
        news = (scoring.score(model, tok, [q for *_, q, _ in pairs], [r.target_new for _, _, _, r, _, _ in pairs],
                              self.batch_size) if self.success else [None] * len(pairs))
        for (i, j, row, _, q, _), s, s_new in zip(pairs, answers, news):
            before = self.pre_locality.setdefault((i, j), s.predicted)  # first sight is the unedited model
            same = sum(a == b for a, b in zip(before, s.predicted)) / len(before)
            one = {"prompt": q, "predicted": tok.decode(list(s.predicted)), "unchanged": same}
            if s_new is not None:
                one["success"] = float(s.nll < s_new.nll)
            row.setdefault("locality", []).append(one)
        for _, row, _ in items:
            got = row["locality"]
            row.update(locality_prompt=got[0]["prompt"], locality_predicted=got[0]["predicted"],
                       locality_unchanged=sum(g["unchanged"] for g in got) / len(got))
            self.metrics["locality_unchanged"].update(row["locality_unchanged"])
            if self.success:
                row["locality_success"] = sum(g["success"] for g in got) / len(got)
                self.metrics["locality_success"].update(row["locality_success"])
            if len(got) == 1:  # one pair: its prompt, prediction and scores are the row's own
                del row["locality"]

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        metrics = {k: float(m.compute()) for k, m in self.metrics.items() if m.update_called}
        return metrics, list(self.rows)

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()
        self.rows = []

    def resume_state(self) -> dict:
        """The locality baseline (first-sight predictions) and, in single mode, the running means and rows."""
        return {"pre_locality": _keyed(self.pre_locality), "rows": list(self.rows),
                "metrics": {k: metric_state(m) for k, m in self.metrics.items()}}

    def baseline_state(self) -> dict:
        """The locality answers' predicted tokens, by request index and pair index ("i:j")."""
        return {"pre_locality": _keyed(self.pre_locality)}

    def data_key(self) -> str:
        """The requests, in order (locality baselines are matched by index)."""
        fields = [(r.prompt, r.subject, r.target_new, r.locality_prompt, r.locality_answer) + r.more_locality
                  for r in self.requests]
        return f"{self.prefix}:{hashlib.sha256(repr(fields).encode()).hexdigest()[:16]}"

    def load_baseline(self, state: dict) -> None:
        self.pre_locality = _unkeyed(state["pre_locality"])

    def load_resume_state(self, state: dict) -> None:
        self.pre_locality = _unkeyed(state["pre_locality"])
        self.rows = list(state["rows"])
        for k, m in self.metrics.items():
            load_metric_state(m, state["metrics"][k])


def _keyed(pre: dict[tuple[int, int], tuple[int, ...]]) -> dict[str, list[int]]:
    """The locality baseline with JSON keys: "i:j" for request i's pair j."""
    return {f"{i}:{j}": list(p) for (i, j), p in pre.items()}


def _unkeyed(state: dict) -> dict[tuple[int, int], tuple[int, ...]]:
    """`_keyed` undone; a key "i" (runs stored before several pairs per request) is pair 0."""
    return {tuple(int(x) for x in (f"{k}:0" if ":" not in str(k) else k).split(":")): tuple(p)
            for k, p in state.items()}


class PerplexityEvaluator(Evaluator):
    """exp(mean NLL per token) over fixed chunks of held-out text."""

    name = "perplexity"
    prefix = "probe"

    def __init__(self, tok, text: str, n_tokens: int, chunk_tokens: int, batch_size: int = 8):
        super().__init__()
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"][:n_tokens]
        n_chunks = len(ids) // chunk_tokens
        if n_chunks == 0:
            raise ValueError(f"probe text has {len(ids)} tokens, fewer than one chunk of {chunk_tokens}")
        self.chunks = torch.tensor(ids[: n_chunks * chunk_tokens]).view(n_chunks, chunk_tokens)
        self.batch_size = batch_size
        self.nll = SumMetric()
        self.count = SumMetric()

    def dataloader(self) -> DataLoader:
        return DataLoader(self.chunks, batch_size=self.batch_size)

    def update(self, module, batch: torch.Tensor) -> None:
        if self.replayed:
            return
        logits = module.model(input_ids=batch).logits[:, :-1].float()
        nll = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        self.nll.update(nll.to(self.nll.device))  # where the metric's state is (the model may run on a GPU)
        self.count.update(batch[:, 1:].numel())

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        return {"perplexity": math.exp(float(self.nll.compute()) / float(self.count.compute()))}, []

    def reset(self) -> None:
        self.nll.reset()
        self.count.reset()
        self.replayed = False

    def replay_key(self) -> str:
        ids = hashlib.sha256(self.chunks.numpy().tobytes()).hexdigest()[:16]
        return f"perplexity:{tuple(self.chunks.shape)}:{ids}:{self.batch_size}"

    def recording(self) -> tuple[float, float]:
        return float(self.nll.compute()), float(self.count.compute())

    def replay(self, record: tuple[float, float]) -> None:
        self.nll.update(torch.tensor(record[0], dtype=torch.float64, device=self.nll.device))
        self.count.update(record[1])
        self.replayed = True
