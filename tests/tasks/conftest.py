"""Tiny models for the inference tests, and the obvious one-example-at-a-time scoring they are checked against."""
import pytest
import torch

from editharm import config, models


@pytest.fixture(params=["tiny-llama", "tiny-gpt2"], scope="module")
def tiny(request):
    return models.load(config.load([f"model={request.param}"]).model, models.cache_root())


def naive_logps(model, tok, context: str, continuation: str) -> list[float]:
    """log P of each continuation token, from one unpadded pass over context + continuation."""
    ctx = tok(context)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
    return [float(logp[len(ctx) - 1 + t, c]) for t, c in enumerate(cont)]
