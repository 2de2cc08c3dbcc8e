"""Editing speed on a real model: key statistics with and without early exit, seconds per ROME/MEMIT/KN/MEND
edit (and the share of KN's edit its attribution takes).

    python benchmarks/edit_speed.py                              # SmolLM2, layer 5, 10 CounterFact edits each
    python benchmarks/edit_speed.py --texts 200 --edits 10 --layer 5

Statistics throughput is measured on the same token chunks both ways; edit times are the median over
`--edits` CounterFact requests with statistics already cached (their one-off cost is printed apart). MEND edits
with `--mend-hypernetwork` (runs:/<id>/mend or a folder), else with an untrained network of the configured
shape: the same arithmetic, so the same seconds.
Figures are printed and logged to MLflow (experiment `editharm-benchmarks`) unless --no-log.
"""
from __future__ import annotations

import argparse
import statistics as st
import tempfile
import time
from pathlib import Path

import torch

from editharm import config, data, models, stats, tracking
from editharm.registry import method


def stats_throughput(model, tok, module: str, corpus, n_texts: int) -> dict[str, float]:
    samples = stats.encode_samples(tok, stats.sample_texts(corpus, n_texts), tok.model_max_length)
    n_tokens = sum(map(len, samples))
    out = {}
    for label, early in (("early_exit", True), ("full_forward", False)):
        t0 = time.perf_counter()
        stats.second_moments(model, [module], samples, early_exit=early, progress=False)
        out[f"stats_{label}_tokens_per_s"] = n_tokens / (time.perf_counter() - t0)
    out["stats_speedup"] = out["stats_early_exit_tokens_per_s"] / out["stats_full_forward_tokens_per_s"]
    return out


def edit_seconds(name: str, model_name: str, requests, overrides: list[str]) -> dict[str, float]:
    cfg = config.load([f"model={model_name}", f"method={name}", *overrides])
    model, tok = models.load(cfg.model, models.cache_root(cfg.cache_dir))
    module = method(name)(cfg, model, tok, [], n_requests=len(requests))
    t0 = time.perf_counter()
    module.on_fit_start()  # templates, and statistics (from the cache when present)
    setup = time.perf_counter() - t0
    times, measured = [], []
    for r in requests:
        module._measured = {}
        t0 = time.perf_counter()
        module.compute_deltas([r])
        times.append(time.perf_counter() - t0)
        measured.append(module._measured)
    figures = {f"{name}_setup_s": setup, f"{name}_median_s_per_edit": st.median(times), f"{name}_max_s_per_edit": max(times)}
    if name == "kn":  # attribution's share of the edit
        figures["kn_attribution_share"] = sum(m["kn/attribution_s"][0] for m in measured) / sum(times)
    return figures


def untrained_mend(model_name: str, folder: Path) -> Path:
    from editharm.methods.mend import new_spec
    from editharm.methods.mend_net import MENDNet

    cfg = config.load([f"model={model_name}", "method=mend"])
    model, _ = models.load(cfg.model, models.cache_root(cfg.cache_dir))
    return MENDNet(new_spec(cfg, model, models.identity(cfg.model))).save(folder / "mend")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=5, help="statistics layer (first third of the model)")
    p.add_argument("--texts", type=int, default=200, help="statistics texts sampled from the corpus")
    p.add_argument("--edits", type=int, default=10)
    p.add_argument("--mend-hypernetwork", default=None, help="runs:/<id>/mend or a folder (default: untrained)")
    p.add_argument("--no-log", action="store_true")
    args = p.parse_args()

    root = data.data_dir(None)
    cfg = config.load([f"model={args.model}"])
    model, tok = models.load(cfg.model, models.cache_root())
    module = cfg.model.templates.mlp_out.format(args.layer)
    figures = stats_throughput(model, tok, module, stats.load_corpus(root), args.texts)
    print(f"statistics, {module}: early exit {figures['stats_early_exit_tokens_per_s']:.0f} tok/s, full forward "
          f"{figures['stats_full_forward_tokens_per_s']:.0f} tok/s (x{figures['stats_speedup']:.2f}); "
          f"torch threads {torch.get_num_threads()}")
    requests, _ = data.load_requests(config.load(["edits=counterfact", f"edits.n={args.edits}"]).edits, root)
    tmp = tempfile.TemporaryDirectory()
    net = args.mend_hypernetwork or str(untrained_mend(args.model, Path(tmp.name)))
    for name in ("rome", "memit", "kn", "mend"):
        f = edit_seconds(name, args.model, requests, [f"method.hypernetwork={net}"] if name == "mend" else [])
        figures.update(f)
        share = f", attribution {f['kn_attribution_share']:.0%} of it" if name == "kn" else ""
        print(f"{name}: median {f[f'{name}_median_s_per_edit']:.1f} s per edit (max {f[f'{name}_max_s_per_edit']:.1f}){share}, "
              f"setup {f[f'{name}_setup_s']:.1f} s")
    if not args.no_log:
        tracking.log_benchmark(f"edit-speed-{args.model}", vars(args), figures)


if __name__ == "__main__":
    main()
