"""KN (Dai et al., ACL 2022): knowledge neurons found by integrated gradients, edited through their output columns.

    Attr(l, i) = (a_i / m) Σ_k ∂P(y* | x; a⁽ˡ⁾ ← α_k a⁽ˡ⁾) / ∂(α_k a⁽ˡ⁾)_i,   α = linspace(0, 1, m)   (`attribute`)
    N = {(l, i) : Attr(l, i) > θ · max Attr}, θ = adaptive_threshold        (`select`; `refine` over paraphrases)
    W_out⁽ˡ⁾[:, i] += Σ_t e(y_new,t) − c · Σ_t e(ŷ_t)   for (l, i) ∈ N       (`column_change`)

a⁽ˡ⁾ is layer l's FFN activation at the prompt's last token, y* the current answer (the record's
ground truth; ŷ for a record without one), ŷ the model's greedy continuation (as many tokens as y_new),
e(·) input-embedding rows.
Two readings (`../shared/reference/gu2024-paper-protocol.md` §6.3, §7 item 12):

- `variant=paper` is what the paper ran (EasyEdit's `knowledge_neurons`): y* and y_new are the raw strings
  encoded as `tokenizer.encode` gives them (`_prepare_inputs`): no leading space added (GPT-2 BPE: "French",
  not " French"; a sentencepiece tokenizer prefixes its own "▁"), special tokens included (LLaMA's BOS is
  y*'s first token, attributed like any other, and its embedding is added to each column). ŷ is `_generate`'s
  greedy continuation (`paper_greedy`): len(y_new) steps (BOS counted), each step re-tokenizing the prompt
  string extended by the decoded argmax tokens so far. c = 2 when ŷ is one token, else 1 (`c`; never 2 with
  a BOS-adding tokenizer). Where y* token t is attributed follows the reference's model-type check
  (`get_scores_for_layer`, `paper_per_step`): for LLaMA (and Qwen) after the prompt string extended by the
  first t greedy argmax tokens, re-tokenized; for GPT-2 the check compares with "gpt", which no model type
  equals, so every token is attributed at the prompt's last position. The per-token attributions are averaged.
- `variant=corrected` (ours): y*, y_new are `continuation(·)` (a leading space, as the model would write
  the answer after the prompt, and as `scoring` scores it), no special tokens; token t of y* is attributed
  after the prompt and y*[:t] (teacher forced) on every architecture; ŷ is the token-level greedy
  continuation (len(y_new) tokens); c = 1.

`method.per_step` overrides the position rule for either variant (true: token t at its own step, the
variant's prefix; false: every token at the prompt's last position); null takes the variant's rule.
A record without a ground truth is attributed for ŷ in both variants (EasyEdit would attribute the string
"<|endoftext|>").

`neuron=pre` is the paper code's neuron, the output of the first projection before the nonlinearity
(`gate_proj`, GPT-2 `c_fc`; template `mlp_gate`); `neuron=post` is Dai et al.'s, the input of the output
projection (act(gate)·up for SwiGLU), i.e. what column i of W_out multiplies. With m = 1 the only α is 0:
the gradient at a zeroed layer times a, the degenerate estimate of the paper's LLaMA runs (`steps: 1`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import nn

from editharm.config import choice
from editharm.data import EditRequest
from editharm.deltas import Deltas
from editharm.errors import ConfigError
from editharm.methods._shared import frozen, kv_cache, prefix_kv
from editharm.module import EditModule
from editharm.nethook import get_module, to_param_layout
from editharm.registry import register_method
from editharm.scoring import continuation, pad_id
from editharm.placement import input_device

NEURONS = ("pre", "post")
VARIANTS = ("paper", "corrected")


@dataclass
class KNConfig:
    name: str = "kn"
    steps: int = 20
    """m, the integrated-gradient steps (the paper: 20 for GPT-2 XL, 1 for LLaMA)."""
    adaptive_threshold: float = 0.2
    """θ: a neuron is selected when its attribution exceeds θ times the largest one (over all layers)."""
    refine: bool = False
    """Keep only neurons selected on at least a share `p` of the prompts (the edit prompt and its rephrase)."""
    p: float = 0.4
    neuron: str = "pre"
    """`pre` (the paper's code: first projection, before the nonlinearity) or `post` (Dai et al.)."""
    variant: str = "paper"
    """`paper` (EasyEdit's KN, as the paper ran it) or `corrected` (module docstring)."""
    per_step: Optional[bool] = None
    """Attribute token t of y* at its own step (true) or every token at the prompt's last position (false);
    null: the variant's rule (paper: the reference's model-type check, `paper_per_step`; corrected: true)."""
    layers: Optional[list[int]] = None
    """Layers whose neurons are attributed; all when null."""
    ig_batch_size: int = 256
    """Scaled copies (layer × step) per forward/backward pass."""

    @staticmethod
    def check(m, run) -> None:
        choice("method.neuron", m.neuron, NEURONS)
        choice("method.variant", m.variant, VARIANTS)
        if m.neuron == "pre" and not run.model.templates.mlp_gate:
            raise ConfigError(f"method.neuron=pre attributes the MLP gate's outputs, and model '{run.model.name}' has no "
                              "separate gate projection (its gate and input weights are fused); use method.neuron=post")
        if m.steps < 1:
            raise ConfigError(f"method.steps is the number of integrated-gradient steps and must be >= 1, got {m.steps}")
        for key in ("adaptive_threshold", "p"):
            if not 0 < m[key] <= 1:
                raise ConfigError(f"method.{key} is a share and must be in (0, 1], got {m[key]}")
        if m.ig_batch_size < 1:
            raise ConfigError(f"method.ig_batch_size must be >= 1, got {m.ig_batch_size}")


def alphas(m: int) -> torch.Tensor:
    """The integration points α_k = linspace(0, 1, m): m = 1 is α = 0 alone."""
    return torch.linspace(0.0, 1.0, m)


def integrated_gradients(a: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Attr_i = (a_i / m) Σ_k g_{k,i}, `grads` (m, d) the gradients at the m scaled activations α_k a."""
    return a * grads.sum(0) / grads.shape[0]


def select(attr: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask of the neurons with Attr > θ · max Attr (none when no attribution is positive)."""
    top = attr.max()
    return attr > threshold * top if top > 0 else torch.zeros_like(attr, dtype=torch.bool)


def refine(masks: torch.Tensor, p: float) -> torch.Tensor:
    """Neurons selected on at least a share p of the prompts, `masks` (prompts, ...)."""
    return masks.float().mean(0) >= p


def c(old: list[int]) -> float:
    """The coefficient of ŷ's embeddings in the paper's edit: 2 when ŷ is one token (`modify_weights` indexes
    one row and subtracts it twice), else 1 (one subtraction per row)."""
    return 2.0 if len(old) == 1 else 1.0


REFERENCE_TYPES = ("gpt2", "gptj", "t5", "llama", "baichuan", "chatglm2", "internlm", "qwen")
"""The reference's `model_type(name)` names, in the order its substring tests try them (the rest pass through)."""


def reference_type(model_type: str) -> str:
    """The `model_type` EasyEdit's KN would give this architecture (first substring match, else itself)."""
    return next((t for t in REFERENCE_TYPES if t in model_type.lower()), model_type.lower())


def paper_per_step(model_type: str) -> bool:
    """The reference re-tokenizes per y* token only when its model type equals "qwen", "gpt" or "llama"
    (`get_scores_for_layer`); GPT-2's is "gpt2", so GPT-2 attributes every token at the same position."""
    return reference_type(model_type) in ("qwen", "gpt", "llama")


def column_change(e_new: torch.Tensor, e_old: torch.Tensor, c: float) -> torch.Tensor:
    """Σ_t e(y_new,t) − c · Σ_t e(ŷ_t): what each selected neuron's output column gains."""
    return e_new.sum(0) - c * e_old.sum(0)


class Site(NamedTuple):
    """Where layer l's neuron activation is read and replaced: a module's output (`pre`) or input (`post`)."""

    module: str
    on_input: bool


def attribute(model: nn.Module, ids: list[int], target: int, sites: list[Site], m: int,
              batch_size: int = 256) -> torch.Tensor:
    """(layers, neurons) integrated-gradient attributions of P(target | ids) to each site's activation at the
    last position of `ids`. The tokens before it do not depend on the activation: they run once (a KV
    cache), and every scaled copy (site l, α_k) is one token through the model, `batch_size` per pass, each
    copy replacing the activation at its own site only."""
    device = input_device(model)
    kv = prefix_kv(model, torch.tensor([ids[:-1]], device=device))
    last = torch.tensor([[ids[-1]]], device=device)
    position = torch.tensor([[len(ids) - 1]], device=device)

    def run(n: int, patch):
        handles = [_hook(model, s, l, patch) for l, s in enumerate(sites)]
        try:
            return model(input_ids=last.expand(n, 1), position_ids=position.expand(n, 1),
                         attention_mask=torch.ones(n, len(ids), dtype=torch.long, device=device),
                         past_key_values=kv_cache(kv, n), use_cache=bool(kv)).logits[:, -1]
        finally:
            for h in handles:
                h.remove()

    clean: dict[int, torch.Tensor] = {}

    def capture(l, h):
        clean[l] = h[0, -1].detach().float()
        return h

    with torch.no_grad():
        run(1, capture)
    a = torch.stack([clean[l].to(device) for l in range(len(sites))])  # (layers may run on several devices)
    steps = alphas(m).to(device)
    copies = [(l, k) for l in range(len(sites)) for k in range(m)]
    attr = torch.zeros_like(a)
    with frozen(model), torch.enable_grad():
        for start in range(0, len(copies), batch_size):
            chunk = copies[start:start + batch_size]
            layer = torch.tensor([l for l, _ in chunk], device=device)
            scaled = (steps[[k for _, k in chunk]][:, None] * a[layer]).requires_grad_(True)

            def patch(l, h):
                rows = (layer == l).nonzero()[:, 0]
                if len(rows) == 0:
                    return h
                h = h.clone()
                h[rows.to(h.device), -1] = scaled[rows].to(h.device, h.dtype)
                return h

            probs = run(len(chunk), patch).float().softmax(-1)[:, target]
            (grad,) = torch.autograd.grad(probs.sum(), scaled)
            attr.index_add_(0, layer, a[layer] * grad / m)
    return attr


def _hook(model: nn.Module, site: Site, layer: int, fn):
    """Hook `fn(layer, activation) -> activation` on a site: the module's input or its output."""
    module = get_module(model, site.module)
    if site.on_input:
        return module.register_forward_pre_hook(lambda _m, args: (fn(layer, args[0]), *args[1:]))
    return module.register_forward_hook(lambda _m, _args, out: fn(layer, out))


@torch.no_grad()
def greedy(model: nn.Module, tok, ids: list[int], n: int) -> list[int]:
    """The model's n greedy next tokens after `ids` (ŷ)."""
    device = input_device(model)
    out = model.generate(input_ids=torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids), device=device,
                         dtype=torch.long), max_new_tokens=n, min_new_tokens=n, do_sample=False, top_p=None, top_k=None,
                         temperature=None, pad_token_id=pad_id(tok))
    return out[0, len(ids):].tolist()


