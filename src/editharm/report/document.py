"""The report's tables and its two documents: `report.md` (figures beside it) and a self-contained
`report.html` (figures embedded), built from the same rows.

A verdict reads the paired 95 % interval of the change from the unedited model on the same examples:
"harm detected" when it lies below 0, "gain detected" above 0, "not detected" when it holds 0.
"""
from __future__ import annotations

import base64
import html

from editharm.report.collect import Collected


def verdict(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "n/a"
    if high < 0:
        return "harm detected"
    if low > 0:
        return "gain detected"
    return "not detected"


def number(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if abs(v) >= 1000 or (v and abs(v) < 0.001) else f"{v:.3f}"


MARK = {"harm detected": " ▼", "gain detected": " ▲"}


def paired(point, key: str) -> tuple[str, str]:
    """The paired difference at `point` as `Δ [low, high]` (▼ harm, ▲ gain), and its verdict; `–` where not
    logged (step 0, or runs from before paired statistics)."""
    d, lo, hi = (point.values.get(f"{key}_delta{s}") for s in ("", "_ci_low", "_ci_high"))
    if d is None or point.step == 0:
        return "", "n/a"
    said = verdict(lo, hi)
    return (f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{MARK.get(said, '')}" if lo is not None else f"{d:+.3f}"), said


def ability_table(got: Collected, likelihood: bool = False) -> tuple[list[str], list[list[str]]]:
    """Per task and line: the score at each x with its paired difference from the unedited model (one per point:
    for Batch-Single every batch size is its own cell), and the verdict at the last point. With `likelihood`, the
    same for the gold answer's log-probability."""
    xs = sorted({p.x for ln in got.lines for p in ln.points})
    head = ["task", "line", *[number(x).rstrip("0").rstrip(".") or "0" for x in xs], "verdict at the last point"]
    rows = []
    for panel in got.panels:
        if panel.task is None:
            continue
        key = f"ability/{panel.task}/gold_logprob" if likelihood else panel.key
        for line in got.lines:
            at = {p.x: p for p in line.points if key in p.values}
            if not at:
                continue
            cells = []
            for x in xs:
                p = at.get(x)
                d = paired(p, key)[0] if p else ""
                cells.append("–" if p is None else number(p.values[key]) + (f" (Δ {d})" if d else ""))
            rows.append([panel.task, line.label, *cells, paired(at[max(at)], key)[1]])
    return head, rows


def edit_table(got: Collected) -> tuple[list[str], list[list[str]]]:
    """Per line: the edit metrics and perplexity at its last point (perplexity also unedited)."""
    edits = [p for p in got.panels if p.task is None]
    head = ["line", "at x", *[p.title for p in edits], "perplexity unedited"]
    rows = []
    for line in got.lines:
        last = line.points[-1] if line.points else None
        first = line.points[0] if line.points else None
        if last is None:
            continue
        rows.append([line.label, number(last.x), *[number(last.values.get(p.key)) for p in edits],
                     number(first.values.get("probe/perplexity") if first.step == 0 else None)])
    return head, rows


def markdown(got: Collected, figures: list[tuple[str, str]], source: str | None) -> str:
    """`figures`: (file name, caption) of the PNGs written beside report.md."""
    out = [f"# Report: {got.title}", "", _intro(got), ""]
    for name, caption in figures:
        out += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    for title, (head, rows) in _tables(got):
        out += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    if source:
        out += [f"The paper's numbers: {source}.", ""]
    return "\n".join(out)


def page(got: Collected, figures: list[tuple[str, bytes, str]], source: str | None) -> str:
    """A self-contained HTML page: `figures` are (name, PNG bytes, caption), embedded as data URIs."""
    body = [f"<h1>Report: {html.escape(got.title)}</h1>", f"<p>{html.escape(_intro(got))}</p>"]
    for name, png, caption in figures:
        data = base64.b64encode(png).decode()
        body.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for title, (head, rows) in _tables(got):
        body.append(f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                    + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                    + "</table>")
    if source:
        body.append(f"<p>The paper's numbers: {html.escape(source)}.</p>")
    style = ("body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em}img{max-width:100%}"
             "table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}td,th{border:1px solid #ccc;"
             "padding:2px 6px;text-align:right}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(got.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def _intro(got: Collected) -> str:
    runs = ", ".join(f"{r.info.run_name} ({r.info.run_id[:8]})" for r in got.runs)
    missing = f" Cells without a FINISHED run, not drawn: {', '.join(got.missing)}." if got.missing else ""
    return (f"{len(got.lines)} lines from {len(got.runs)} runs: {runs}.{missing} Δ: the paired difference from the "
            "unedited model on the same examples, with its 95 % paired-bootstrap interval (▼ harm detected: the "
            "interval lies below 0; ▲ gain detected).")


def _tables(got: Collected) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    out = [("Ability scores", ability_table(got)), ("Edits and perplexity", edit_table(got))]
    head, rows = ability_table(got, likelihood=True)
    if rows:
        out.insert(1, ("Log-probability of the gold answer (mean per example)", (head, rows)))
    return out

