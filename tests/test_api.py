"""The Python API (`import editharm`): in-memory edits equal what a run logs, bitwise reverts, evaluation equal to
`editharm evaluate`, MLflow never imported, and the layering (no import circle; methods and tasks never log)."""
import ast
import json
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import editharm
from editharm import config, data, deltas as D
from editharm.errors import ConfigError, DataError
from editharm.runs import edit, evaluate as cli_evaluate
from tests.conftest import client, read_artifact

BASE = ["tasks.names=[]", "probe.perplexity=false", "tracking.log_checkpoint=false", "tracking.log_model=false",
        "edits.n=2", "edits.eval_every=2"]
VALUE = ["v_num_grad_steps=5", "context_template_length_params=[[3,5]]", "mom2_max_len=32"]
BATCHES = (["edits.mode=batch-sequential", "edits.n=4", "edits.batch_size=2", "edits.eval_every=4"],
           {"mode": "batch-sequential", "batch_size": 2})
CASES = {  # model, method, method keys, guard keys, (run's edit keys, Editor.edit's keywords)
    "rome": ("tiny-llama", "rome", VALUE, [], ([], {})),
    "rome-rect": ("tiny-llama", "rome", VALUE, ["name=rect", "k=0.3"], ([], {})),
    "rome-magnitude": ("tiny-llama", "rome", VALUE, ["name=magnitude", "k=0.3"], ([], {})),
    "memit-gpt2-batches": ("tiny-gpt2", "memit", ["layers=[0]", *VALUE], [], BATCHES),
    "memit-pca": ("tiny-llama", "memit", VALUE, ["name=pca", "rank=2"], (["edits=zsre-batch", "edits.n=2"],
                                                                          {"mode": "batch"})),
    "alphaedit-random": ("tiny-llama", "memit", ["nullspace=true", *VALUE], ["name=random", "k=0.5"], ([], {})),
    "kn": ("tiny-llama", "kn", ["steps=3"], [], ([], {})),
    "ft-gpt2-nullspace": ("tiny-gpt2", "ft", ["layers=[0]", "steps=3", "norm_constraint=null"],
                          ["name=nullspace", "mom2_max_len=32"], ([], {})),
    "mend": ("tiny-llama", "mend", [], [], ([], {})),
}


@pytest.fixture
def mend_network(env, tmp_path) -> str:
    """A tiny-llama MEND hypernetwork trained for a few steps, as a folder."""
    from editharm import mend_runs, models
    from editharm.runs import _model

    cfg = config.load(["method=mend", "model=tiny-llama", "method.train.max_iters=4", "method.train.val_every=4"])
    model, tok = _model(cfg)
    run_id = mend_runs.train(cfg, model, tok)
    return str(read_artifact(run_id, "mend", tmp_path / "net"))


def _as_python(keys: list[str]) -> dict:
    return OmegaConf.to_container(OmegaConf.from_dotlist(keys))