@torch.no_grad()
def next_token(model: nn.Module, ids: list[int]) -> int:
    """The model's argmax next token after `ids`."""
    device = input_device(model)
    return int(model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].argmax())


def paper_greedy(model: nn.Module, tok, prompt: str, n: int) -> tuple[list[int], list[list[int]]]:
    """The reference's greedy continuation (`_generate`): n argmax tokens, step t predicted from the prompt
    string extended by the decoded tokens 0..t-1 and re-tokenized (special tokens added). Returns the tokens
    and the input ids each was predicted from."""
    tokens, inputs = [], []
    for _ in range(n):
        ids = tok(prompt)["input_ids"]
        y = next_token(model, ids)
        tokens.append(y)
        inputs.append(ids)
        prompt += tok.decode([y])
    return tokens, inputs


class KNEdit(NamedTuple):
    """One request's KN edit: the selected neurons (layers × neurons mask), y_new's and ŷ's ids, c, and the
    seconds its attribution took."""

    neurons: torch.Tensor
    new: list[int]
    old: list[int]
    c: float
    attribution_s: float


def kn_edit(model: nn.Module, tok, request: EditRequest, sites: list[Site], hp: KNConfig) -> KNEdit:
    """Attribution over the request's prompts (the edit prompt; its rephrase too with `refine`), selection,
    and the token lists the column change is made of (module docstring: the two variants)."""
    paper = hp.variant == "paper"
    per_step = hp.per_step if hp.per_step is not None else (
        paper_per_step(getattr(model.config, "model_type", "")) if paper else True)
    if paper:
        new = tok(request.target_new)["input_ids"]
        truth = tok(request.ground_truth)["input_ids"] if request.ground_truth else None
    else:
        new = tok(continuation(request.target_new), add_special_tokens=False)["input_ids"]
        truth = tok(continuation(request.ground_truth), add_special_tokens=False)["input_ids"] if request.ground_truth else None
    prompts = [request.prompt] + ([request.rephrase] if hp.refine and request.rephrase else [])
    if paper:
        old = paper_greedy(model, tok, request.prompt, len(new))[0]
    else:
        old = greedy(model, tok, tok(request.prompt)["input_ids"], len(new))
    # y*: the record's current answer; a record without one is attributed for the model's own (ŷ)
    answer = truth if truth is not None else old
    masks, t0 = [], time.perf_counter()
    for text in prompts:
        ids = tok(text)["input_ids"]
        if not per_step:
            inputs = [ids] * len(answer)
        elif paper:  # the prompt string extended by the greedy argmax tokens so far, re-tokenized
            inputs = paper_greedy(model, tok, text, len(answer))[1]
        else:  # teacher forced
            inputs = [ids + answer[:t] for t in range(len(answer))]
        per_token = [attribute(model, x, y, sites, hp.steps, hp.ig_batch_size) for x, y in zip(inputs, answer)]
        masks.append(select(torch.stack(per_token).mean(0), hp.adaptive_threshold))
    seconds = time.perf_counter() - t0
    neurons = refine(torch.stack(masks), hp.p) if len(masks) > 1 else masks[0]
    return KNEdit(neurons, new, old, c(old) if paper else 1.0, seconds)


