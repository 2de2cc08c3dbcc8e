"""MEND: the hypernetwork's math against hand computation, training, the logged network, refusals, modes."""
import json
import numpy as np
import pytest
import torch

from editharm import config, deltas as D, models
from editharm.errors import ConfigError
from editharm.methods.mend import L_edit, gradient_factors, inner_modules, load_network, mend_deltas, new_spec, patched
from editharm.methods.mend_net import NORM_EPS, Editor, LowRankBlock, MENDNet, RunningNorm
from editharm.nethook import get_parameter
from editharm.runs import edit, train_mend
from editharm.scoring import encode_pairs, mean_nll, token_logprobs
from tests.conftest import client

PROMPTS, TARGETS = ["The capital of Kenya is", "Miles Davis plays the"], ["Lagos", "violin"]


def setup(model_name: str, *overrides: str):
    cfg = config.load(["method=mend", f"model={model_name}", *overrides])
    model, tok = models.load(cfg.model, models.cache_root())
    return cfg, model, tok, inner_modules(cfg)


def true_gradients(model, tok, inner, reduction="token"):
    """∇W of the batch's NLL: Σ over all target tokens / their number (`token`, MEND's), or the mean of each
    example's per-token mean (`example`)."""
    ids, mask, labels = encode_pairs(tok, PROMPTS, TARGETS)
    weights = [get_parameter(model, p) for p in inner]
    loss = -token_logprobs(model, ids, mask, labels)[0].mean() if reduction == "token" else mean_nll(model, ids, mask, labels)
    return dict(zip(inner, torch.autograd.grad(loss, weights)))


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_untrained_editor_gives_alpha_times_the_gradient(model_name):
    """U = 0 and no normalisation statistics yet: g is the identity, so ΔW = −α ∇W exactly, in the stored
    layout (GPT-2's Conv1D transposed), for the gradient of the batch's NLL per target token (MEND's); with
    `reduction=example`, of its NLL per example (the two targets have unequal token counts, so they differ)."""
    cfg, model, tok, inner = setup(model_name)
    assert len(set(int(c) for c in encode_pairs(tok, PROMPTS, TARGETS)[2].ne(-100).sum(1))) == 2  # unequal lengths
    net = MENDNet(new_spec(cfg, model, "x")).eval()
    with torch.no_grad():
        for i, _ in enumerate(inner):
            net.alpha[i] = 0.1 * (i + 1)
    got = mend_deltas(net, model, inner, gradient_factors(model, tok, inner, PROMPTS, TARGETS))
    grads = true_gradients(model, tok, inner)
    for i, p in enumerate(inner):
        assert got[p].shape == get_parameter(model, p).shape
        torch.testing.assert_close(got[p], -0.1 * (i + 1) * grads[p], rtol=1e-4, atol=1e-7)
    per_example = mend_deltas(net, model, inner, gradient_factors(model, tok, inner, PROMPTS, TARGETS, "example"))
    grads = true_gradients(model, tok, inner, "example")
    for i, p in enumerate(inner):
        torch.testing.assert_close(per_example[p], -0.1 * (i + 1) * grads[p], rtol=1e-4, atol=1e-7)
        assert not torch.allclose(per_example[p], got[p], rtol=1e-3, atol=0)
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
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    net = MENDNet(new_spec(cfg, model, "x")).eval()
    deltas = {p: d.detach() * 50 for p, d in mend_deltas(net, model, inner, gradient_factors(
        model, tok, inner, PROMPTS, TARGETS)).items()}
    ids, mask, _ = encode_pairs(tok, PROMPTS, TARGETS)
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
    return train_mend(["model=tiny-llama", *overrides])


