"""The speed benchmarks the README quotes run, and their side-by-side checks hold where they must: in float32
the previous two-pass scoring and one-prefill scoring give every example the same output and gold log-prob."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, data: Path) -> str:
    env = {**os.environ, "EDITHARM_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_eval_benchmark_counts_flops_and_agrees_with_the_two_pass_path(shared_data, tmp_path):
    out = tmp_path / "figures.json"
    text = _run("eval_throughput.py", "--model", "tiny-llama", "--tasks", "rte,samsum,conll03", "--limit", "6",
                "--dtype", "float32", "--batch-tokens", "256", "--two-pass", "4", "--no-log", "--out", str(out),
                data=shared_data)
    figures = json.loads(out.read_text())
    assert "GEMM peak" in text and figures["peak_gflops"]["float32"] > 0 and figures["tflop"] > 0
    for name, fig in figures["tasks"].items():
        assert fig["outputs_equal"] == 1.0 and fig["gold_logprob_max_diff"] < 1e-4, name
        assert 0 < fig["fraction_of_peak"] < 1


@pytest.mark.slow
def test_agreement_benchmark_finds_the_float32_paths_equal(shared_data):
    text = _run("eval_agreement.py", "--model", "tiny-llama", "--tasks", "nq_open", "--limit", "6", data=shared_data)
    pairs = {tuple(part.strip() for part in line.rsplit(" ", 1)[0].split(" vs ")): float(line.split()[-1])
             for line in text.splitlines() if " vs " in line}
    assert len(pairs) == 10 and pairs[("previous/32 f32", "current f32")] == 1.0


@pytest.mark.slow
def test_scale_benchmark_runs_every_phase_at_tiny_shape(shared_data, tmp_path):
    out = tmp_path / "scale.json"
    _run("scale.py", "--shape", "tiny", "--memit-batch", "4", "--limit", "2", "--json", str(out), data=shared_data)
    figures = json.loads(out.read_text())
    assert [r["phase"] for r in figures["rows"]] == ["build", "rome_setup_statistics", "rome_edit", "memit_batch",
                                                     "kn_edit", "mend_edit", "evaluate"]
    assert all(r["seconds"] > 0 and r["host_peak_gib"] > 0 for r in figures["rows"]) and figures["params"] > 0
