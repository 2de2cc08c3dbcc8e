import pytest

from editharm import config
from editharm.config import ConfigError


@pytest.mark.parametrize("group", config.GROUPS)
def test_every_shipped_group_file_loads(group):
    names = config.group_names(group)
    assert names, f"configs/{group}/ is empty"
    for name in names:
        cfg = config.load([f"{group}={name}"])
        if group != "edits":
            assert getattr(cfg, group).name == name


def test_defaults_and_dotted_overrides_are_typed():
    cfg = config.load(["model=tiny-llama", "method=ft", "edits.n=4", "edits.eval_every=2", "method.lr=1e-3",
                       "method.layers=[0,1]", "method.norm_constraint=null"])
    assert cfg.edits.n == 4 and cfg.edits.eval_every == 2
    assert isinstance(cfg.method.lr, float) and cfg.method.lr == 1e-3
    assert cfg.method.layers == [0, 1] and cfg.method.norm_constraint is None
    assert cfg.model.templates.mlp_out == "model.layers.{}.mlp.down_proj"


def test_mlflow_style_single_argument_with_several_overrides():
    cfg = config.load(["model=tiny-llama", "edits.n=4 edits.eval_every=2", ""])
    assert (cfg.edits.n, cfg.edits.eval_every) == (4, 2)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        config.load(["edits.nn=4"])
    msg = str(err.value)
    assert "edits.nn" in msg and "batch_size" in msg and "eval_every" in msg


def test_unknown_method_key_lists_method_keys():
    with pytest.raises(ConfigError, match="norm_constraint"):
        config.load(["method=ft", "method.learning_rate=0.1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"edits\.n"):
        config.load(["edits.n=many"])


@pytest.mark.parametrize("arg,valid", [("method=nope", "ft"), ("model=nope", "tiny-llama"), ("edits=nope", "zsre")])
def test_unknown_group_name_lists_valid_names(arg, valid):
    with pytest.raises(ConfigError, match=valid):
        config.load([arg])


def test_not_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        config.load(["edits.n"])


@pytest.mark.parametrize("args,match", [
    (["edits.mode=sequential"], "instance-sequential"),
    (["edits.batch_size=2"], "batch-sequential"),
    (["edits.mode=batch-sequential", "edits.batch_size=3", "edits.n=10", "edits.eval_every=3"], "multiple"),
    (["edits.mode=batch-sequential", "edits.batch_size=2", "edits.eval_every=3"], "multiple of edits.batch_size"),
    (["edits.mode=single", "edits.eval_every=5"], "evaluates every edit"),
    (["edits.n=0"], ">= 1"),
])
def test_inconsistent_edit_protocol_is_rejected(args, match):
    with pytest.raises(ConfigError, match=match):
        config.load(args)


@pytest.mark.parametrize("args", [
    ["model=tiny-llama", "method=rome", "method.layer=2"],
    ["model=smollm2-135m", "method=rome", "method.layer=-1"],
    ["model=tiny-gpt2", "method=memit", "method.layers=[0,1,5]"],
    ["model=tiny-llama", "method=ft", "method.layers=[9]"],
])
def test_method_layers_must_exist_in_the_model(args):
    with pytest.raises(ConfigError, match=r"out of range for model .* \(valid: 0 to"):
        config.load(args)
    config.load([*args[:2], "method.layers=[0,1]" if "memit" in args[1] or "ft" in args[1] else "method.layer=1"])


def test_batch_mode_is_one_batch_of_n():
    cfg = config.load(["edits=zsre-batch", "edits.n=7"])
    assert (cfg.edits.batch_size, cfg.edits.eval_every) == (7, 7)


def test_per_model_method_file_is_merged(tmp_path, monkeypatch):
    import shutil

    shutil.copytree(config.config_dir(), tmp_path / "configs")
    (tmp_path / "configs" / "method" / "ft").mkdir(exist_ok=True)
    (tmp_path / "configs" / "method" / "ft" / "tiny-gpt2.yaml").write_text("layers: [1]\nlr: 0.25\n")
    monkeypatch.setenv("EDITHARM_CONFIG_DIR", str(tmp_path / "configs"))
    assert config.load(["model=tiny-gpt2", "method=ft"]).method.lr == 0.25
    assert config.load(["model=tiny-gpt2", "method=ft", "method.lr=0.5"]).method.lr == 0.5  # the command line wins
    assert config.load(["model=tiny-llama", "method=ft"]).method.lr != 0.25


def test_flatten_and_yaml_roundtrip():
    tree = config.compose(["model=tiny-llama"])
    flat = config.flatten(tree)
    assert flat["edits.n"] == tree.edits.n and flat["model.templates.mlp_out"].endswith("down_proj")
    assert "mlp_out" in config.to_yaml(tree)


def test_a_users_folder_adds_and_replaces_single_files(tmp_path, monkeypatch):
    """$EDITHARM_CONFIG_PATH holds only the user's files: they come first, the shipped ones fill the rest."""
    mine = tmp_path / "mine"
    (mine / "method" / "ft").mkdir(parents=True)
    (mine / "method" / "ft" / "tiny-gpt2.yaml").write_text("layers: [1]\nlr: 0.25\n")
    (mine / "model_types.yaml").write_text("bloom:\n  layer: transformer.h.{}\n")
    (mine / "model").mkdir()
    (mine / "model" / "tiny-mine.yml").write_text((config.config_dir() / "model" / "tiny-llama.yaml").read_text())
    monkeypatch.setenv("EDITHARM_CONFIG_PATH", str(mine))
    assert config.load(["model=tiny-gpt2", "method=ft"]).method.lr == 0.25  # the user's per-model file
    assert config.load(["model=tiny-llama", "method=ft"]).method.lr != 0.25  # shipped files still there
    assert {"bloom", "llama", "gpt2"} <= set(config.model_types())  # tables merge, the user's entries win
    assert {"tiny-llama", "tiny-mine"} <= set(config.group_names("model"))  # .yml counts too
    assert config.load(["model=tiny-mine"]).model.name == "tiny-mine"


def test_device_key_maps_to_lightning():
    assert config.accelerator("cuda:1") == ("gpu", [1]) and config.accelerator("cuda") == ("gpu", 1)
    assert config.accelerator("cpu") == ("cpu", 1) and config.accelerator("auto") == ("auto", 1)
    with pytest.raises(ConfigError, match="device='tpu' is not valid; choose one of: auto, cpu, cuda, cuda:N, gpu, mps"):
        config.load(["device=tpu"])
