"""`editharm import-hparams`: EasyEdit hparams files (hand-written copies of the fields and values of its
`hparams/{ROME,MEMIT,KN,MEND,FT}/{gpt2-xl,llama-7b}.yaml`, in tests/fixtures/easyedit_hparams) become a model file
and a per-model method file that our own config composition loads with the values EasyEdit's file says; the model
descriptions reproduce our shipped GPT-2 XL and Llama-2-7B ones; every key of a file is in the table; bad files
are one error with exit status 2."""
import re
import shutil
from pathlib import Path

import pytest
import yaml

from editharm import config
from editharm.__main__ import main
from editharm.errors import ConfigError
from editharm.hparams_import import convert, import_hparams, render

EASYEDIT = Path(__file__).parent / "fixtures" / "easyedit_hparams"
HPARAMS = EASYEDIT / "hparams"
REPO = Path(__file__).resolve().parents[1]
WIKIPEDIA = "hf:wikimedia/wikipedia:20231101.en"

# What each file must compose to (hand-read from the fixture; units converted by hand).
EXPECTED = {
    ("ROME", "gpt2-xl"): ("gpt2-xl", {"layer": 17, "v_num_grad_steps": 20, "v_lr": 0.5, "v_weight_decay": 0.5,
                                      "clamp_norm_factor": 4.0, "kl_factor": 0.0625, "mom2_adjustment": False,
                                      "mom2_dataset": WIKIPEDIA, "mom2_n_samples": 100000,
                                      "context_template_length_params": [[5, 10], [10, 10]]}),
    ("ROME", "llama-7b"): ("llama-2-7b", {"layer": 5, "v_num_grad_steps": 25, "v_lr": 0.5, "v_weight_decay": 1e-3,
                                          "clamp_norm_factor": 4.0, "mom2_adjustment": False}),
    ("MEMIT", "gpt2-xl"): ("gpt2-xl", {"layers": [13, 14, 15, 16, 17], "clamp_norm_factor": 0.75,
                                       "v_num_grad_steps": 20, "v_weight_decay": 0.5, "mom2_update_weight": 20000.0,
                                       "mom2_n_samples": 100000, "mom2_dataset": WIKIPEDIA}),
    ("MEMIT", "llama-7b"): ("llama-2-7b", {"layers": [4, 5, 6, 7, 8], "clamp_norm_factor": 4.0,
                                           "v_num_grad_steps": 25, "mom2_update_weight": 15000.0}),
    ("KN", "gpt2-xl"): ("gpt2-xl", {"steps": 20, "adaptive_threshold": 0.2, "p": 0.4, "refine": False,
                                    "variant": "paper", "neuron": "pre", "ig_batch_size": 256, "layers": None}),
    ("KN", "llama-7b"): ("llama-2-7b", {"steps": 1, "adaptive_threshold": 0.2, "variant": "paper"}),
    ("FT", "gpt2-xl"): ("gpt2-xl", {"layers": [0], "module": "mlp_out", "lr": 5e-4, "steps": 25,
                                    "norm_constraint": 5e-4}),
    ("FT", "llama-7b"): ("llama-2-7b", {"layers": [21], "module": "mlp_out", "norm_constraint": None}),
    ("MEND", "gpt2-xl"): ("gpt2-xl", {"layers": [45, 46, 47], "modules": ["mlp_out", "mlp_in"], "rank": 1920,
                                      "n_hidden": 1, "edit_lr": 1e-4, "norm": True, "descent": False,
                                      "hypernetwork": "auto",
                                      "train": {"lr": 1e-6, "lr_lr": 1e-4, "c_edit": 0.1, "c_loc": 1.0,
                                                "accumulate": 10, "clip": 100.0, "max_iters": 100000,
                                                "val_every": 1000, "patience": 20, "monitor": "loss", "seed": 42,
                                                "batch_size": 1, "log_every": 1000, "edit_loss_on": "prompt"}}),
    ("MEND", "llama-7b"): ("llama-2-7b", {"layers": [29, 30, 31], "modules": ["mlp_gate", "mlp_in", "mlp_out"],
                                          "train": {"patience": 20, "monitor": "loss"}}),
}
# Keys where our shipped per-model files knowingly differ from EasyEdit's files: the statistics corpus (ours defaults
# to a local one; EasyEdit's Wikipedia is the imported value), MEND's training seed and logging window.
NOT_SHIPPED = {"mom2_dataset", "train.seed", "train.log_every"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No hub: a model found neither among ours nor on disk is resolved from the file alone (or is an error)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("EDITHARM_CONFIG_PATH", raising=False)


def _compose(out: Path, monkeypatch, method: str, model: str):
    """The run config `editharm --config-dir OUT edit method=... model=...` composes."""
    monkeypatch.setenv("EDITHARM_CONFIG_PATH", str(out))
    try:
        return config.load([f"method={method}", f"model={model}"])
    finally:
        monkeypatch.delenv("EDITHARM_CONFIG_PATH")


def _subset(obj, expected: dict) -> dict:
    return {k: (_subset(getattr(obj, k), v) if isinstance(v, dict) else getattr(obj, k)) for k, v in expected.items()}


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("alg,stem", sorted(EXPECTED))
def test_each_file_composes_to_its_values(alg, stem, tmp_path, monkeypatch):
    name, expected = EXPECTED[alg, stem]
    got = import_hparams(HPARAMS / alg / f"{stem}.yaml", tmp_path)
    assert got.name == name and got.files == [tmp_path / "model" / f"{name}.yaml",
                                             tmp_path / "method" / alg.lower() / f"{name}.yaml"]
    cfg = _compose(tmp_path, monkeypatch, alg.lower(), name)
    assert cfg.method.name == alg.lower() and cfg.model.name == name
    assert _subset(cfg.method, expected) == expected
    shipped = config.model_config(name)
    assert (cfg.model.path, cfg.model.n_layers, cfg.model.dtype) == (shipped.path, shipped.n_layers, "float32")
    assert cfg.model.templates == shipped.templates


@pytest.mark.parametrize("alg,stem", sorted(set(EXPECTED) - {("MEND", "llama-7b"), ("FT", "llama-7b")}))
def test_imported_values_equal_our_shipped_per_model_settings(alg, stem, tmp_path, monkeypatch):
    """Where our shipped configs say they hold EasyEdit's settings (configs/method/<m>/<model>.yaml and the method
    defaults), the imported file agrees with them key by key. Not compared: our Llama-2-7B MEND file follows the
    paper's run (edit accuracy monitored, a patience of 30 validations; EasyEdit's file says loss, 20), and no FT
    file of ours is for Llama-2-7B (ft.yaml's GPT-2 XL settings apply: layer 0, ε 5e-4; EasyEdit's: 21, none)."""
    name = EXPECTED[alg, stem][0]
    got = import_hparams(HPARAMS / alg / f"{stem}.yaml", tmp_path)
    ours = config.compose([f"method={alg.lower()}", f"model={name}"]).method
    imported = _compose(tmp_path, monkeypatch, alg.lower(), name).method
    keys = set(_flat(got.method_values)) - NOT_SHIPPED
    assert keys and {k: _get(imported, k) for k in keys} == {k: _get(ours, k) for k in keys}


def _get(node, dotted: str):
    for part in dotted.split("."):
        node = getattr(node, part) if not isinstance(node, dict) else node[part]
    return list(node) if hasattr(node, "__iter__") and not isinstance(node, str) else node


@pytest.mark.parametrize("stem,model_name,shipped", [("gpt2-xl", "./hugging_cache/gpt2-xl-finetuned", "gpt2-xl"),
                                                      ("llama-7b", "./hugging_cache/llama-2-7b-chat", "llama-2-7b")])
def test_from_the_file_alone_the_model_description_is_our_shipped_one(stem, model_name, shipped, tmp_path,
                                                                      monkeypatch):
    """A model that is none of ours and not on disk (EasyEdit's own ROME/llama-7b.yaml names llama-2-7b-chat): its
    module templates from the `model_types.yaml` family the file's templates match, its depth v_loss_layer + 1.
    That reproduces our shipped GPT-2 XL and Llama-2-7B descriptions, and ROME's layer survives the depth rules
    of layer_rules.yaml (which would give layer 7 of 48, 5 of 32)."""
    hp = yaml.safe_load((HPARAMS / "ROME" / f"{stem}.yaml").read_text()) | {"model_name": model_name}
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(hp))
    got = import_hparams(tmp_path / "in.yaml", tmp_path / "out")
    name = model_name.rsplit("/", 1)[1]
    assert got.name == name
    cfg = _compose(tmp_path / "out", monkeypatch, "rome", name)
    ref = config.model_config(shipped)
    assert (cfg.model.templates, cfg.model.n_layers) == (ref.templates, ref.n_layers)
    assert cfg.model.path == model_name and cfg.method.layer == hp["layers"][0]
    rows = {r.key: r.outcome for r in got.rows}
    assert rows["v_loss_layer"] == ("converted", {"model.n_layers": ref.n_layers}, rows["v_loss_layer"].note, False)


