"""MEND: the hypernetwork's math against hand computation, training, the logged network, refusals, modes."""
import numpy as np
import pytest
import torch

from editharm import config, deltas as D, models
from editharm.errors import ConfigError
from editharm.methods.mend import gradient_factors, inner_modules, mend_deltas, new_spec, patched
from editharm.methods.mend_net import NORM_EPS, MENDNet, RunningNorm
from editharm.nethook import get_parameter
from editharm.runs import edit, train_mend
from editharm.scoring import encode_pairs, mean_nll
from tests.conftest import client

PROMPTS, TARGETS = ["The capital of Kenya is", "Miles Davis plays the"], ["Lagos", "violin"]


def setup(model_name: str, *overrides: str):
    cfg = config.load(["method=mend", f"model={model_name}", *overrides])
    model, tok = models.load(cfg.model, models.cache_root())
    return cfg, model, tok, inner_modules(cfg)


def true_gradients(model, tok, inner):
    ids, mask, labels = encode_pairs(tok, PROMPTS, TARGETS)
    weights = [get_parameter(model, p) for p in inner]
    return dict(zip(inner, torch.autograd.grad(mean_nll(model, ids, mask, labels), weights)))


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_untrained_editor_gives_alpha_times_the_gradient(model_name):
    """U = 0 and no normalisation statistics yet: g is the identity, so ΔW = −α ∇W exactly, in the stored
    layout (GPT-2's Conv1D transposed), for the batch's summed gradient."""
    cfg, model, tok, inner = setup(model_name)
    net = MENDNet(new_spec(cfg, model, "x")).eval()
    with torch.no_grad():
        for i, _ in enumerate(inner):
            net.alpha[i] = 0.1 * (i + 1)
    got = mend_deltas(net, model, inner, gradient_factors(model, tok, inner, PROMPTS, TARGETS))
    grads = true_gradients(model, tok, inner)
    for i, p in enumerate(inner):
        assert got[p].shape == get_parameter(model, p).shape
        torch.testing.assert_close(got[p], -0.1 * (i + 1) * grads[p], rtol=1e-4, atol=1e-7)
    net.spec.descent = False  # MEND's own sign convention: the update is added
    flipped = mend_deltas(net, model, inner, gradient_factors(model, tok, inner, PROMPTS, TARGETS))
    assert all(torch.equal(flipped[p], -got[p]) for p in inner)


def test_rows_without_targets_ride_along_without_changing_the_factors():
    """Training's first pass batches the locality rows with the edit rows: they add no gradient, and the
    edit rows' factors are those of the edit rows alone."""
    from editharm.methods.mend import factors_of
    from editharm.scoring import IGNORE

    cfg, model, tok, inner = setup("tiny-llama")
    alone = gradient_factors(model, tok, inner, PROMPTS[:1], TARGETS[:1])
    ids, mask, labels = encode_pairs(tok, [PROMPTS[0], "Sony was founded in"], [TARGETS[0], "Japan"])
    labels[1:] = IGNORE
    together, logits = factors_of(model, inner, ids, mask, labels)
    for p in inner:
        for a, b in zip(alone[p], together[p]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(input_ids=ids, attention_mask=mask).logits)


def test_normalised_identity_update_by_hand():
    """With statistics, the identity editor returns the normalised factors: ΔW = −α Σ_t δ̂_t x̂_tᵀ with
    x̂ = (x − μ)/(σ + 1e-7), μ and σ (ddof 1) from the rows it was trained on."""
    cfg, model, tok, inner = setup("tiny-llama")
    net = MENDNet(new_spec(cfg, model, "x"))
    factors = gradient_factors(model, tok, inner, PROMPTS, TARGETS)
    p = next(iter(inner))
    x, d = factors[p]
    rng = np.random.default_rng(0)
    sx, sd = rng.normal(size=(7, x.shape[1])), rng.normal(size=(7, d.shape[1]))
    editor = net.editors[net.spec.shape_key(p)]
    editor.norm_x.update(torch.tensor(sx)), editor.norm_delta.update(torch.tensor(sd))
    net.eval()
    xh = (x.double().numpy() - sx.mean(0)) / (sx.std(0, ddof=1) + NORM_EPS)
    dh = (d.double().numpy() - sd.mean(0)) / (sd.std(0, ddof=1) + NORM_EPS)
    got = net.update(p, x, d).detach().double().numpy()
    np.testing.assert_allclose(got, -net.spec.edit_lr * dh.T @ xh, rtol=1e-4, atol=1e-9)


