"""Scale check without downloads: a randomly initialised model of a real architecture's shape, edited and scored
through the Python API (no MLflow), with seconds and peak memory per phase.

    python benchmarks/scale.py --shape tiny                                   # seconds on a CPU (CI runs this)
    python benchmarks/scale.py --shape llama-2-7b --dtype bfloat16 --device cuda
    python benchmarks/scale.py --shape gpt2-xl --memit-batch 10 --limit 5 --json out.json

Phases: build (random weights of the shape, no download), key statistics of one layer (`--texts` texts of the
statistics corpus), a ROME edit with them, a MEMIT batch of `--memit-batch` requests, a KN edit, a MEND edit
with an untrained network of the configured shape (the same arithmetic as a trained one), one evaluation pass
(the eight tasks at `--limit` examples, perplexity probe). Layers follow `configs/layer_rules.yaml` for the
shape's depth. The model's weights are random, so only seconds and memory mean anything, never scores.
Needs the data folder ($EDITHARM_DATA_DIR) for the requests, the statistics corpus and the tasks.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import editharm
from editharm import config, data, models
from editharm.methods.mend import new_spec
from editharm.methods.mend_net import MENDNet

SHAPES = {  # transformers config keys of real architectures (vocabularies included: the LM head is real work)
    "tiny": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 2048},
    "gpt2-xl": {"model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25, "vocab_size": 50257,
                "n_positions": 1024},
    "llama-2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                   "max_position_embeddings": 4096},
    "llama-3-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                   "max_position_embeddings": 8192},
}
VALUE_STEP = {"v_num_grad_steps": 10, "context_template_length_params": [[5, 5]]}


def build(shape: str, dtype: str, device: str):
    """A model of `shape` as transformers initialises one (N(0, 0.02) weights), made on `device` directly, and the
    byte tokenizer (its ids are inside every shape's vocabulary)."""
    keys = dict(SHAPES[shape])
    tok = models.byte_tokenizer()
    cfg = AutoConfig.for_model(keys.pop("model_type"), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, **keys)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=models.DTYPES[dtype])
    tok.model_max_length = getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
    return model.eval(), tok


class Meter:
    """Seconds and peak memory per phase: host peak RSS so far (ru_maxrss) and, on CUDA, the phase's peak."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.device = torch.device(device)
        self.rows: list[dict] = []

    @contextmanager
    def phase(self, name: str, **extra):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        row = {"phase": name, "seconds": round(time.perf_counter() - t0, 3),
               "host_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3), **extra}
        if self.cuda:
            row["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        self.rows.append(row)
        print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--dtype", choices=sorted(models.DTYPES), default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--texts", type=int, default=20, help="statistics texts for one layer")
    ap.add_argument("--memit-batch", type=int, default=100)
    ap.add_argument("--limit", type=int, default=10, help="examples per task in the evaluation pass")
    ap.add_argument("--skip", default="", help="comma-separated phases to leave out (e.g. memit,kn)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    root = data.data_dir(None)
    if root is None:
        raise SystemExit("scale.py needs the data folder: set EDITHARM_DATA_DIR")
    meter = Meter(args.device)
    cache = tempfile.mkdtemp(prefix="editharm-scale-")  # statistics computed, never read from an earlier run's cache
    with meter.phase("build", shape=args.shape, dtype=args.dtype, device=args.device):
        model, tok = build(args.shape, args.dtype, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"scale: {args.shape}: {n_params / 1e9:.2f} B parameters, {args.dtype} on {args.device}")
    depth = model.config.num_hidden_layers
    requests = [dict(prompt=r.prompt, subject=r.subject, target_new=r.target_new)
                for r in data.load_requests(config.EditsConfig(dataset="counterfact", n=max(args.memit_batch, 1)),
                                            root)[0]]
    stats = {"mom2_adjustment": True, "mom2_n_samples": args.texts}
    if "rome" not in skip:
        with meter.phase("rome_setup_statistics", texts=args.texts):  # the key statistics of the edited layer
            rome = editharm.Editor(model, tok, method="rome", cache_dir=cache, **config.layer_defaults("rome", depth),
                                   **VALUE_STEP, **stats)
        with meter.phase("rome_edit"):
            rome.edit(requests[:1])
        rome.revert()
        del rome  # each editor's statistics and copies go before the next phase
        gc.collect()
    if "memit" not in skip:
        memit = editharm.Editor(model, tok, method="memit", cache_dir=cache, **config.layer_defaults("memit", depth),
                                **VALUE_STEP, mom2_n_samples=args.texts)
        # (its statistics, one layer at a time: part of building the editor, not of the batch below)
        with meter.phase("memit_batch", requests=args.memit_batch):
            memit.edit(requests[:args.memit_batch], mode="batch")
        memit.revert()
        del memit
        gc.collect()
    if "kn" not in skip:
        kn = editharm.Editor(model, tok, method="kn", steps=2, layers=list(range(depth)))
        with meter.phase("kn_edit"):
            kn.edit(requests[:1])
        kn.revert()
        del kn
        gc.collect()
    if "mend" not in skip:
        with tempfile.TemporaryDirectory() as folder:
            hp = {"layers": list(range(max(0, depth - 3), depth)), "rank": 1920, "hypernetwork": folder}
            spec = models.spec_from_model(model)
            cfg = config.to_object(config.compose(["method=mend"], model=config.OmegaConf.to_container(
                config.OmegaConf.structured(spec)), overrides={"method": hp}))
            MENDNet(new_spec(cfg, model, models.identity(spec))).save(Path(folder))
            mend = editharm.Editor(model, tok, method="mend", model_config=spec, **hp)
            with meter.phase("mend_edit"):
                mend.edit(requests[:1])
            mend.revert()
    if "evaluate" not in skip:
        with meter.phase("evaluate", limit=args.limit):
            editharm.evaluate(model, tok, limit=args.limit, dtype=args.dtype)
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "params": n_params, "rows": meter.rows}, indent=1))


if __name__ == "__main__":
    main()