def test_training_lowers_validation_loss_and_keeps_the_best_network(env):
    """norm=false, so that step 0 (the identity editor and the initial α) differs from later validations only by
    what was trained. The base model ends as it began: weights, flags, no gradients; the global RNG too."""
    from editharm import mend_runs

    cfg, model, tok, _ = setup("tiny-llama", "method.norm=false", "method.train.max_iters=30",
                               "method.train.val_every=10")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    run_id = mend_runs.train(cfg, model, tok)
    assert torch.equal(torch.rand(3), expected)  # training drew from its own seeded RNG, then restored ours
    assert all(torch.equal(before[n], p) and p.grad is None and p.requires_grad for n, p in model.named_parameters())
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "train-mend"
    assert run.data.tags["mend.data"] == "zsre->zsre/train"  # zsRE's train file, validated on a slice held out of it
    assert run.data.tags["data.dropped_eval_overlap"] == "0" and run.data.tags["data.selected_on_eval"] == "0"
    assert run.data.tags["data.skipped_empty_target"] == "1"
    assert (run.data.tags["data.n_train"], run.data.tags["data.n_val"]) == ("2", "1")
    history = sorted(client().get_metric_history(run_id, "val/loss"), key=lambda m: m.step)
    nll = [m.value for m in sorted(client().get_metric_history(run_id, "val/edit_nll"), key=lambda m: m.step)]
    assert len(nll) == 4 and min(nll[1:]) < nll[0]  # trained validations beat the untrained editor's
    window = client().get_metric_history(run_id, "train/edit_success")
    assert len(window) == 30 // 5 and all(0 <= m.value <= 1 for m in window)  # means over log_every=5 edits
    best = min(history[1:], key=lambda m: m.value)  # the logged network is the best validation's
    assert best.step in (run.data.metrics["train/saved_step"] - 1, run.data.metrics["train/saved_step"])


def test_a_logged_network_loads_back_from_its_run_and_edits_identically(env, tmp_path):
    from editharm import mend_runs, tracking

    cfg, model, tok, inner = setup("tiny-llama")
    net = MENDNet(new_spec(cfg, model, models.identity(cfg.model)))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # U no longer 0: a non-identity editor
    net.train()
    factors = gradient_factors(model, tok, inner, PROMPTS, TARGETS)
    for p, (x, d) in factors.items():  # normalisation statistics from a stream
        net.editors[net.spec.shape_key(p)](x, d, net.modes[p])
    net.eval()
    mine = mend_deltas(net, model, inner, factors)
    run = client().create_run(client().create_experiment("nets"))
    client().log_artifacts(run.info.run_id, str(net.save(tmp_path / "mend")), "mend")
    cfg.method.hypernetwork = f"runs:/{run.info.run_id}/mend"
    assert mend_runs.resolve(cfg, model, tok) == f"runs:/{run.info.run_id}/mend"  # fetched into a folder
    loaded, _ = load_network(cfg, model)
    assert not loaded.training
    theirs = mend_deltas(loaded, model, inner, factors)
    assert all(torch.equal(mine[p], theirs[p]) for p in inner)
    assert tracking.fetch_artifact(f"runs:/{run.info.run_id}/mend", models.cache_root() / "mend").is_dir()  # cached


def test_network_for_another_model_or_parameters_is_refused(env, tmp_path):
    cfg, model, tok, _ = setup("tiny-llama")
    folder = MENDNet(new_spec(cfg, model, "someone-else@sha256:0")).save(tmp_path / "other-model")
    with pytest.raises(ConfigError, match="trained for model 'someone-else"):
        load_network(config.load(["method=mend", "model=tiny-llama", f"method.hypernetwork={folder}"]), model)
    folder = MENDNet(new_spec(cfg, model, models.identity(cfg.model))).save(tmp_path / "mine")
    one_layer = config.load(["method=mend", "model=tiny-llama", f"method.hypernetwork={folder}", "method.layers=[1]"])
    with pytest.raises(ConfigError, match="method.layers/method.modules"):
        load_network(one_layer, model)
    wider = config.load(["method=mend", "model=tiny-llama", f"method.hypernetwork={folder}", "method.rank=16"])
    with pytest.raises(ConfigError, match=r"method.rank=8 \(configured: 16\)"):
        load_network(wider, model)


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
            "tracking.log_checkpoint=false", "method.train.max_iters=5", "method.train.val_every=5"]
    first = client().get_run(edit(base))
    runs = client().search_runs([first.info.experiment_id])
    (trained,) = [r for r in runs if r.data.tags.get("kind") == "train-mend"]
    assert trained.data.tags["mlflow.parentRunId"] == first.info.run_id
    assert first.data.tags["mend.hypernetwork"] == f"runs:/{trained.info.run_id}/mend"
    second = client().get_run(edit(base))
    assert second.data.tags["mend.hypernetwork"] == first.data.tags["mend.hypernetwork"]
    assert len(client().search_runs([first.info.experiment_id])) == 3  # no second training run