def test_unit_conversions(tmp_path):
    """Hand-computed: a string "5e-1" is 0.5 (EasyEdit's reading); mom2_n_samples counts texts in both (20,000 texts
    stay 20,000); λ 20000 becomes a float; fp16 picks float16; MEND's early_stop_patience counts iterations, ours
    validations: 2500 / 1000 = 2.5 -> 3; early_stop_key edit/acc_val is our monitor edit_success."""
    memit = yaml.safe_load((HPARAMS / "MEMIT" / "gpt2-xl.yaml").read_text())
    (tmp_path / "memit.yaml").write_text(yaml.safe_dump(memit | {"mom2_n_samples": 20000, "fp16": True,
                                                                 "v_lr": "5e-1", "mom2_update_weight": 20000}))
    got = convert(tmp_path / "memit.yaml")
    assert got.method_values["v_lr"] == 0.5 and got.method_values["mom2_n_samples"] == 20000
    assert got.method_values["mom2_update_weight"] == 20000.0 and type(got.method_values["mom2_update_weight"]) is float
    assert got.model["dtype"] == "float16"
    rows = {r.key: r.outcome for r in got.rows}
    assert rows["mom2_n_samples"].status == "mapped" and "texts in both" in rows["mom2_n_samples"].note
    mend = yaml.safe_load((HPARAMS / "MEND" / "llama-7b.yaml").read_text())
    (tmp_path / "mend.yaml").write_text(yaml.safe_dump(mend | {"early_stop_patience": 2500,
                                                               "early_stop_key": "edit/acc_val"}))
    train = convert(tmp_path / "mend.yaml").method_values["train"]
    assert (train["patience"], train["monitor"], train["val_every"]) == (3, "edit_success", 1000)


