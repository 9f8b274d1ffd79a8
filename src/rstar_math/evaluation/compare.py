"""Paired comparisons between methods of one round, problem by problem, each with a 95% interval.

    rows = comparison_rows(run_id, round, answers)   # answers: evaluation + controls' answers.jsonl rows

Every method of a round answers the same held-out problems, so the questions a run must answer,
whether MCTS + PPM beats majority vote and greedy, and whether the round's policy beats each
control, are paired: a difference of a few problems in accuracy is decided by the problems on
which the two disagree, not by the two accuracies' own intervals. A row's method reads
"first vs second" and its value is first's accuracy minus second's (metric `paired_difference`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from rstar_math.evaluation.metrics import MetricRow, is_whole, paired_difference

METRIC = "paired_difference"

COMPARISONS = (
    ("mcts_ppm", "majority_vote"),
    ("mcts_ppm", "greedy"),
    ("greedy", "control_rejection"),
    ("greedy", "control_outcome_loop"),
    ("greedy", "control_continued"),
)
"""(first, second) method pairs; methods with an N are compared at equal N (greedy has none)."""


def label(method: str, n: int | None) -> str:
    return f"{method}@{n}" if n else method


def comparison_rows(run_id: str, round: int, answers: Iterable[Mapping]) -> list[MetricRow]:
    """One row per comparison in COMPARISONS that both methods answered, per whole benchmark."""
    verdicts: dict[tuple[str, str, int | None], dict[str, bool]] = defaultdict(dict)
    for answer in answers:
        if is_whole(answer["benchmark"]):
            verdicts[(answer["benchmark"], answer["method"], answer["n"])][answer["problem_id"]] = bool(answer["correct"])
    rows = []
    for first_method, second_method in COMPARISONS:
        for (benchmark, method, n), first in sorted(verdicts.items(), key=lambda kv: (kv[0][0], kv[0][2] or 0)):
            if method != first_method:
                continue
            second_n = n if (benchmark, second_method, n) in verdicts else None
            second = verdicts.get((benchmark, second_method, second_n), {})
            problems = sorted(first.keys() & second.keys())
            if not problems:
                continue
            value, low, high = paired_difference([first[p] for p in problems], [second[p] for p in problems])
            rows.append(MetricRow(run_id, round, benchmark, f"{label(method, n)} vs {label(second_method, second_n)}",
                                  METRIC, value, n, low, high, len(problems)))
    return rows
