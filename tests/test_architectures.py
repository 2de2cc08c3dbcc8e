"""Any Hugging Face causal LM of a family in `configs/model_types.yaml`, with no model YAML: `model=hf:<folder>`
edits through the CLI with every method; layer defaults follow the depth rule; a family outside the table is
one clear error."""
from pathlib import Path

import pytest

from editharm import config, models
from editharm.runs import edit
from tests.conftest import client
from tests.test_cli import _fails

FAMILIES = sorted(config.model_types())
BASE = ["tasks.names=[]", "probe.perplexity=false", "tracking.log_checkpoint=false", "tracking.log_model=false",
        "edits.n=2", "edits.eval_every=2"]
VALUE = ["method.v_num_grad_steps=3", "method.context_template_length_params=[[3,2]]", "method.mom2_max_len=32"]
METHODS = {"rome": VALUE, "ft": ["method.steps=3"], "memit": VALUE, "kn": ["method.steps=2", "method.neuron=post"],
           "mend": ["method.train.max_iters=4", "method.train.val_every=4", "method.train.max_minutes=2",
                    "method.train.n_val=1", "method.train.accumulate=1", "method.rank=8", "method.modules=[mlp_in,mlp_out]"]}
ALL_METHODS = {"qwen2", "gpt2", "gpt_neox", "phi3"}  # a llama layout, Conv1D, a third naming, a fused gate


def save_tiny(kind: str, folder: Path) -> Path:
    """A seeded random 2-layer model of family `kind` with the byte tokenizer, saved as a checkpoint folder."""
    dims = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4,
            "max_position_embeddings": 512}
    spec = config.model_config({"name": kind, "source": "tiny", "n_layers": 2, "templates": config.model_types()[kind],
                                "architecture": {"model_type": kind, **dims}})
    model, tok = models.tiny(spec)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {kind: save_tiny(kind, root / kind) for kind in FAMILIES}


CASES = [(kind, method) for kind in FAMILIES for method in METHODS if method in ("rome", "ft") or kind in ALL_METHODS]


@pytest.mark.parametrize("kind,method", CASES)
def test_every_family_edits_with_no_model_yaml(env, checkpoints, kind, method):
    run_id = edit([f"model=hf:{checkpoints[kind]}", f"method={method}", *METHODS[method], *BASE])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == f"local--{kind}"
    deltas = [k for k in run.data.metrics if k.startswith("delta/") and k.endswith("/final_fro")]
    assert deltas and all(run.data.metrics[k] > 0 for k in deltas)  # the edit changed weights...
    templates = config.model_types()[kind]
    allowed = [templates[t].split("{}")[1] + ".weight" for t in (("mlp_in", "mlp_out") if method == "mend" else ("mlp_out",))]
    assert all(k.removesuffix("/final_fro").endswith(tuple(allowed)) for k in deltas), deltas  # ...the ones it names


def test_layer_rules_give_the_published_llama_2_7b_layers():
    """The depth rule at 32 layers equals the paper's Llama-2-7B per-model files (and EasyEdit's FT-L/MEND)."""
    for method in ("rome", "memit", "mend"):
        shipped = config.load([f"method={method}", "model=llama-2-7b"]).method
        rule = config.layer_defaults(method, 32)
        assert rule and all(rule[k] == getattr(shipped, k) for k in rule), method
    assert config.layer_defaults("ft", 32) == {"layers": [21]} and config.layer_defaults("kn", 32) == {}


def test_hf_models_take_the_rule_and_their_own_dtype(checkpoints):
    cfg = config.load([f"model=hf:{checkpoints['qwen2']}", "method=memit"])
    assert (cfg.model.n_layers, cfg.method.layers, cfg.model.dtype) == (2, [0], "float32")
    assert config.load([f"model=hf:{checkpoints['qwen2']}", "method=mend"]).method.layers == [0, 1]
    assert config.load([f"model=hf:{checkpoints['qwen2']}", "method=rome", "method.layer=1"]).method.layer == 1
    assert config.load([f"model=hf:{checkpoints['qwen2']}", "model.dtype=bfloat16"]).model.dtype == "bfloat16"


def test_a_family_outside_the_table_is_one_clear_error(capsys, env, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("bloom", vocab_size=257, hidden_size=32, n_layer=2,
                                                                  n_head=4))
    model.save_pretrained(tmp_path / "bloom")
    _fails(capsys, ["edit", f"model=hf:{tmp_path / 'bloom'}", "method=rome", *BASE],
           "model_type 'bloom' has no module templates", "model_types.yaml", "llama")


def test_a_fused_gate_says_so(capsys, env, checkpoints):
    _fails(capsys, ["edit", f"model=hf:{checkpoints['phi3']}", "method=kn", *BASE], "no separate gate projection",
           "method.neuron=post")
