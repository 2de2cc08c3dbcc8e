"""The benchmarks' FLOP count equals what torch's FLOP counter sees the model compute."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from editharm import config, models

SPEC = importlib.util.spec_from_file_location("floor", Path(__file__).parents[1] / "benchmarks" / "floor.py")
floor = importlib.util.module_from_spec(SPEC)
sys.modules["floor"] = floor  # dataclasses look their module up
SPEC.loader.exec_module(floor)



@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_forward_flops_match_torch_flop_counter(name):
    """Linear and head FLOPs exactly; attention as torch counts it (the full square), scaled to the causal
    pairs we count: n(n+1)/2 of n² for a prompt, n_new·(n_past+n_new) minus the future for a step."""
    model, _ = models.load(config.load([f"model={name}"]).model, models.cache_root())
    model.set_attn_implementation("eager")  # torch's counter does not see CPU sdpa; eager's QKᵀ and AV are bmm
    f = floor.Forward.of(model)
    n = 37
    ids = torch.randint(0, 200, (1, n))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    counts = {str(op): c for op, c in counter.get_flop_counts()["Global"].items()}
    attention = counts["aten.bmm"]
    dense = counter.get_total_flops() - attention
    assert dense == 2 * f.linear * n + 2 * f.head
    assert attention * (n * (n + 1) / 2) / (n * n) == pytest.approx(f.flops(n) - dense)
    # one decoding step after the prompt attends to all n + 1 keys: torch counts exactly those
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids[:, :1], past_key_values=out.past_key_values, use_cache=True)
    assert counter.get_total_flops() == f.flops(1, n_past=n)


def test_gemm_peak_is_a_rate():
    slow = floor.gemm_peak(torch.float32, shapes=((64, 64, 64),), seconds=0.05)
    assert 0 < slow < 1e5  # GFLOP/s: a 2-core CPU is nowhere near 100 TFLOP/s