def test_every_key_is_in_the_table_and_unknown_ones_are_listed(tmp_path):
    for file in sorted(HPARAMS.glob("*/*.yaml")):
        got = convert(file)
        text = render(got.rows)
        keys = list(yaml.safe_load(file.read_text()))
        assert [r.key for r in got.rows if r.key] == keys
        for key in keys:
            assert re.search(rf"^{re.escape(key)}\s", text, flags=re.M), (file, key)
        assert all(r.outcome.status in ("mapped", "converted", "no counterpart") for r in got.rows if r.key)
    hp = yaml.safe_load((HPARAMS / "ROME" / "gpt2-xl.yaml").read_text())
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(hp | {"my_new_knob": 3, "layer_selection": "all"}))
    got = convert(tmp_path / "x.yaml")
    unknown = {r.key: r.outcome for r in got.rows if "importer knows" in r.outcome.note}
    assert set(unknown) == {"my_new_knob", "layer_selection"}
    assert all(o.status == "no counterpart" and o.differs and not o.values for o in unknown.values())
    assert re.search(r"^my_new_knob\s+3\s+no counterpart\*", render(got.rows), flags=re.M)


def test_what_ours_does_not_do_is_marked():
    """EasyEdit's FT-L objective (prompt_last: every target token scored at the prompt's last position) has no
    counterpart; FT-M's (target_new) is ours."""
    rows = {r.key: r.outcome for r in convert(HPARAMS / "FT" / "gpt2-xl.yaml").rows}
    assert rows["objective_optimization"].differs and rows["objective_optimization"].status == "no counterpart"
    assert rows["lm_head_module"].values == {"model.templates.embed": "transformer.wte"}
    rows = {r.key: r.outcome for r in convert(HPARAMS / "FT" / "llama-7b.yaml").rows}
    assert not rows["objective_optimization"].differs
    assert rows["norm_constraint"].values == {"method.norm_constraint": None}
    assert rows["rewrite_module_tmp"].values == {"method.module": "mlp_out"}
    assert not any(o.differs for k, o in rows.items() if k != "objective_optimization")


