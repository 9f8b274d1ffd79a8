"""Accuracy with a 95% confidence interval, paired differences between methods, and rows of the metrics artefact."""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def paired_difference(first: Sequence[bool], second: Sequence[bool], z: float = 1.96) -> tuple[float, float, float]:
    """Accuracy of `first` minus accuracy of `second`, two methods' verdicts on the same problems,
    with a 95% interval: Newcombe's score method for paired proportions (1998, method 10), the two
    Wilson intervals combined through the verdicts' correlation. Unlike the plain normal
    approximation it stays sound with the few discordant problems a small benchmark has."""
    if len(first) != len(second):
        raise ValueError(f"paired verdicts of different lengths: {len(first)} and {len(second)}")
    n = len(first)
    if n == 0:
        return 0.0, -1.0, 1.0
    both = sum(a and b for a, b in zip(first, second))
    only_first = sum(a and not b for a, b in zip(first, second))
    only_second = sum(b and not a for a, b in zip(first, second))
    neither = n - both - only_first - only_second
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    (l1, u1), (l2, u2) = wilson_interval(both + only_first, n, z), wilson_interval(both + only_second, n, z)
    margins = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = (both * neither - only_first * only_second) / math.sqrt(margins) if margins else 0.0
    difference = p1 - p2
    low = difference - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = difference + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return difference, max(-1.0, low), min(1.0, high)
