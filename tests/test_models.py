import pytest
import torch

from editharm import config, models
from editharm.errors import ModelError


def _cfg(name, *over):
    return config.load([f"model={name}", *over]).model


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_models_are_seeded_and_leave_global_rng_alone(name):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, tok = models.load(_cfg(name), models.cache_root())
    assert torch.equal(torch.rand(3), expected)
    b, _ = models.load(_cfg(name), models.cache_root())
    c, _ = models.load(_cfg(name, "model.seed=1"), models.cache_root())
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    assert a.config.num_hidden_layers == 2 and len(tok) == a.config.vocab_size


def test_byte_tokenizer_roundtrip():
    tok = models.byte_tokenizer()
    text = "Danielle Darrieux parle français — 12€"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and tok.decode(ids) == text


def test_identity_changes_with_weights_inputs():
    assert models.identity(_cfg("tiny-llama")) != models.identity(_cfg("tiny-llama", "model.seed=1"))
    assert models.identity(_cfg("tiny-llama")) != models.identity(_cfg("tiny-llama", "model.architecture.hidden_size=32"))
    assert models.identity(_cfg("gpt2-xl")) != models.identity(_cfg("gpt2-xl", "model.revision=abc"))


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="model.path"):
        models.load(_cfg("gpt2-xl", f"model.path={tmp_path / 'absent'}"), models.cache_root())


def test_missing_embedded_wheel_is_a_clear_error(tmp_path):
    cfg = _cfg("smollm2-135m", "model.path=not-an-installed-dist:x.gguf")
    with pytest.raises(ModelError, match="--no-deps"):
        models.load(cfg, tmp_path)


@pytest.mark.slow
def test_embedded_smollm2_converts_once_and_knows_paris():
    model, tok = models.load(_cfg("smollm2-135m"), models.cache_root())
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert (models.embedded_checkpoint(_cfg("smollm2-135m"), models.cache_root()) / "model.safetensors").exists()
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        top = model(ids).logits[0, -1].argmax()
    assert tok.decode(top).strip() == "Paris"  # rank 1 in the reference measurement