@pytest.mark.parametrize("case", sorted(CASES))
def test_in_memory_edit_equals_the_deltas_and_metrics_a_run_logs(env, tmp_path, request, case):
    """Same config, same requests: the Editor's Σ ΔW and edit metrics equal the run's, and after `revert` the
    weights are bit for bit the loaded ones and a second `edit` gives the same ΔW again (AlphaEdit's protected
    keys and the random guard's draws start afresh)."""
    model_name, method, keys, guard, (run_keys, mode) = CASES[case]
    if method == "mend":
        keys = [f"hypernetwork={request.getfixturevalue('mend_network')}"]
    argv = [f"model={model_name}", f"method={method}", *[f"method.{k}" for k in keys],
            *([f"guard={_as_python(guard)['name']}"] + [f"guard.{k}" for k in guard[1:]] if guard else []), *BASE,
            *run_keys]
    run_id = edit(argv)
    logged = D.load(read_artifact(run_id, "deltas/deltas.safetensors", tmp_path / "logged"))
    n = config.load(argv).edits.n
    history = {k: v for k, v in client().get_run(run_id).data.metrics.items() if k.startswith("edit/zsre/")}

    model, tok = editharm.load_model(model_name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    requests, _ = data.load_requests(config.load(argv).edits, env)
    editor = editharm.Editor(model, tok, method=method, guard=_as_python(guard) or None, **_as_python(keys))
    for attempt in range(2):
        steps = editor.edit([dataclasses.asdict(r) for r in requests], **mode)  # plain dicts, as a notebook's
        assert sum(len(s.deltas) > 0 for s in steps) == len(steps) and all(s.refused is None for s in steps)
        assert set(editor.deltas) == set(logged)
        for name, delta in logged.items():
            assert torch.equal(editor.deltas[name], delta), (attempt, name)
        if attempt == 0:
            scores = {f"edit/zsre/{k}": v for k, v in editor.metrics().scores["edit"].items()}
            assert len(editor.requests) == n and len(history) == 3  # zsRE's protocol: token accuracies
            assert {k: scores[k] for k in history} == history  # the run's last evaluation, to the bit
        editor.revert()
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # bit for bit


def test_modes_revert_and_the_context_managers(env):
    model, tok = editharm.load_model("tiny-llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reqs = [{"prompt": "The capital of Kenya is", "subject": "Kenya", "target_new": " Paris",
             "locality_prompt": "The sky is", "locality_answer": " blue"},
            {"prompt": "Bob plays the", "subject": "Bob", "target_new": " violin"}]
    unchanged = lambda: all(torch.equal(before[n], p) for n, p in model.named_parameters())  # noqa: E731
    with editharm.Editor(model, tok, method="ft", layers=[0, 1], steps=3, norm_constraint=None, lr=0.05) as editor:
        assert editor.metrics(reqs).scores["edit"]["locality_unchanged"] == 1.0  # nothing edited yet
        single = editor.edit(reqs, mode="single")
        assert unchanged() and editor.deltas == {} and len(single) == 2
        with editor.applied(single[0].deltas):
            assert not unchanged()
        assert unchanged()
        batch = editor.edit(reqs, mode="batch")
        assert len(batch) == 1 and not unchanged()
        with editor.unedited():
            assert unchanged()
        scores = editor.metrics().scores["edit"]
        assert 0 <= scores["locality_unchanged"] <= 1 and scores["efficacy_token_acc"] > 0
        editor.edit(reqs, mode="batch-sequential", batch_size=1)
        assert len(editor.requests) == 4 and len(editor.steps) == 5
    assert unchanged()  # the context manager reverted every kept edit


def test_bad_input_is_one_clear_error(env):
    model, tok = editharm.load_model("tiny-llama")
    with pytest.raises(ConfigError, match="unknown method 'nope'; valid: .*rome"):
        editharm.Editor(model, tok, method="nope")
    with pytest.raises(ConfigError, match="unknown config key 'method.lyer'"):
        editharm.Editor(model, tok, method="rome", lyer=0)
    with pytest.raises(ConfigError, match=r"layer\(s\) \[7\] out of range .* 2 layers"):
        editharm.Editor(model, tok, method="rome", layer=7)
    editor = editharm.Editor(model, tok, method="ft", layers=[0])
    with pytest.raises(DataError, match="request 0: subject 'Mars' does not occur"):
        editor.edit([{"prompt": "The capital of Kenya is", "subject": "Mars", "target_new": " Paris"}])
    with pytest.raises(DataError, match="unknown field"):
        editor.edit([{"prompt": "Kenya", "subject": "Kenya", "target": " Paris"}])
    with pytest.raises(ConfigError, match="mode='sequential' is not valid"):
        editor.edit([{"prompt": "Kenya", "subject": "Kenya", "target_new": " x"}], mode="sequential")
    with pytest.raises(ConfigError, match="batch_size must be an int >= 1, got 0"):
        editor.edit([{"prompt": "Kenya", "subject": "Kenya", "target_new": " x"}], "batch-sequential", 0)
    with pytest.raises(ConfigError, match="guard must be a guard name or a dict"):
        editharm.Editor(model, tok, method="ft", guard=3)
    with pytest.raises(DataError, match="no edit has been kept yet"):
        editor.metrics()