def test_auto_finds_a_network_shipped_with_the_package_after_the_store_and_before_training(env, tmp_path,
                                                                                             monkeypatch):
    import shutil

    from editharm import tracking
    from editharm.methods import mend_store

    base = ["method=mend", "model=tiny-llama", "tasks.names=[]", "edits.n=2", "probe.perplexity=false",
            "tracking.log_checkpoint=false", "method.train.max_iters=4", "method.train.val_every=4"]
    trained = f"runs:/{_train('method.train.max_iters=4', 'method.train.val_every=4')}/mend"
    packaged = tmp_path / "package"
    shutil.copytree(tracking.fetch_artifact(trained, models.cache_root() / "mend"), packaged / "tiny-llama")
    shutil.copytree(packaged / "tiny-llama", packaged / "another")  # built for other inner parameters: skipped
    spec = json.loads((packaged / "another" / "mend.json").read_text())
    spec["meta"]["tags"]["mend.params"] = "model.layers.9.mlp.down_proj"
    (packaged / "another" / "mend.json").write_text(json.dumps(spec))
    monkeypatch.setattr(mend_store, "packaged_root", lambda: packaged)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")  # a store with no network
    run = client().get_run(edit([*base, "method.auto_train=false"]))
    assert run.data.tags["mend.hypernetwork"] == str(packaged / "tiny-llama")
    assert [r.data.tags.get("kind") for r in client().search_runs([run.info.experiment_id])] == ["edit"]  # no training
    monkeypatch.setattr(mend_store, "packaged_root", lambda: tmp_path / "nothing")
    with pytest.raises(ConfigError, match="found no finished train-mend run"):
        edit([*base, "method.auto_train=false"])


