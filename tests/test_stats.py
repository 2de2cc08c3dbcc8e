"""Key statistics as the reference computes them: texts (not tokens) sampled by its seeded shuffle, each encoded
with the tokenizer's special tokens and truncated to the model's context, padding masked out of C = E[k kᵀ]."""
import dataclasses

import pytest
import torch
from tokenizers import processors

from editharm import config, guards, models, stats
from editharm.batching import length_batches
from editharm.errors import DataError


@pytest.fixture(scope="module")
def tiny():
    return models.load(config.load(["model=tiny-llama"]).model, models.cache_root())


MODULES = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def _reference(model, module, samples):
    """Mean of k kᵀ over the module's inputs, each sample run alone (no padding) through a full forward pass."""
    got = []
    handle = model.get_submodule(module).register_forward_pre_hook(lambda m, a: got.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for s in samples:
            model(input_ids=torch.tensor([s]))
    handle.remove()
    k = torch.cat(got).float()
    return k.T @ k / len(k)


def test_second_moment_masks_padding_and_early_exit_changes_nothing(tiny):
    model, _ = tiny
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (16, 3, 9, 1, 12)]
    assert len(length_batches(samples, batch_tokens=32)) > 1  # several padded batches
    early = stats.second_moments(model, MODULES, samples, batch_tokens=32, progress=False)
    full = stats.second_moments(model, MODULES, samples, batch_tokens=32, early_exit=False, progress=False)
    for m in MODULES:
        torch.testing.assert_close(early[m], _reference(model, m, samples), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(early[m], full[m])
        assert early[m].shape == (128, 128) and torch.allclose(early[m], early[m].T)


def test_length_batches_follow_the_reference_collation():
    samples = [[1] * n for n in (5, 2, 7, 3)]
    # longest first; a sample joins while the batch's width × (rows + 1) stays within 10 tokens:
    # 7 alone (7 × 2 = 14 > 10), 5 and 3 (5 × 2 = 10), then 2 (5 × 3 = 15 > 10)
    assert [[len(s) for s in b] for b in length_batches(samples, 10)] == [[7], [5, 3], [2]]
    # a row cap splits a batch the budget allows; any item type, with its length given
    lengths = {"a": 1, "b": 1, "c": 3, "d": 1}
    assert length_batches(list("abcd"), 100, max_rows=2, length=lengths.get) == [["c", "a"], ["b", "d"]]


def test_early_exit_skips_the_layers_above(tiny):
    model, _ = tiny
    calls = []
    handle = model.get_submodule("model.layers.1").register_forward_hook(lambda *a: calls.append(1))
    try:
        stats.second_moments(model, MODULES[:1], [[0] * 8, [0] * 8], progress=False)
        assert calls == []
        stats.second_moments(model, MODULES[:1], [[0] * 8, [0] * 8], early_exit=False, progress=False)
        assert calls == [1]
    finally:
        handle.remove()


def test_samples_are_texts_drawn_as_the_reference_draws_them():
    corpus = stats.Corpus("c", tuple(f"t{i}" for i in range(10)))
    # kmeng01/memit FixedRandomSubsetSampler(seed=1): random.Random(1).shuffle(list(range(10)))[:3] = [6, 8, 9]
    assert stats.sample_texts(corpus, 3) == ["t6", "t8", "t9"]
    assert stats.sample_texts(corpus, 10) == stats.sample_texts(corpus, 100_000) == list(corpus.texts)


def test_texts_keep_the_tokenizers_bos_and_are_cut_at_the_context():
    tok = models.byte_tokenizer()
    texts = ["abc", "", "hello world"]
    assert [len(x) for x in stats.encode_samples(tok, texts, 2048)] == [3, 11]  # no BOS: GPT-2-style
    assert [len(x) for x in stats.encode_samples(tok, texts, 4)] == [3, 4]
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", tok.bos_token_id)])
    with_bos = stats.encode_samples(tok, texts, 2048)
    assert [len(x) for x in with_bos] == [4, 1, 12] and all(x[0] == tok.bos_token_id for x in with_bos)  # Llama-style


def test_cache_key_changes_with_every_input():
    key = stats.StatsKey("m@sha", "model.layers.0.mlp.down_proj", "wikitext_test", "abc", 1000, 128)
    for field in dataclasses.fields(key):
        value = getattr(key, field.name)
        other = dataclasses.replace(key, **{field.name: value + 1 if isinstance(value, int) else value + "x"})
        assert other.digest() != key.digest(), field.name
    assert dataclasses.replace(key).digest() == key.digest()


def test_cached_statistics_are_reused_with_their_counts(tiny, data_dir, tmp_path, monkeypatch):
    model, tok = tiny
    corpus = stats.load_corpus(data_dir)
    spec = stats.StatsSpec(n_samples=100_000, max_len=32)
    first, paths, counts = stats.cached_second_moments(model, tok, MODULES, corpus, spec, "tiny@seed0", tmp_path)
    texts = stats.sample_texts(corpus, spec.n_samples)
    assert counts == {"n_texts": len(texts), "n_tokens": sum(min(len(t.encode()), 32) for t in texts)}  # bytes
    assert all(p.exists() for p in paths.values())
    monkeypatch.setattr(stats, "second_moments", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    again, _, counted = stats.cached_second_moments(model, tok, MODULES, corpus, spec, "tiny@seed0", tmp_path)
    assert all(torch.equal(first[m], again[m]) for m in MODULES) and counted == counts


def test_corpus_is_never_the_probe_text_and_needs_a_data_dir(data_dir):
    corpus = stats.load_corpus(data_dir)
    probe = (data_dir / "wikitext" / "wikitext-2_valid.tokens").read_text()
    assert corpus.texts and not any(t in probe for t in corpus.texts[:5])
    with pytest.raises(DataError, match="EDITHARM_DATA_DIR"):
        stats.load_corpus(None)


def test_a_wikipedia_dump_in_parquet_is_a_corpus_read_lazily(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "wikipedia" / "20231101.en"  # the hub dump's layout: id, url, title, text
    folder.mkdir(parents=True)
    rows = [{"id": str(i), "url": f"https://en.wikipedia.org/wiki?curid={i}", "title": f"T{i}", "text": f"Article {i}."}
            for i in range(10)]
    for part in (0, 1):
        pq.write_table(pa.Table.from_pylist(rows[part * 5:(part + 1) * 5]), folder / f"train-0000{part}-of-00002.parquet")
    corpus = stats.load_corpus(None, str(tmp_path / "wikipedia"))
    assert len(corpus.texts) == 10 and corpus.texts[7] == "Article 7."
    assert stats.sample_texts(corpus, 3) == ["Article 6.", "Article 8.", "Article 9."]
    assert stats.sample_texts(corpus, 100_000) == [f"Article {i}." for i in range(10)]  # all, in order
    with pytest.raises(DataError, match="hf:<hub id>"):
        stats.load_corpus(None, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="could not be loaded"):
        stats.load_corpus(None, "hf:no-such-owner/no-such-dump")  # offline: one error, no download


def test_nullspace_rules_on_a_hand_made_spectrum():
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    C = Q @ torch.diag(torch.tensor([1.0, 0.5, 0.015, 0.001], dtype=torch.float64)) @ Q.T
    absolute = guards.nullspace_projector(C, 2e-2)  # AlphaEdit: eigenvalues below 2e-2 -> 0.015 and 0.001
    torch.testing.assert_close(absolute.double(), Q[:, 2:] @ Q[:, 2:].T, atol=1e-6, rtol=0)
    relative = guards.nullspace_projector(C, 1e-2, "relative")  # below 1e-2 · λ_max = 0.01 -> 0.001 only
    torch.testing.assert_close(relative.double(), Q[:, 3:] @ Q[:, 3:].T, atol=1e-6, rtol=0)
    assert guards.null_dim(absolute) == 2.0 and guards.null_dim(relative) == 1.0
    assert guards.null_dim(guards.nullspace_projector(C * 100, 2e-2)) == 0.0  # absolute: the scale of C matters
