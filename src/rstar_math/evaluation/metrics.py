"""Accuracy with a 95% confidence interval, and rows of the metrics artefact."""

from __future__ import annotations

import math
from dataclasses import dataclass


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well behaved at 0, 1 and small samples)."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def per_source(benchmark: str, source: str) -> str:
    """The benchmark name of one source's share of `benchmark`, e.g. 'held_out/mathematics_dataset/numbers__gcd'."""
    return f"{benchmark}/{source}"


def is_whole(benchmark: str) -> bool:
    """A benchmark as configured, not one source's share of it (see per_source)."""
    return "/" not in benchmark


@dataclass(frozen=True)
class MetricRow:
    """One row of the METRICS schema."""

    run_id: str
    round: int
    benchmark: str
    method: str
    metric: str
    value: float
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    count: int | None = None


def accuracy_row(run_id: str, round: int, benchmark: str, method: str, n: int | None, correct: list[bool]) -> MetricRow:
    low, high = wilson_interval(sum(correct), len(correct))
    value = sum(correct) / len(correct) if correct else 0.0
    return MetricRow(run_id, round, benchmark, method, "accuracy", value, n, low, high, len(correct))
