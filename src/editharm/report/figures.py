"""The report's figures (matplotlib's object API: no pyplot, no global state).

- `abilities`: one panel per task (its headline score) plus edit efficacy / generalization / locality and
  perplexity; x = edits applied (or the batch size), a line per method (or guard), the 95 % interval a band.
- `likelihood`: per task, the paired change of the gold answer's log-probability from the unedited model.
- `paper`: per task, retention (score / score at x = 0) of our lines beside the paper's own (dashed).
"""
from __future__ import annotations

import math

from matplotlib.figure import Figure

from editharm.grid import SEP
from editharm.report.collect import PERPLEXITY, Collected, Line

COLUMNS = 4


def _grid(n: int, title: str) -> tuple[Figure, list]:
    rows = max(1, math.ceil(n / COLUMNS))
    cols = min(COLUMNS, max(n, 1))
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def _xlabel(got: Collected) -> str:
    return "edits applied" if got.x == "step" else f"{got.x} (0 = not edited)"


def _series(line: Line, key: str) -> tuple[list[float], list[float], list[float] | None, list[float] | None]:
    pts = [p for p in line.points if key in p.values]
    xs, ys = [p.x for p in pts], [p.values[key] for p in pts]
    if pts and all(f"{key}_ci_low" in p.values for p in pts):
        return xs, ys, [p.values[f"{key}_ci_low"] for p in pts], [p.values[f"{key}_ci_high"] for p in pts]
    return xs, ys, None, None


def style(i: int) -> dict:
    """Line `i`'s look: ten colours, then the same ten dashed, then dotted (a 16-cell grid stays readable)."""
    return {"color": f"C{i % 10}", "ls": ("-", "--", ":")[(i // 10) % 3], "marker": "os^"[(i // 10) % 3]}


def _draw(ax, got: Collected, key: str, title: str) -> None:
    for i, line in enumerate(got.lines):
        xs, ys, lo, hi = _series(line, key)
        if not xs:
            continue
        look = style(i)
        colour = look["color"]
        ax.plot(xs, ys, ms=4, lw=2, label=line.label, **look)
        if lo is not None:
            ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, linewidth=0)
    ax.set_title(title, fontsize=10)
    if got.x != "step":
        ax.set_xscale("symlog", linthresh=1)
    ax.grid(alpha=0.3)


def abilities(got: Collected) -> Figure:
    fig, axes = _grid(len(got.panels), f"{got.title}: abilities and edits (95 % intervals as bands)")
    for ax, panel in zip(axes, got.panels):
        _draw(ax, got, panel.key, panel.title + ("" if panel.task is None else f" ({panel.key.rsplit('/', 1)[1]})"))
        ax.set_xlabel(_xlabel(got), fontsize=8)
        if panel.key == PERPLEXITY:  # a collapse reaches 1e30 and more: a linear axis would flatten every other line
            ax.set_yscale("log")
    _legend(fig, axes)
    return fig


def likelihood(got: Collected) -> Figure | None:
    """Δ log p(gold) per task (paired with the unedited model, 95 % paired interval), where logged."""
    key = "ability/{}/gold_logprob_delta"
    tasks = [p for p in got.panels if p.task and any(key.format(p.task) in pt.values for ln in got.lines for pt in ln.points)]
    if not tasks:
        return None
    fig, axes = _grid(len(tasks), f"{got.title}: change of the gold answer's log-probability (paired, 95 %)")
    for ax, panel in zip(axes, tasks):
        _draw(ax, got, key.format(panel.task), f"{panel.task}: Δ log p(gold)")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_yscale("symlog", linthresh=0.1)  # a collapse moves log p by hundreds, a mild harm by tenths
        ax.set_xlabel(_xlabel(got), fontsize=8)
    _legend(fig, axes)
    return fig


def paper(got: Collected, figure: list[dict]) -> Figure | None:
    """Retention of our lines (solid) beside the paper's series of the same figure (dashed, grey)."""
    tasks = [p for p in got.panels if p.task and any(p.task in s["scores"] for s in figure)]
    if not tasks:
        return None
    fig, axes = _grid(len(tasks), f"{got.title}: retention (score / score unedited)\nours solid; the paper's "
                                  "dashed (GPT-2 XL), dash-dotted (LLaMA)")
    greys = ["0.25", "0.5", "0.7", "0.4", "0.6"]
    for ax, panel in zip(axes, tasks):
        for i, line in enumerate(got.lines):
            xs, ys = retention(*_series(line, panel.key)[:2])
            if xs:
                ax.plot(xs, ys, ms=4, lw=2, label=line.label, **style(i))
        ours = {line.label.split(SEP)[0].lower(): style(i)["color"] for i, line in enumerate(got.lines)}
        for j, s in enumerate(x for x in figure if panel.task in x["scores"]):
            xs, ys = retention(s["x"], s["scores"][panel.task])
            colour = ours.get(s["method"].split()[0].lower(), greys[j % len(greys)])  # the same method's colour
            ls = "--" if s["model"].startswith("GPT") else "-."
            ax.plot(xs, ys, ls=ls, marker=".", color=colour, alpha=0.7, label=f"paper: {s['method']}, {s['model']}")
        ax.set_title(panel.task, fontsize=10)
        ax.set_xlabel(_xlabel(got), fontsize=8)
        if got.x != "step":
            ax.set_xscale("symlog", linthresh=1)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return fig


def retention(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """`ys` over its value at x = 0 (the unedited model); empty when that point is missing or 0."""
    if not xs or xs[0] != 0 or not ys[0]:
        return [], []
    return list(xs), [y / ys[0] for y in ys]


def _legend(fig: Figure, axes: list) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center", ncols=min(len(labels), 5),
                   fontsize=8)


def panel_titles(fig: Figure) -> list[str]:
    """The visible panels' titles (what a test counts)."""
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]

