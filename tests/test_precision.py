"""`auto` precision: bfloat16 only where the hardware multiplies it natively (an AVX2-only CPU runs it ~100x slower
than float32), read from the CPU's flags; explicit choices kept; what a run resolves is in its config."""
import logging

import pytest

from editharm import config, precision
from editharm.config import ConfigError

X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
X86_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo():
    assert precision.cpu_flags(X86_AVX2) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert {"avx512_bf16", "amx_bf16"} <= precision.cpu_flags(X86_AMX)
    assert "bf16" in precision.cpu_flags(ARM_BF16) and "0x41" not in precision.cpu_flags(ARM_BF16)


@pytest.mark.parametrize("cpuinfo, native", [(X86_AVX2, False), (X86_AMX, True), (ARM_BF16, True), ("", False)])
def test_auto_is_bfloat16_only_where_the_cpu_has_it(cpuinfo, native):
    flags = precision.cpu_flags(cpuinfo)
    assert precision.native_bf16("cpu", flags) is native
    assert precision.resolve("tasks.dtype", "auto", "cpu", "float32", flags) == ("bfloat16" if native else "float32")
    assert precision.resolve("method.v_autocast", "auto", "cpu", None, flags) == ("bfloat16" if native else None)
    assert precision.native_bf16("mps", flags) is False


def test_explicit_choices_are_kept_and_a_slow_bfloat16_is_warned_about(caplog):
    slow = precision.cpu_flags(X86_AVX2)
    with caplog.at_level(logging.WARNING, logger="editharm.precision"):
        assert precision.resolve("tasks.dtype", "float32", "cpu", "float32", slow) == "float32"
        assert not caplog.records
        assert precision.resolve("tasks.dtype", "bfloat16", "cpu", "float32", slow) == "bfloat16"
    assert "tasks.dtype=bfloat16 on cpu" in caplog.text and "tasks.dtype=auto picks float32" in caplog.text


def test_a_run_config_carries_the_resolved_dtypes():
    native = precision.native_bf16("cpu")
    cfg = config.load(["model=tiny-llama", "method=rome", "device=cpu", "method.v_autocast=auto"])
    assert cfg.tasks.dtype == ("bfloat16" if native else "float32")
    assert cfg.method.v_autocast == ("bfloat16" if native else None)
    cfg = config.load(["model=tiny-llama", "method=rome", "device=cpu", "tasks.dtype=float16"])
    assert cfg.tasks.dtype == "float16" and cfg.method.v_autocast is None
    with pytest.raises(ConfigError, match="method.v_autocast='bf16' is not valid; choose one of: null"):
        config.load(["model=tiny-llama", "method=rome", "method.v_autocast=bf16"])
