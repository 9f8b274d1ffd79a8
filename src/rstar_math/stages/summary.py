"""Round reports and the run summary: everything a run measured, in one metrics table.

    round_report(2, evaluation_uri, history_out, context=ctx, sft_data=..., policy=..., ppm=...,
                 controls=[...], previous=round1_history)
    text = summarize(history_uri, final_policy_uri, final_ppm_uri, summary_path=..., report_path=..., config=cfg)

A round's history is the previous round's history plus this round's rows: held-out
accuracy by method (evaluate), the controls' accuracy, and what the stages
recorded about themselves: solved share, verify verdicts, data sizes, the PPM's
held-out pairwise accuracy, tokens, and seconds per stage; and paired comparisons of the
round's methods and controls on the same problems (evaluation/compare.py). The summary
renders it (Markdown tables of held-out accuracy per round and method and of the paired
differences, an HTML report with plots) and audits the lineage of the final policy and PPM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from rstar_math.artifacts import ArtifactRef, open_artifact, write_artifact
from rstar_math.config import RunConfig
from rstar_math.data.schemas import METRICS, read_table, write_table
from rstar_math.evaluation.compare import METRIC as COMPARISON, comparison_rows, label
from rstar_math.evaluation.metrics import MetricRow, per_source
from rstar_math.evaluation.report import render_report
from rstar_math.lineage import RunContext, audit
from rstar_math.stages.evaluate import ANSWERS_FILE, METRICS_FILE, read_answers
from rstar_math.stages.io import read_artifact_json
from rstar_math.stages.select import REPORT_FILE as SELECT_REPORT

HISTORY_FILE = "history.parquet"
TRAINING_RESULT = "training_result.json"


def _read_answers(ref: ArtifactRef) -> list[dict]:
    """Per-problem answers of an evaluation or a control ([] for artefacts written without them)."""
    with open_artifact(ref) as (path, _):
        return read_answers(path) if (path / ANSWERS_FILE).exists() else []


def _read_metrics(ref: ArtifactRef | None, name: str) -> list[dict]:
    if ref is None:
        return []
    with open_artifact(ref) as (path, _):
        return read_table(path / name, METRICS).to_pylist()


def _stage_rows(run_id: str, round: int, select: dict, policy: dict, ppm: dict) -> list[MetricRow]:
    rows: list[MetricRow] = []

    def add(benchmark: str, method: str, metric: str, value, count=None) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(MetricRow(run_id, round, benchmark, method, metric, float(value), count=count))

    totals = select.get("totals", {})
    verify = select.get("verify", {})
    search = verify.get("search", {})
    if totals:
        add("train", "search", "solved_share", totals["solved"] / max(1, totals["problems"]), totals["problems"])
        add("train", "select", "contributed_share", totals.get("contributed_share"), totals["problems"])
        for key in ("sft_examples", "step_pairs", "final_pairs"):
            add("train", "select", key, totals.get(key))
        add("train", "select", "seconds", select.get("seconds"))
    for key in ("terminals", "correct", "wrong", "exec_failures", "disagreements"):
        add("train", "verify", key, verify.get("counts", {}).get(key))
    add("train", "verify", "seconds", verify.get("seconds"))
    for key in ("rollouts", "generated_tokens", "executor_calls", "engine_s", "executor_s", "bookkeeping_s"):
        add("train", "search", key, search.get(key))
    add("train", "search", "seconds", search.get("wall_s"))
    for name, result in (("train_policy", policy), ("train_ppm", ppm)):
        add("train", name, "seconds", result.get("train_time_s"))
        add("train", name, "final_loss", result.get("final_loss"))
        add("train", name, "tokens_per_s", result.get("tokens_per_s"))
    held_out = ppm.get("heldout") or []
    if held_out:
        last = held_out[-1]["metrics"]
        add("train", "train_ppm", "ppm_pairwise_accuracy", last.get("pairwise_accuracy"), last.get("pairs"))
    return rows


def round_report(
    round: int,
    evaluation: str | ArtifactRef,
    out: str | ArtifactRef,
    *,
    context: RunContext,
    sft_data: ArtifactRef | None = None,
    policy: ArtifactRef | None = None,
    ppm: ArtifactRef | None = None,
    controls: Sequence[ArtifactRef] = (),
    previous: ArtifactRef | None = None,
) -> pa.Table:
    """The history so far with this round's rows appended (round 0: the base model's evaluation only)."""
    evaluation = ArtifactRef.of(evaluation)
    rows = _read_metrics(previous, HISTORY_FILE) + _read_metrics(evaluation, METRICS_FILE)
    answers = _read_answers(evaluation)
    for control in controls:
        rows += _read_metrics(control, METRICS_FILE)
        answers += _read_answers(control)
    rows += [asdict(r) for r in comparison_rows(context.run_id, round, answers)]
    stage = _stage_rows(context.run_id, round, read_artifact_json(sft_data, SELECT_REPORT),
                        read_artifact_json(policy, TRAINING_RESULT), read_artifact_json(ppm, TRAINING_RESULT))
    rows += [asdict(r) for r in stage]
    table = pa.Table.from_pylist(rows, schema=METRICS.schema)
    inputs = {name: ref for name, ref in (("evaluation", evaluation), ("sft_data", sft_data), ("policy", policy),
                                          ("ppm", ppm), ("previous", previous)) if ref}
    inputs.update({f"control-{i}": control for i, control in enumerate(controls)})
    with write_artifact(out, kind="metrics", stage="round_report", context=context, round=round,
                        inputs=inputs) as out_dir:
        write_table(table, out_dir / HISTORY_FILE, METRICS)
    return table


_METHOD_ORDER = ["greedy", "majority_vote", "best_of_n_ppm", "mcts_ppm", "mcts_ppm_vote", "control"]


def _method(row: dict) -> str:
    return label(row["method"], row["n"])


def _markdown(corner: str, keys: Iterable, columns: Sequence, cell: Callable[[object, object], str]) -> str:
    """A Markdown table: one line per key, one column per column, `cell(key, column)` in each."""
    lines = [f"| {corner} | " + " | ".join(map(str, columns)) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {key} | " + " | ".join(cell(key, c) for c in columns) + " |" for key in keys]
    return "\n".join(lines)


def _percent_table(corner: str, cells: dict[tuple, float]) -> str:
    """Markdown: one line per first key, one column per second key (rounds in order, methods in
    the usual order), in %."""
    lines_keys = sorted({k[0] for k in cells})
    columns = sorted({k[1] for k in cells}, key=lambda m: (0, m) if isinstance(m, int) else (
        next((i for i, p in enumerate(_METHOD_ORDER) if m.startswith(p)), 99), m))
    return _markdown(corner, lines_keys, columns,
                     lambda key, c: f"{100 * cells[(key, c)]:.1f}" if (key, c) in cells else "-")


def accuracy_table(rows: list[dict], benchmark: str = "held_out") -> str:
    """Held-out accuracy per round (rows) and method (columns), as a Markdown table."""
    cells = {(r["round"], _method(r)): r["value"] for r in rows
             if r["benchmark"] == benchmark and r["metric"] == "accuracy" and r["method"] != "pass_at_n"}
    return _percent_table("round", cells)


def source_tables(rows: list[dict], benchmark: str = "held_out") -> str:
    """Where `benchmark` mixes sources (the generator's modules): greedy accuracy per source and
    round, and the last round's accuracy per source and method. "" for a single source."""
    prefix = per_source(benchmark, "")
    mine = [r for r in rows if r["benchmark"].startswith(prefix) and r["metric"] == "accuracy"]
    if not mine:
        return ""
    sources = {r["benchmark"][len(prefix):] for r in mine}
    # 'mathematics_dataset/numbers__gcd' reads as 'numbers__gcd' where the last parts are unique
    short = {s: s.rsplit("/", 1)[-1] for s in sources}
    name = short.get if len(set(short.values())) == len(sources) else (lambda s: s)
    greedy = {(name(r["benchmark"][len(prefix):]), r["round"]): r["value"] for r in mine if r["method"] == "greedy"}
    last = max(r["round"] for r in mine)
    methods = {(name(r["benchmark"][len(prefix):]), _method(r)): r["value"] for r in mine if r["round"] == last}
    by_round, by_method = _percent_table("source / round", greedy), _percent_table("source", methods)
    return (f"Greedy accuracy (%) per source and round:\n\n{by_round}\n\n"
            f"Round {last}, accuracy (%) per source and method (pass_at_n: any of N samples right):\n\n{by_method}")


def comparison_table(rows: list[dict], benchmark: str = "held_out") -> str:
    """Paired differences per round (rows) and comparison (columns): points, then the 95% interval."""
    mine = [r for r in rows if r["benchmark"] == benchmark and r["metric"] == COMPARISON]
    if not mine:
        return ""
    columns = list(dict.fromkeys(r["method"] for r in mine))
    cells = {(r["round"], r["method"]): f"{100 * r['value']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
             for r in mine}
    return _markdown("round", sorted({r["round"] for r in mine}), columns, lambda rnd, c: cells.get((rnd, c), "-"))


def _round_table(rows: list[dict]) -> str:
    """Search, data and PPM measurements per round."""
    wanted = [("search", "solved_share"), ("search", "generated_tokens"), ("control_rejection", "generated_tokens"),
              ("control_outcome_loop", "generated_tokens"), ("select", "sft_examples"), ("select", "step_pairs"),
              ("select", "final_pairs"), ("verify", "disagreements"), ("train_ppm", "ppm_pairwise_accuracy")]
    seconds = sorted({r["method"] for r in rows if r["metric"] == "seconds"})
    columns = [f"{m}.{k}" for m, k in wanted] + [f"{m} s" for m in seconds]
    cells: dict[tuple[int, str], float] = {}
    for r in rows:
        if (r["method"], r["metric"]) in wanted:
            cells[(r["round"], f"{r['method']}.{r['metric']}")] = r["value"]
        elif r["metric"] == "seconds":
            cells[(r["round"], f"{r['method']} s")] = r["value"]
    rounds = sorted({k[0] for k in cells})
    if not rounds:
        return ""
    columns = [c for c in columns if any((rnd, c) in cells for rnd in rounds)]  # e.g. a control not run
    return _markdown("round", rounds, columns, lambda rnd, c: _number(cells[(rnd, c)]) if (rnd, c) in cells else "-")


def _number(value: float) -> str:
    """Counts in full (261,189 tokens, not 2.61e+05); shares and seconds to 3 significant digits."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def summarize(
    history: str | ArtifactRef,
    policy: str | ArtifactRef,
    ppm: str | ArtifactRef,
    *,
    summary_path: str | Path,
    report_path: str | Path,
    config: RunConfig,
) -> str:
    """Write the Markdown summary and the HTML report; returns the accuracy table."""
    rows = _read_metrics(ArtifactRef.of(history), HISTORY_FILE)
    table = accuracy_table(rows)
    lineage = {name: audit(ArtifactRef.of(ref).path or ArtifactRef.of(ref).uri) for name, ref in
               (("policy", policy), ("ppm", ppm))}
    parts = [
        f"# Self-evolution run: {config.name}",
        f"Held-out accuracy (%) per round and method (round 0 is the base model; N after @):\n\n{table}",
        f"Search, data and time per round:\n\n{_round_table(rows)}",
    ]
    if comparisons := comparison_table(rows):
        parts.insert(2, "Paired differences on the held-out problems (points, first minus second, with the "
                        f"95% interval from the problems on which the two disagree):\n\n{comparisons}")
    if per_source := source_tables(rows):
        parts.insert(2, per_source)
    for name, report in lineage.items():
        verdict = "all hashes verified" if report.ok else "PROBLEMS: " + "; ".join(report.problems)
        parts.append(f"Lineage of the final {name} ({verdict}):\n\n```\n{report.render()}\n```")
    Path(summary_path).write_text("\n\n".join(parts) + "\n")
    notes = "Round 0 is the base model. Controls are trained from the base model on data of the round's size."
    Path(report_path).write_text(render_report(rows, title=f"Self-evolution run: {config.name}", notes=notes))
    return table
