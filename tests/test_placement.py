"""`model.device_map`: a model spread by accelerate (here over the CPU and disk offload, the one split a CPU-only
machine has) is edited where its weights live, equal to the unsplit model's edit, and scored in place; an edit of
an offloaded weight and a bad map fail before compute."""
import pytest
import torch

import editharm
from editharm import config, deltas as D, placement
from editharm.errors import ConfigError, ModelError
from editharm.runs import edit
from tests.conftest import client, read_artifact

# tiny-llama: layer 0 on the CPU (ROME edits it: configs/method/rome/tiny-llama.yaml), layer 1 offloaded to disk
SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
         "model.rotary_emb": "cpu", "lm_head": "cpu"}
REQUEST = {"prompt": "The capital of Peru is", "subject": "Peru", "target_new": "Lima"}
HP = {"v_num_grad_steps": 5, "context_template_length_params": [[3, 5]]}
EDITED = "model.layers.0.mlp.down_proj.weight"


def test_an_edit_of_a_spread_model_equals_the_unsplit_models_and_lands_on_its_weights(env):
    whole, tok = editharm.load_model("tiny-llama")
    spread, _ = editharm.load_model("tiny-llama", device_map=SPLIT)
    assert spread.get_parameter("model.layers.1.mlp.down_proj.weight").device.type == "meta"  # offloaded to disk
    before = spread.get_parameter(EDITED).detach().clone()
    ids = tok(["Peru is a country", "The capital of Peru is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(spread(**ids).logits, whole(**ids).logits)  # the hooks run layer 1 from disk

    steps = {}
    for name, model in (("whole", whole), ("spread", spread)):
        editor = editharm.Editor(model, tok, "rome", **HP)
        steps[name] = editor.edit([REQUEST])[0]
    assert set(steps["spread"].deltas) == {EDITED}
    torch.testing.assert_close(steps["spread"].deltas[EDITED], steps["whole"].deltas[EDITED])
    torch.testing.assert_close(spread.get_parameter(EDITED).detach(), before + steps["spread"].deltas[EDITED])
    with torch.no_grad():  # the edited spread model computes what the edited unsplit one does
        torch.testing.assert_close(spread(**ids).logits, whole(**ids).logits)

    spread_scores = editharm.evaluate(spread, tok, tasks=["sst2", "samsum"], limit=4).scores  # in place, float32
    whole_scores = editharm.evaluate(whole, tok, tasks=["sst2", "samsum"], limit=4, dtype="float32").scores
    for task in ("sst2", "samsum"):
        assert spread_scores[task]["gold_logprob"] == pytest.approx(whole_scores[task]["gold_logprob"], rel=1e-5)
    assert spread_scores["perplexity"] == pytest.approx(whole_scores["perplexity"], rel=1e-5)


def test_an_offloaded_edit_target_fails_before_compute(env):
    spread, tok = editharm.load_model("tiny-llama", device_map=SPLIT)
    with pytest.raises(ModelError, match="offloads model.layers.1.mlp.down_proj.weight.*map the edited layers"):
        editharm.Editor(spread, tok, "rome", layer=1, **HP)


def test_a_run_on_a_spread_model_goes_through_lightning_in_place(env, tmp_path):
    """The CLI's Trainer leaves the map as it is (its default strategy would move every module to one device)."""
    split = "{" + ", ".join(f"{k}: {v}" for k, v in SPLIT.items()) + "}"
    run_id = edit(["model=tiny-llama", f"model.device_map={split}", "method=rome", "method.v_num_grad_steps=5",
                   "method.context_template_length_params=[[3,5]]", "edits.n=2", "edits.eval_every=2",
                   "tasks.names=[sst2]", "tasks.limit=4", "probe.perplexity=false", "tasks.dtype=float32",
                   "tracking.log_model=false"])
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.device_map.model.layers.1"] == "disk"
    # the checkpoint holds the edited weight and the offloaded layer's own (read back from disk)
    from editharm.runs import checkpoint
    saved, _ = editharm.load_model(str(checkpoint(run_id, str(tmp_path / "ckpt"), None)))
    whole, _ = editharm.load_model("tiny-llama")
    delta = D.load(read_artifact(run_id, "deltas/deltas.safetensors", tmp_path / "d"))[EDITED]
    torch.testing.assert_close(saved.get_parameter(EDITED), whole.get_parameter(EDITED) + delta)
    layer1 = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(saved.get_parameter(layer1), whole.get_parameter(layer1))


@pytest.mark.parametrize("keys, message", [
    (["model.device_map=auto", "device=cpu"], "places the model itself; device=cpu conflicts"),
    (["model.device_map=everywhere"], "model.device_map='everywhere' is not valid; choose one of: auto, balanced"),
    (["model.device_map={model.layers.0: gpu}"], "a device is a GPU index, cuda:N, cpu, mps or disk"),
    (["model.device_map={model.layers.0:cpu}"], "write each entry as `module: device`, with a space"),
])
def test_a_bad_device_map_is_one_clear_error(keys, message):
    with pytest.raises(ConfigError, match=message):
        config.load(["model=tiny-llama", *keys])


def test_the_input_device_is_where_the_embeddings_run():
    model, _ = editharm.load_model("tiny-llama", device_map=SPLIT)
    assert placement.input_device(model) == torch.device("cpu") and placement.is_spread(model)
