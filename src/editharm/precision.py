"""Which precision computes fast where: the `auto` dtypes (`tasks.dtype`, `method.v_autocast`) resolved against
the hardware a run computes on.

bfloat16 halves the bytes moved and doubles matrix throughput where the hardware multiplies it natively (NVIDIA GPUs
from Ampere on; x86 CPUs with AVX512-BF16 or AMX; Arm CPUs with the BF16 extension). Elsewhere PyTorch falls back
to slow kernels: on an AVX2-only AMD EPYC, bfloat16 matrix products at SmolLM2's prefill shape (4096×576×1536) ran
at 1.2 GFLOP/s against 150 in float32 (2026-12-06), so `auto` means float32 there."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

AUTO = "auto"
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 `flags`, Arm `Features` (/proc/cpuinfo)


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (`flags` on x86, `Features` on Arm) from /proc/cpuinfo; empty where it is absent."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(value.split())
    return frozenset(found)


def native_bf16(device: str, flags: frozenset[str] | None = None) -> bool:
    """Whether `device` (a torch device: `cpu`, `cuda`, `cuda:N`, `mps`) multiplies bfloat16 matrices natively."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device == "cpu":
        return bool((cpu_flags() if flags is None else flags) & BF16_CPU_FLAGS)
    return False


def resolve(key: str, dtype: str | None, device: str, otherwise: str | None,
            flags: frozenset[str] | None = None) -> str | None:
    """The dtype `key` computes in on `device`: `auto` is bfloat16 where it is native and `otherwise` elsewhere; an
    explicit bfloat16 where it is not native is kept, with a warning that it will be slow."""
    if dtype == AUTO:
        return "bfloat16" if native_bf16(device, flags) else otherwise
    if dtype == "bfloat16" and not native_bf16(device, flags):
        log.warning("%s=bfloat16 on %s: this hardware has no native bfloat16 matrix products (no AVX512-BF16, AMX or "
                    "Ampere-class GPU), so bfloat16 runs much slower than float32 here; %s=auto picks float32",
                    key, device, key)
    return dtype