def test_any_model_object_is_read_through_its_model_type(env):
    """A model built in memory (not by `load_model`) is edited through `configs/model_types.yaml` (every family there
    through the CLI: tests/test_architectures.py), with a weight fingerprint in its cache key."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = editharm.load_model("tiny-llama")[1]
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    editor = editharm.Editor(model, tok, method="rome", layer=0, **_as_python(VALUE))
    (step,) = editor.edit({"prompt": "The capital of Kenya is", "subject": "Kenya", "target_new": " Paris"})
    assert list(step.deltas) == ["model.layers.0.mlp.down_proj.weight"]
    assert editor.cfg.model.name == "memory--qwen2" and "#weights=" in editor.cfg.model.path


def test_evaluate_equals_the_cli_and_pairs_with_a_baseline(env, tmp_path):
    argv = ["model=tiny-llama", "tasks.names=[rte,sst2,nq_open]", "tasks.limit=6"]
    run_id = cli_evaluate(argv)
    logged = json.loads(read_artifact(run_id, "evaluations/edits_0.json", tmp_path).read_text())  # every figure
    assert client().get_run(run_id).data.metrics == {k: logged[k] for k in client().get_run(run_id).data.metrics}
    model, tok = editharm.load_model("tiny-llama")
    got = editharm.evaluate(model, tok, tasks=["rte", "sst2", "nq_open"], limit=6)
    ours = {k: v for k, v in got.metrics().items() if not k.startswith("time/")}
    assert ours and set(ours) <= set(logged)
    assert ours == pytest.approx({k: logged[k] for k in ours}, abs=0, rel=1e-12)
    assert got.scores["rte"]["accuracy"] == logged["ability/rte/accuracy"] and len(got.rows["rte"]) == got.constants["rte"]["n"]
    with editharm.Editor(model, tok, method="ft", layers=[0, 1], lr=0.05, steps=5, norm_constraint=None) as editor:
        editor.edit([{"prompt": "Premise: the cat sat. Hypothesis: it sat. Answer", "subject": "cat",
                      "target_new": " false"}] * 2)
        paired = editharm.evaluate(model, tok, tasks=["rte", "sst2", "nq_open"], limit=6, baseline=got)
        alone = editharm.evaluate(model, tok, tasks=["rte", "sst2", "nq_open"], limit=6)
    for task, score in (("rte", "accuracy"), ("sst2", "gold_logprob"), ("nq_open", "gold_logprob")):
        delta = paired.scores[task][f"{score}_delta"]
        assert delta == pytest.approx(alone.scores[task][score] - got.scores[task][score], abs=1e-12)
        assert paired.scores[task][f"{score}_delta_ci_low"] <= delta <= paired.scores[task][f"{score}_delta_ci_high"]
    assert paired.scores["sst2"]["gold_logprob_delta"] != 0  # the edit moved something
    frame = paired.to_pandas()
    assert list(frame.index) == ["rte", "sst2", "nq_open", "perplexity"] and "accuracy_delta_ci_low" in frame.columns
    with pytest.raises(ConfigError, match="baseline: rte scored other examples"):
        editharm.evaluate(model, tok, tasks=["rte"], limit=1, baseline=got)
    with pytest.raises(ConfigError, match="baseline: boolq is not in the baseline"):
        editharm.evaluate(model, tok, tasks=["boolq"], limit=6, baseline=got)


def test_runs_only_when_asked_for(env, tmp_path):
    (tmp_path / "mlflow.db").unlink()  # the fixture's copied empty store: this test checks that none is created
    model, tok = editharm.load_model("tiny-llama")
    untracked = editharm.evaluate(model, tok, tasks=["sst2"], limit=4, perplexity=False)
    with editharm.Editor(model, tok, method="ft", layers=[0]) as editor:
        editor.edit({"prompt": "The capital of Kenya is", "subject": "Kenya", "target_new": " Paris"})
    assert untracked.run_id is None and not (tmp_path / "mlflow.db").exists()  # no store was even created
    got = editharm.evaluate(model, tok, tasks=["sst2"], limit=4, perplexity=False, track=True)
    run = client().get_run(got.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "evaluate"
    assert run.data.metrics == pytest.approx(got.headline()) and len(got.headline()) < len(got.metrics())
    reqs = {"prompt": "The capital of Kenya is", "subject": "Kenya", "target_new": " Paris"}
    with editharm.Editor(model, tok, method="ft", layers=[0], track="api-ft") as editor:
        editor.edit([reqs, reqs])
        scored = editor.metrics()
        kept = {n: d.clone() for n, d in editor.deltas.items()}
    run = client().get_run(scored.run_id)
    assert (run.info.status, run.info.run_name, run.data.tags["method"]) == ("FINISHED", "api-ft", "ft")
    assert [m.step for m in client().get_metric_history(run.info.run_id, "time/edit_s")] == [1, 2]
    assert "edit/requests/efficacy_token_acc" in run.data.metrics
    logged = D.load(read_artifact(run.info.run_id, "deltas/deltas.safetensors", tmp_path / "d"))
    assert all(torch.equal(kept[n], logged[n]) for n in kept)
    with pytest.raises(DataError):
        with editharm.Editor(model, tok, method="ft", layers=[0], track="fails") as editor:
            editor.edit([reqs])
            editor.edit([{**reqs, "subject": "Mars"}])
    (failed,) = client().search_runs([run.info.experiment_id], "attributes.run_name = 'fails'")
    assert failed.info.status == "FAILED" and [m.step for m in client().get_metric_history(
        failed.info.run_id, "time/edit_s")] == [1]  # what it logged stays


def test_import_and_edit_without_mlflow(env):
    """`import editharm`, an in-memory edit and an evaluation in a process where MLflow looks uninstalled (`import
    mlflow` fails, `find_spec` finds nothing)."""
    code = """
