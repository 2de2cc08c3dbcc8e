"""Our ROME equals the reference implementation's (EasyEdit, the paper's code) on the embedded SmolLM2.

One of the fixture's eight cases: 6, a prompt with several tokens after the subject (the cases that once
drifted to 1e-4: the output head run on a slice of the positions) and all 25 loss evaluations;
`python benchmarks/rome_parity.py` checks all eight.

The tolerance is float32's rounding across CPUs, not ours against the reference's code: the same code gives ΔW
within 5.3e-6 of EasyEdit's on the machine where the fixture was made and 2.5-7.7e-5 (case 6: 3.2e-5) on an
AVX2-only AMD EPYC (2026-12-06; case 0 the same at the commit that first reached 5.3e-6: the machine, not the
code). The drift this test was written for (the output head on a slice of the positions) was 1.7e-4 on case 6,
and the loss-evaluation count below is exact on every machine."""
import importlib.util
from pathlib import Path

import pytest

from editharm import models

SPEC = importlib.util.spec_from_file_location("rome_parity", Path(__file__).parents[2] / "benchmarks" / "rome_parity.py")
rome_parity = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(rome_parity)

TOLERANCE = rome_parity.TOLERANCE
CASES = (6,)  # the other seven in benchmarks/rome_parity.py (about 30 s of CI time each)


@pytest.fixture(scope="module")
def reference():
    readme, ref, requests = rome_parity.load_fixture()
    cfg = rome_parity.fixture_config(readme)
    model, tok = models.load(cfg.model, models.cache_root(cfg.cache_dir))
    return readme, ref, requests, cfg, model, tok


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_rome_matches_the_reference_in_float32(reference, case):
    readme, ref, requests, cfg, model, tok = reference
    assert cfg.method.v_autocast is None and len(cfg.method.context_templates) == 21
    ours = rome_parity.vectors(model, tok, cfg, requests[case], cfg.method.context_templates)
    a = rome_parity.agreement(ours, ref, case)
    assert a["k_star_rel"] < 1e-4 and a["u_rel"] < 1e-4
    assert a["v_minus_Wk_rel"] < TOLERANCE and a["dW_rel"] < TOLERANCE, a
    expected = next(c["n_loss_evals"] for c in readme["cases"] if c["case_id"] == case)
    assert len(ours.trace.losses) == expected and ours.trace.updates == expected - 1
