"""An HTML report of a metrics table: the plots a person wants first, then every number.

    html = render_report(metrics_table, title="Round 2 evaluation")

Plots (PNG, inlined so the file stands alone in the Kubeflow UI or a browser):
  - accuracy against N for each N-based method, per benchmark, with the greedy
    baseline as a line and 95% intervals as error bars (the newest round);
  - accuracy per round for each method at its largest N, when several rounds are in
    the table: the self-evolution curve.
Then a table of every accuracy with its interval, and a table of the other metrics (with the
interval where they have one: the paired differences).
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict

import pyarrow as pa

from rstar_math.evaluation.metrics import is_whole

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.muted { color: #777; }
"""


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _accuracy_vs_n(rows: list[dict], benchmark: str, round_: int) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = defaultdict(list)
    flat: dict[str, dict] = {}
    for r in rows:
        if r["benchmark"] == benchmark and r["round"] == round_ and r["metric"] == "accuracy":
            if r["n"] is None:
                flat[r["method"]] = r
            else:
                series[r["method"]].append(r)
    if not series and not flat:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for method, points in sorted(series.items()):
        points.sort(key=lambda r: r["n"])
        ns = [p["n"] for p in points]
        values = [p["value"] for p in points]
        errors = [[p["value"] - p["ci_low"] for p in points], [p["ci_high"] - p["value"] for p in points]]
        axis.errorbar(ns, values, yerr=errors, marker="o", capsize=3, label=method)
    for method, r in sorted(flat.items()):
        axis.axhline(r["value"], linestyle="--", color="gray" if method == "greedy" else None, label=method)
    all_n = sorted({p["n"] for points in series.values() for p in points})
    if all_n:
        axis.set_xscale("log", base=2)
        axis.set_xticks(all_n, [str(n) for n in all_n])
    axis.set_ylim(0, 1)
    axis.set_xlabel("N (samples or trajectories per problem)")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{benchmark}, round {round_}")
    axis.legend(fontsize=8)
    out = _png(figure)
    plt.close(figure)
    return out


def _accuracy_per_round(rows: list[dict], benchmark: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_n: dict[tuple[str, int], dict] = {}
    for r in rows:
        if r["benchmark"] != benchmark or r["metric"] != "accuracy":
            continue
        key = (r["method"], r["round"])
        if key not in best_n or (r["n"] or 0) > (best_n[key]["n"] or 0):
            best_n[key] = r
    rounds = sorted({k[1] for k in best_n})
    if len(rounds) < 2:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in sorted({k[0] for k in best_n}):
        points = [best_n[(method, r)] for r in rounds if (method, r) in best_n]
        label = method + (f" (N={points[-1]['n']})" if points[-1]["n"] else "")
        errors = [[p["value"] - p["ci_low"] for p in points], [p["ci_high"] - p["value"] for p in points]]
        axis.errorbar([p["round"] for p in points], [p["value"] for p in points], yerr=errors, marker="o",
                      capsize=3, label=label)
    axis.set_xticks(rounds)
    axis.set_ylim(0, 1)
    axis.set_xlabel("round (0 = base model)")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{benchmark}: self-evolution")
    axis.legend(fontsize=8)
    out = _png(figure)
    plt.close(figure)
    return out


def _fmt(value) -> str:
    if value is None:
        return "<span class=muted>-</span>"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return html.escape(str(value))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(metrics: pa.Table | list[dict], *, title: str, notes: str = "") -> str:
    rows = metrics.to_pylist() if isinstance(metrics, pa.Table) else list(metrics)
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    # Plots for whole benchmarks; per-source rows only in the table.
    benchmarks = sorted({r["benchmark"] for r in rows if r["metric"] == "accuracy" and is_whole(r["benchmark"])})
    newest = max((r["round"] for r in rows), default=0)
    for benchmark in benchmarks:
        plots = [p for p in (_accuracy_per_round(rows, benchmark), _accuracy_vs_n(rows, benchmark, newest)) if p]
        parts.append(f"<h2>{html.escape(benchmark)}</h2><div class=plots>{''.join(plots)}</div>")
    accuracy = sorted((r for r in rows if r["metric"] == "accuracy"),
                      key=lambda r: (r["benchmark"], r["round"], r["method"], r["n"] or 0))
    if accuracy:
        parts.append("<h2>Accuracy</h2>")
        parts.append(_table(accuracy, ["benchmark", "round", "method", "n", "value", "ci_low", "ci_high", "count"]))
    other = sorted((r for r in rows if r["metric"] != "accuracy"),
                   key=lambda r: (r["round"], r["benchmark"], r["method"], r["metric"]))
    if other:
        parts.append("<h2>Other measurements</h2>")
        parts.append(_table(other, ["round", "benchmark", "method", "metric", "n", "value", "ci_low", "ci_high", "count"]))
    parts.append("</body></html>")
    return "\n".join(parts)