def test_a_model_folder_beside_the_easyedit_checkout(tmp_path, monkeypatch):
    """EasyEdit's `./hugging_cache/<model>` is relative to its checkout: found there from any working folder; depth and
    templates come from the checkpoint's config. A layer the model does not have is one error, before any file."""
    from transformers import GPT2Config

    checkout = tmp_path / "EasyEdit"
    GPT2Config(n_layer=4, n_embd=32, n_head=2).save_pretrained(checkout / "hugging_cache" / "My-GPT2")
    hp = yaml.safe_load((HPARAMS / "ROME" / "gpt2-xl.yaml").read_text()) | {"model_name": "./hugging_cache/My-GPT2"}
    mine = checkout / "hparams" / "ROME" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text(yaml.safe_dump(hp | {"layers": [1], "v_loss_layer": 3}))
    monkeypatch.chdir(tmp_path)
    got = import_hparams(mine, tmp_path / "out")
    assert got.name == "my-gpt2"
    cfg = _compose(tmp_path / "out", monkeypatch, "rome", "my-gpt2")
    assert cfg.model.path == str((checkout / "hugging_cache" / "My-GPT2").resolve()) and cfg.model.n_layers == 4
    assert cfg.model.templates == config.model_config("gpt2-xl").templates and cfg.method.layer == 1
    mine.write_text(yaml.safe_dump(hp | {"layers": [17]}))
    with pytest.raises(ConfigError, match=r"layer\(s\) \[17\] out of range .* 4 layers"):
        import_hparams(mine, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_model_option_and_existing_files(tmp_path):
    got = import_hparams(HPARAMS / "ROME" / "llama-7b.yaml", tmp_path, given="meta-llama/Llama-2-7b-hf")
    assert got.name == "llama-2-7b"
    import_hparams(HPARAMS / "ROME" / "llama-7b.yaml", tmp_path)  # the same values again: fine
    import_hparams(HPARAMS / "MEMIT" / "llama-7b.yaml", tmp_path)  # the same model file, another method
    shutil.copy(HPARAMS / "ROME" / "gpt2-xl.yaml", tmp_path / "in.yaml")
    (tmp_path / "in.yaml").write_text((tmp_path / "in.yaml").read_text().replace("layers: [17]", "layers: [16]"))
    import_hparams(tmp_path / "in.yaml", tmp_path)
    (tmp_path / "in.yaml").write_text((tmp_path / "in.yaml").read_text().replace("layers: [16]", "layers: [15]"))
    with pytest.raises(ConfigError, match="exists and holds other values"):
        import_hparams(tmp_path / "in.yaml", tmp_path)
    import_hparams(tmp_path / "in.yaml", tmp_path, force=True)
    assert yaml.safe_load((tmp_path / "method" / "rome" / "gpt2-xl.yaml").read_text())["layer"] == 15


def test_the_command_prints_the_table_and_how_to_run(tmp_path, capsys):
    assert main(["import-hparams", str(HPARAMS / "MEND" / "gpt2-xl.yaml"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^inner_params\s.*converted\s+method\.layers=\[45, 46, 47\], method\.modules=\[mlp_out, mlp_in\]",
                     out, flags=re.M)
    assert re.search(r"^early_stop_patience\s+20000\s+converted\s+method\.train\.patience=20", out, flags=re.M)
    assert f"run:  editharm --config-dir {tmp_path} edit method=mend model=gpt2-xl" in out


@pytest.mark.parametrize("text,message", [
    ("alg_name: ROME\nmodel_name: a: b\n", r"is not YAML \(line 2\): mapping values are not allowed"),
    ("alg_name: WISE\nmodel_name: gpt2-xl\n", r"alg_name 'WISE' has no method here; valid: ROME, MEMIT, KN, MEND, FT"),
    ("model_name: gpt2-xl\nlayers: [17]\n", r"has no alg_name; .* one of: ROME, MEMIT, KN, MEND, FT"),
    ("- ROME\n", r"must hold a mapping"),
    ("alg_name: ROME\nmodel_name: ./hugging_cache/nowhere\nlayers: [3]\n", r"cannot tell the architecture .* --model"),
])
def test_a_bad_file_is_one_error_with_exit_status_2(text, message, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(text)
    assert main(["import-hparams", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("editharm: error: ") and re.search(message, lines[0]), lines
    assert "Traceback" not in captured.err and not (tmp_path / "out").exists()


def test_the_how_to_page_commands_work(tmp_path, monkeypatch):
    """docs/how-to/easyedit-hparams.md: its import commands, on the fixtures, then its edit command's config."""
    page = (REPO / "docs" / "how-to" / "easyedit-hparams.md").read_text()
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for block in re.findall(r"```bash\n(.*?)```", page, flags=re.S)
             for line in block.splitlines()]
    imports = [line.split() for line in lines if line.startswith("editharm import-hparams")]
    edits = [line.split() for line in lines if line.startswith("editharm --config-dir")]
    assert imports and edits
    monkeypatch.chdir(tmp_path)
    for words in imports:
        assert main([w.replace("EasyEdit/hparams", str(HPARAMS)) for w in words[1:]]) == 0
    for words in edits:
        monkeypatch.setenv("EDITHARM_CONFIG_PATH", str(tmp_path / words[2]))
        config.load(words[4:])
