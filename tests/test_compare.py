"""Paired comparisons between a round's methods: the interval and which methods are compared.

    pytest tests/test_compare.py
"""

from __future__ import annotations

import math

import pytest

from rstar_math.evaluation.compare import METRIC, comparison_rows
from rstar_math.evaluation.metrics import paired_difference, wilson_interval


def _verdicts(both: int, only_first: int, only_second: int, neither: int) -> tuple[list[bool], list[bool]]:
    first = [True] * both + [True] * only_first + [False] * only_second + [False] * neither
    second = [True] * both + [False] * only_first + [True] * only_second + [False] * neither
    return first, second


def test_identical_verdicts_differ_by_nothing():
    difference, low, high = paired_difference(*_verdicts(20, 0, 0, 19))
    assert difference == 0 and -0.01 < low <= 0 <= high < 0.01


def test_swapping_the_methods_mirrors_the_interval():
    first, second = _verdicts(200, 9, 2, 62)
    difference, low, high = paired_difference(first, second)
    assert difference == pytest.approx(7 / 273) and low < difference < high
    assert paired_difference(second, first) == pytest.approx((-difference, -high, -low))


def test_the_interval_narrows_with_agreement():
    """Same accuracies (7 problems apart), but here the two methods disagree on 7 problems and
    there on 27: the paired interval, unlike the two accuracies' own intervals, sees it."""
    _, low_agreeing, high_agreeing = paired_difference(*_verdicts(200, 7, 0, 66))
    _, low_disagreeing, high_disagreeing = paired_difference(*_verdicts(190, 17, 10, 56))
    assert low_agreeing > 0 > low_disagreeing
    assert high_agreeing - low_agreeing < high_disagreeing - low_disagreeing


def test_large_samples_agree_with_the_normal_approximation():
    n, only_first, only_second = 10_000, 1000, 800
    difference, low, high = paired_difference(*_verdicts(5000, only_first, only_second, n - 6800))
    half = 1.96 * math.sqrt(only_first + only_second - (only_first - only_second) ** 2 / n) / n
    assert (low, high) == pytest.approx((difference - half, difference + half), abs=2e-4)


def test_uncorrelated_verdicts_give_newcombes_independent_interval():
    """With no correlation between the two verdicts the paired interval is the unpaired one:
    each side from the two Wilson intervals alone."""
    first, second = _verdicts(10, 10, 10, 10)  # phi = (10*10 - 10*10) / ... = 0
    difference, low, high = paired_difference(first, second)
    (l1, u1), (l2, u2) = wilson_interval(20, 40), wilson_interval(20, 40)
    assert difference == 0
    assert low == pytest.approx(-math.hypot(0.5 - l1, u2 - 0.5)) and high == pytest.approx(math.hypot(u1 - 0.5, 0.5 - l2))


def test_all_against_none_stays_within_bounds():
    difference, low, high = paired_difference([True] * 39, [False] * 39)
    assert difference == 1 and 0.8 < low < high == 1
    assert paired_difference([], []) == (0.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="different lengths"):
        paired_difference([True], [True, False])


def _answers(method: str, n: int | None, correct: list[bool], benchmark: str = "held_out") -> list[dict]:
    return [{"benchmark": benchmark, "problem_id": f"p{i}", "source": "s", "method": method, "n": n, "answer": "1",
             "correct": c} for i, c in enumerate(correct)]


def test_comparisons_pair_each_method_with_what_it_must_beat():
    answers = (_answers("greedy", None, [True, False, False, True])
               + _answers("majority_vote", 2, [True, True, False, False]) + _answers("majority_vote", 4, [True] * 4)
               + _answers("mcts_ppm", 2, [True, True, True, False]) + _answers("mcts_ppm", 4, [True, True, True, True])
               + _answers("mcts_ppm_vote", 2, [False] * 4)
               + _answers("control_rejection", None, [False, False, False, True])
               + _answers("greedy", None, [False] * 4, benchmark="held_out/mathematics_dataset/s"))  # one source: skipped
    rows = {r.method: r for r in comparison_rows("run", 3, answers)}
    assert list(rows) == ["mcts_ppm@2 vs majority_vote@2", "mcts_ppm@4 vs majority_vote@4", "mcts_ppm@2 vs greedy",
                          "mcts_ppm@4 vs greedy", "greedy vs control_rejection"]  # no continued control answered
    assert {r.metric for r in rows.values()} == {METRIC} and {r.round for r in rows.values()} == {3}
    assert rows["mcts_ppm@2 vs majority_vote@2"].value == pytest.approx(0.25)
    assert rows["mcts_ppm@4 vs majority_vote@4"].value == 0
    assert rows["mcts_ppm@2 vs greedy"].value == pytest.approx(0.25)
    assert rows["greedy vs control_rejection"].value == pytest.approx(0.25)
    assert all(r.count == 4 and r.ci_low <= r.value <= r.ci_high for r in rows.values())


def test_only_problems_both_methods_answered_are_compared():
    answers = _answers("greedy", None, [True, True, False]) + _answers("control_continued", None, [False, True])
    (row,) = comparison_rows("run", 1, answers)
    assert row.method == "greedy vs control_continued" and row.count == 2 and row.value == pytest.approx(0.5)