@pytest.mark.parametrize("overrides,words", [
    (["method.hypernetwork="], ["method.hypernetwork is empty", "runs:/<run_id>/mend"]),
    (["method.auto_train=false"], ["found no finished train-mend run", "editharm train-mend model=tiny-llama"]),
    (["method.hypernetwork=runs:/0123456789abcdef/mend"], ["cannot fetch runs:/0123456789abcdef/mend"]),
    (["method.hypernetwork=/no/such/net"], ["neither runs:/<run_id>/mend"]),
    (["method.train.max_minutes=null"], ["needs a time budget", "method.train.max_minutes"]),
    (["method.train.monitor=accuracy"], ["method.train.monitor", "loss, edit_success"]),
    (["method.train.edit_loss_on=both"], ["method.train.edit_loss_on", "rephrase, prompt"]),
    (["method.modules=[attention]"], ["not weight templates", "mlp_out"]),
    (["method.rank=0"], ["method.rank must be >= 1"]),
    (["method.relu=last"], ["method.relu='last' is not valid", "all, hidden"]),
    (["method.v_init=he"], ["method.v_init='he' is not valid", "randn, xavier"]),
    (["method.reduction=sum"], ["method.reduction='sum' is not valid", "token, example"]),
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
    _fails(capsys, ["train-mend", "model=tiny-llama", f"data_dir={data}", "method.train.datasets=[zsre,counterfact]"],
           "needs a paraphrase and a locality",
           "counterfact-train.jsonl")


def test_editing_a_training_record_is_refused(capsys, env, tmp_path):
    from tests.test_cli import _fails

    run_id = _train("method.train.max_iters=2", "method.train.val_every=2", "method.train.datasets=[zsre,counterfact]")
    path = tmp_path / "edits.jsonl"
    path.write_text('{"prompt": "The capital of Kenya is", "subject": "Kenya", "target_new": "Accra"}\n')
    _fails(capsys, ["edit", "method=mend", "model=tiny-llama", "tasks.names=[]", "edits.n=1", f"edits.dataset={path}",
                    f"method.hypernetwork=runs:/{run_id}/mend"], "training records of this MEND hypernetwork")


def test_train_mend_refuses_another_method(capsys, env):
    from tests.test_cli import _fails

    _fails(capsys, ["train-mend", "method=rome"], "method=rome is not mend")


def test_training_losses_by_hand_with_a_zero_update():
    """α = 0: the edited model is the base, so the KL on the locality answer is 0 (pre and post positions
    align), its argmax agrees everywhere, and the edit term is the base model's NLL of the target after the
    paraphrase; a nonzero α moves both."""
    from editharm.data import EditRequest
    from editharm.methods.mend_train import MENDTraining
    from editharm.scoring import score

    cfg, model, tok, _ = setup("tiny-llama")
    net = MENDNet(new_spec(cfg, model, "x"))
    module = MENDTraining(cfg, model, tok, net)
    batch = [EditRequest("The capital of Kenya is", "Kenya", "Lagos", rephrase="Kenya's seat of government is",
                         locality_prompt="The capital of Uganda is", locality_answer="Kampala"),
             EditRequest("Miles Davis plays the", "Miles Davis", "violin", rephrase="Miles Davis is known for the",
                         locality_prompt="Louis Armstrong plays", locality_answer="the trumpet")]
    with torch.no_grad():
        net.alpha.zero_()
    out = module.losses(batch)
    assert out["loc_kl"].abs().item() < 1e-6 and out["loc_acc"].item() == 1.0
    scores = score(model, tok, [r.rephrase for r in batch], [r.target_new for r in batch])
    n = [len(s.predicted) for s in scores]
    assert n[0] != n[1]  # unequal target lengths: the per-token and the per-example mean differ
    per_token = sum(s.nll * k for s, k in zip(scores, n)) / sum(n)  # MEND: Σ NLL over all target tokens / their number
    assert out["edit_nll"].item() == pytest.approx(per_token, rel=1e-5)
    assert out["edit_nll"].item() != pytest.approx(sum(s.nll for s in scores) / 2, rel=1e-3)
    module.reduction = "example"
    assert module.losses(batch)["edit_nll"].item() == pytest.approx(sum(s.nll for s in scores) / 2, rel=1e-5)
    module.reduction = "token"
    with torch.no_grad():
        net.alpha.fill_(1.0)
    moved = module.losses(batch)
    assert moved["loc_kl"].item() > 1e-4 and moved["edit_nll"].item() != pytest.approx(out["edit_nll"].item())


def test_L_edit_by_hand_on_two_examples_of_unequal_length():
    """log p = (−1 | −2, −3): per token (MEND's `multiclass_log_probs`) 6/3 = 2; per example (1 + 2.5)/2 = 1.75."""
    logp, counts = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([1, 2])
    assert L_edit(logp, counts).item() == pytest.approx(2.0)
    assert L_edit(logp, counts, "example").item() == pytest.approx(1.75)
    with pytest.raises(ConfigError, match="method.reduction"):
        L_edit(logp, counts, "sum")


def test_V_at_init_is_standard_normal_as_in_mends_LRLinear():
    """MEND's `LRLinear(init="id")`: U = 0, V = torch.randn (std 1, unscaled). 64 × 4,000 entries: std within 1 %.
    Xavier (the named option) would give √(2/4064) ≈ 0.022."""
    torch.manual_seed(0)
    block = LowRankBlock(4000, 64, n_modes=2, relu=True)
    assert torch.equal(block.U, torch.zeros(4000, 64))
    assert block.V.std().item() == pytest.approx(1.0, abs=0.01) and abs(block.V.mean().item()) < 0.01
    xavier = LowRankBlock(4000, 64, n_modes=2, relu=True, v_init="xavier")
    assert xavier.V.std().item() == pytest.approx((2 / 4064) ** 0.5, rel=0.02)
    cfg, model, _, _ = setup("tiny-llama")
    spec = new_spec(cfg, model, "x")
    assert (spec.v_init, spec.relu) == ("randn", "all")  # the defaults, from method/mend.yaml
    with pytest.raises(ConfigError, match="method.v_init='he'"):
        LowRankBlock(8, 2, 1, True, v_init="he")


@pytest.mark.parametrize("relu,expected", [("all", [1.0, 2.0]), ("hidden", [-1.0, 0.0])])
def test_relu_on_every_block_as_in_mends_LRLinear(relu, expected):
    """Two blocks (n_hidden = 1) on h = [x; δ] = [1, 2]; the first is the identity (U = 0), the last has U = [1, 1]ᵀ,
    V = [1, 1], b = −5: pre-activation 3 − 5 = −2 per dimension. MEND's `LRLinear` clamps it at 0 on every block
    (its `relu` argument is never read), so h passes unchanged; `relu=hidden` leaves the last block linear: h − 2.
    A positive pre-activation (h = [3, 4]: 7 − 5 = 2) is added either way."""
    editor = Editor(1, 1, rank=1, n_hidden=1, n_modes=1, norm=False, relu=relu)
    with torch.no_grad():
        last = editor.blocks[1]
        last.U.fill_(1.0), last.V.fill_(1.0), last.b.fill_(-5.0)
    x, d = editor(torch.tensor([[1.0]]), torch.tensor([[2.0]]), 0)
    assert [x.item(), d.item()] == expected
    x, d = editor(torch.tensor([[3.0]]), torch.tensor([[4.0]]), 0)
    assert [x.item(), d.item()] == [5.0, 6.0]


def test_a_network_saved_before_v_init_and_relu_is_refused_unless_configured_so(env, tmp_path):
    """An old `mend.json` has neither field: it was built with Xavier V and a linear last block, loads so, and the
    architecture check names both; configured to match, it loads and runs its last block without the ReLU."""
    import json

    cfg, model, _, _ = setup("tiny-llama")
    folder = MENDNet(new_spec(cfg, model, models.identity(cfg.model))).save(tmp_path / "old")
    spec = json.loads((folder / "mend.json").read_text())
    assert (spec["v_init"], spec["relu"]) == ("randn", "all")  # a new network records both
    del spec["v_init"], spec["relu"]
    (folder / "mend.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"method.v_init=xavier \(configured: randn\), method.relu=hidden "
                                          r"\(configured: all\)"):
        load_network(config.load(["method=mend", "model=tiny-llama", f"method.hypernetwork={folder}"]), model)
    old, _ = load_network(config.load(["method=mend", "model=tiny-llama", f"method.hypernetwork={folder}",
                                          "method.v_init=xavier", "method.relu=hidden"]), model)
    assert [b.relu for e in old.editors.values() for b in e.blocks] == [True, False] * len(old.editors)


def test_training_data_selection(env):
    """Default: zsRE's train file (3 usable records: 1 empty target skipped), `n_val` = 1 record held out of it and
    not trained on. The paper's choice (`val_split=edit`): validation on the zsRE edit set itself, flagged. With
    CounterFact added: its train records too, less the one whose prompt is in its edit split."""
    from tests.conftest import COUNTERFACT_TRAIN, ZSRE, ZSRE_TRAIN
    from editharm.methods.mend_data import training_data

    usable = {r["src"] for r in ZSRE_TRAIN if r["alt"]}
    cfg = config.load(["method=mend", "model=tiny-llama"])
    train, val, counts = training_data(cfg, env)
    assert len(val) == 1 and val[0].prompt in usable
    assert {r.prompt for r in train} == usable - {val[0].prompt}
    assert counts == {"skipped_empty_target": 1, "dropped_eval_overlap": 0, "selected_on_eval": 0,
                      "n_train": 2, "n_val": 1}
    assert training_data(cfg, env)[1][0].prompt == val[0].prompt  # seeded

    paper = config.load(["method=mend", "model=tiny-llama", "method.train.val_split=edit", "method.train.n_val=2"])
    train, val, counts = training_data(paper, env)
    assert [r.prompt for r in val] == [r["src"] for r in ZSRE[:2]]
    assert {r.prompt for r in train} == usable and counts["selected_on_eval"] == 1

    both = config.load(["method=mend", "model=tiny-llama", "method.train.datasets=[zsre,counterfact]"])
    train, val, counts = training_data(both, env)
    assert val[0].prompt in usable and counts["dropped_eval_overlap"] == 1
    assert {r.prompt for r in train} == (usable - {val[0].prompt}) | {r["prompt"] for r in COUNTERFACT_TRAIN[1:]}