@register_method("kn", config=KNConfig)
class KN(EditModule):
    """Knowledge neurons: attribution by integrated gradients, then each selected neuron's output column moves
    from the current answer's embeddings to the new target's. Requests of a batch are attributed on the model
    as it is and their changes summed."""

    def _layers(self) -> list[int]:
        return list(self.hp.layers) if self.hp.layers is not None else list(range(self.cfg.model.n_layers))

    def edited_modules(self) -> list[str]:
        return [self.module_name("mlp_out", layer) for layer in self._layers()]

    def sites(self) -> list[Site]:
        if self.hp.neuron == "pre":
            return [Site(self.module_name("mlp_gate", layer), on_input=False) for layer in self._layers()]
        return [Site(self.module_name("mlp_out", layer), on_input=True) for layer in self._layers()]

    def compute_deltas(self, requests: list[EditRequest]) -> Deltas:
        embed = get_module(self.model, self.cfg.model.templates.embed).weight.detach().float()
        modules = self.edited_modules()
        sites = self.sites()
        changes: dict[int, torch.Tensor] = {}
        for index, request in enumerate(requests, start=self.n_edits):
            self.phase(f"integrated-gradient attribution over {len(sites)} layers, {self.hp.steps} steps")
            edit = kn_edit(self.model, self.tokenizer, request, sites, self.hp)
            column = column_change(embed[edit.new], embed[edit.old], edit.c)
            n = int(edit.neurons.sum())
            self.measured("kn", {"neurons": n, "layers": int(edit.neurons.any(1).sum()), "no_neurons": float(n == 0),
                                 "attribution_s": edit.attribution_s})
            if n == 0:
                self.tag(f"kn.no_neurons.{index}", request.prompt)
            for layer, neuron in edit.neurons.nonzero().tolist():
                if layer not in changes:
                    changes[layer] = torch.zeros(column.shape[0], edit.neurons.shape[1], device=column.device)
                changes[layer][:, neuron] += column
        total: Deltas = {}
        for layer, delta in changes.items():
            name, stored = to_param_layout(self.model, modules[layer], delta)
            total[name] = stored
        return total