def test_running_norm_equals_numpy_on_a_stream():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size=(n, 5)) for n in (1, 4, 1, 9, 2)]
    norm = RunningNorm(5).train()
    for b in batches:
        norm(torch.tensor(b))
    everything = np.concatenate(batches)
    np.testing.assert_allclose(norm.mean.numpy(), everything.mean(0), rtol=1e-12)
    np.testing.assert_allclose(norm.std().numpy() ** 2, everything.var(0, ddof=1), rtol=1e-10)
    frozen = norm.count.item()
    norm.eval()(torch.tensor(batches[0]))
    assert norm.count.item() == frozen  # eval mode never updates the statistics


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_functional_forward_equals_deltas_applied_in_place(model_name):
    cfg, model, tok, inner = setup(model_name)
    net = MENDNet(new_spec(cfg, model, "x")).eval()
    deltas = {p: d.detach() * 50 for p, d in mend_deltas(net, model, inner, gradient_factors(
        model, tok, inner, PROMPTS, TARGETS)).items()}
    ids, mask, _ = encode_pairs(tok, PROMPTS, TARGETS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        original = model(input_ids=ids, attention_mask=mask).logits
        functional = patched(model, {p: get_parameter(model, p) + d for p, d in deltas.items()})(
            input_ids=ids, attention_mask=mask).logits
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # gradient pass left it as it was
        D.apply_(model, deltas)
        in_place = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(functional, original, atol=1e-3)  # the deltas do change the logits
    torch.testing.assert_close(functional, in_place, rtol=1e-5, atol=1e-5)


def _train(*overrides):
    return train_mend(["model=tiny-llama", "tracking.log_checkpoint=false", *overrides])


def test_training_lowers_validation_loss_and_logs_a_loadable_network(env, tmp_path):
    run_id = _train("method.train.max_steps=30", "method.train.val_every=10")
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "train-mend"
    assert run.data.tags["data.dropped_eval_overlap"] == "1"  # the CounterFact train prompt in the edit split
    assert run.data.tags["data.skipped_empty_target"] == "1"
    nll = [m.value for m in sorted(client().get_metric_history(run_id, "val/edit_nll"), key=lambda m: m.step)]
    assert len(nll) >= 3 and min(nll[1:]) < nll[0]  # trained validations beat the untrained editor's
    # runs:/<id>/mend loads back and edits exactly as the in-memory network saved from the same weights
    from editharm import tracking
    from editharm.methods import mend_store

    folder = tracking.fetch_artifact(f"runs:/{run_id}/mend", tmp_path / "cache")
    loaded = MENDNet.load(folder)
    assert loaded.spec.meta["run_id"] == run_id and not loaded.training
    cfg, model, tok, inner = setup("tiny-llama", f"method.hypernetwork=runs:/{run_id}/mend")
    via_store, trained_on = mend_store.load(cfg, model)
    assert "The capital of Kenya is" in trained_on and "The mother tongue of Danielle Darrieux is" not in trained_on
    factors = gradient_factors(model, tok, inner, PROMPTS, TARGETS)
    a, b = mend_deltas(loaded, model, inner, factors), mend_deltas(via_store.eval(), model, inner, factors)
    assert all(torch.equal(a[p], b[p]) for p in inner)
    untrained = mend_deltas(MENDNet(new_spec(cfg, model, "x")).eval(), model, inner, factors)
    assert any(not torch.allclose(a[p], untrained[p]) for p in inner)


def test_network_for_another_model_or_parameters_is_refused(env, tmp_path):
    cfg, model, tok, _ = setup("tiny-llama")
    folder = MENDNet(new_spec(cfg, model, "someone-else@sha256:0")).save(tmp_path / "other-model")
    with pytest.raises(ConfigError, match="trained for model 'someone-else"):
        from editharm.methods import mend_store

        mend_store.load(config.load(["method=mend", "model=tiny-llama", f"method.hypernetwork={folder}"]), model)
    folder = MENDNet(new_spec(cfg, model, models.identity(cfg.model))).save(tmp_path / "mine")
    one_layer = config.load(["method=mend", "model=tiny-llama", f"method.hypernetwork={folder}", "method.layers=[1]"])
    with pytest.raises(ConfigError, match="method.layers/method.modules"):
        mend_store.load(one_layer, model)


def test_compute_deltas_leaves_the_model_bit_identical(env, tmp_path):
    from editharm.data import EditRequest
    from editharm.methods.mend import MEND

    cfg, model, tok, _ = setup("tiny-llama")
    folder = MENDNet(new_spec(cfg, model, models.identity(cfg.model))).save(tmp_path / "net")
    cfg.method.hypernetwork = str(folder)
    module = MEND(cfg, model, tok, [], 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    got = module.compute_deltas([EditRequest(PROMPTS[0], "Kenya", TARGETS[0])])
    assert set(got) == set(module.inner) and all(d.abs().sum() > 0 for d in got.values())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_auto_trains_a_nested_run_once_then_reuses_it(env):
    base = ["method=mend", "model=tiny-llama", "tasks.names=[]", "edits.n=2", "probe.perplexity=false",
            "tracking.log_checkpoint=false", "method.train.max_steps=5", "method.train.val_every=5"]
    first = client().get_run(edit(base))
    runs = client().search_runs([first.info.experiment_id])
    (trained,) = [r for r in runs if r.data.tags.get("kind") == "train-mend"]
    assert trained.data.tags["mlflow.parentRunId"] == first.info.run_id
    assert first.data.tags["mend.hypernetwork"] == f"runs:/{trained.info.run_id}/mend"
    second = client().get_run(edit(base))
    assert second.data.tags["mend.hypernetwork"] == first.data.tags["mend.hypernetwork"]
    assert len(client().search_runs([first.info.experiment_id])) == 3  # no second training run


@pytest.mark.parametrize("overrides,words", [
    (["method.hypernetwork="], ["method.hypernetwork is empty", "runs:/<run_id>/mend"]),
    (["method.auto_train=false"], ["found no finished train-mend run", "editharm train-mend model=tiny-llama"]),
    (["method.hypernetwork=runs:/0123456789abcdef/mend"], ["cannot fetch runs:/0123456789abcdef/mend"]),
    (["method.hypernetwork=/no/such/net"], ["neither runs:/<run_id>/mend"]),
    (["method.train.edit_loss_on=both"], ["method.train.edit_loss_on", "rephrase, prompt"]),
    (["method.modules=[attention]"], ["not weight templates", "mlp_out"]),
    (["method.rank=0"], ["method.rank must be >= 1"]),
])
def test_bad_mend_input_fails_before_compute(capsys, env, overrides, words):
    from tests.test_cli import _fails

    _fails(capsys, ["edit", "method=mend", "model=tiny-llama", "tasks.names=[]", "edits.n=1", *overrides], *words)


def test_training_data_without_paraphrase_or_locality_is_refused(capsys, env, tmp_path):
    import shutil

    from tests.conftest import write_jsonl
    from tests.test_cli import _fails

    data = tmp_path / "data"
    shutil.copytree(env, data)
    write_jsonl(data / "counterfact" / "counterfact-train.jsonl",
                [{"case_id": 1, "prompt": "Rome is in", "subject": "Rome", "target_new": "Spain"}])
    _fails(capsys, ["train-mend", "model=tiny-llama", f"data_dir={data}"], "needs a paraphrase and a locality",
           "counterfact-train.jsonl")


def test_editing_a_training_record_is_refused(capsys, env, tmp_path):
    from tests.test_cli import _fails

    run_id = _train("method.train.max_steps=2", "method.train.val_every=2")
    path = tmp_path / "edits.jsonl"
    path.write_text('{"prompt": "The capital of Kenya is", "subject": "Kenya", "target_new": "Accra"}\n')
    _fails(capsys, ["edit", "method=mend", "model=tiny-llama", "tasks.names=[]", "edits.n=1", f"edits.dataset={path}",
                    f"method.hypernetwork=runs:/{run_id}/mend"], "training records of this MEND hypernetwork")


def test_train_mend_refuses_another_method(capsys, env):
    from tests.test_cli import _fails

    _fails(capsys, ["train-mend", "method=rome"], "method=rome is not mend")
