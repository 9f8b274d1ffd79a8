"""Choosing one final answer from several candidate trajectories.

Candidates are (answer, score) pairs; an answer of None (no boxed answer) never wins.
Answers are grouped by their normalised form (grading.normalize_answer), so `0.5`
and `\\frac{1}{2}` are one vote. Ties go to the group seen first, so a choice is
deterministic for a given order of candidates.
"""

from __future__ import annotations

from typing import Sequence

from rstar_math.grading import normalize_answer

Candidate = tuple[str | None, float]


def _groups(candidates: Sequence[Candidate], weight) -> dict[str, tuple[float, str]]:
    """normalised answer -> (total weight, first raw answer seen)."""
    groups: dict[str, tuple[float, str]] = {}
    for answer, score in candidates:
        if answer is None:
            continue
        key = normalize_answer(answer)
        total, first = groups.get(key, (0.0, answer))
        groups[key] = (total + weight(score), first)
    return groups


def _winner(groups: dict[str, tuple[float, str]]) -> str | None:
    best = None
    for total, first in groups.values():  # dicts keep insertion order: ties go to the earliest group
        if best is None or total > best[0]:
            best = (total, first)
    return best[1] if best else None


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer."""
    return _winner(_groups([(a, 0.0) for a in answers], lambda _: 1.0))


def weighted_vote(candidates: Sequence[Candidate]) -> str | None:
    """The answer whose candidates have the largest total score, scores in [-1, 1] mapped to [0, 1]."""
    return _winner(_groups(candidates, lambda score: (score + 1.0) / 2.0))


def best_scored(candidates: Sequence[Candidate]) -> str | None:
    """The answer of the single highest-scoring candidate."""
    best = None
    for answer, score in candidates:
        if answer is not None and (best is None or score > best[1]):
            best = (answer, score)
    return best[0] if best else None