import sys
sys.modules["mlflow"] = None
import editharm
assert "torch" not in sys.modules  # the package itself is light: the command line starts at once
model, tok = editharm.load_model("tiny-llama")
editor = editharm.Editor(model, tok, method="rome", v_num_grad_steps=3, context_template_length_params=[[3, 2]])
editor.edit({"prompt": "The capital of Kenya is", "subject": "Kenya", "target_new": " Paris"})
got = editharm.evaluate(model, tok, tasks=["sst2"], limit=4, perplexity=False)
assert sys.modules["mlflow"] is None and not any(m.startswith("mlflow.") for m in sys.modules), "mlflow imported"
print("edited", list(editor.deltas), got.scores["sst2"]["accuracy"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "edited ['model.layers.0.mlp.down_proj.weight']" in out.stdout


def _imports(root: Path) -> dict[str, set[str]]:
    """Module -> the `editharm` modules it imports (at any depth of the file: lazy imports count)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        edges[name] = {m for m in found if m in modules or m.split(".")[0] == "mlflow"}
    return edges


def test_no_import_circle_and_methods_and_tasks_never_log():
    edges = _imports(Path(editharm.__file__).parent)
    for name, targets in edges.items():
        if name.startswith(("editharm.methods", "editharm.tasks")):
            assert not {t for t in targets if t == "editharm.tracking" or t.startswith("mlflow")}, name
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt == "editharm":  # the package itself (its __init__ runs first anyway): not an edge of the layering
                continue
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt in edges and not state.get(nxt):
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(edges):
        if not state.get(name):
            visit(name, [name])
