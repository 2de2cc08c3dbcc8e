import dataclasses

import pytest
import torch

from editharm import config, models, stats
from editharm.errors import DataError


@pytest.fixture(scope="module")
def tiny():
    return models.load(config.load(["model=tiny-llama"]).model, models.cache_root())


MODULES = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def _reference(model, module, chunks):
    """Mean of k kᵀ over the module's captured inputs, from a full forward pass."""
    got = []
    handle = model.get_submodule(module).register_forward_pre_hook(lambda m, a: got.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=chunks)
    handle.remove()
    k = torch.cat(got).float()
    return k.T @ k / len(k)


def test_second_moment_matches_captured_inputs_and_early_exit_changes_nothing(tiny):
    model, _ = tiny
    chunks = torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(0))
    early = stats.second_moments(model, MODULES, chunks, batch_size=4, progress=False)
    full = stats.second_moments(model, MODULES, chunks, batch_size=4, early_exit=False, progress=False)
    for m in MODULES:
        torch.testing.assert_close(early[m], _reference(model, m, chunks), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(early[m], full[m])
        assert early[m].shape == (128, 128) and torch.allclose(early[m], early[m].T)


def test_early_exit_skips_the_layers_above(tiny):
    model, _ = tiny
    calls = []
    handle = model.get_submodule("model.layers.1").register_forward_hook(lambda *a: calls.append(1))
    try:
        stats.second_moments(model, MODULES[:1], torch.zeros(2, 8, dtype=torch.long), progress=False)
        assert calls == []
        stats.second_moments(model, MODULES[:1], torch.zeros(2, 8, dtype=torch.long), early_exit=False, progress=False)
        assert calls == [1]
    finally:
        handle.remove()


def test_cache_key_changes_with_every_input():
    key = stats.StatsKey("m@sha", "model.layers.0.mlp.down_proj", "wikitext_test", "abc", 1000, 128)
    for field in dataclasses.fields(key):
        value = getattr(key, field.name)
        other = dataclasses.replace(key, **{field.name: value + 1 if isinstance(value, int) else value + "x"})
        assert other.digest() != key.digest(), field.name
    assert dataclasses.replace(key).digest() == key.digest()


def test_cached_statistics_are_reused(tiny, data_dir, tmp_path, monkeypatch):
    model, tok = tiny
    corpus = stats.load_corpus(data_dir)
    first, paths = stats.cached_second_moments(model, tok, MODULES, corpus, 256, 32, "tiny@seed0", tmp_path)
    assert all(p.exists() for p in paths.values())
    monkeypatch.setattr(stats, "second_moments", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    again, _ = stats.cached_second_moments(model, tok, MODULES, corpus, 256, 32, "tiny@seed0", tmp_path)
    assert all(torch.equal(first[m], again[m]) for m in MODULES)


def test_corpus_is_never_the_probe_text_and_needs_a_data_dir(data_dir):
    corpus = stats.load_corpus(data_dir)
    probe = (data_dir / "wikitext" / "wikitext-2_valid.tokens").read_text()
    assert corpus.texts and not any(t in probe for t in corpus.texts[:5])
    with pytest.raises(DataError, match="EDITHARM_DATA_DIR"):
        stats.load_corpus(None)
