"""answers_match: whether a predicted answer is mathematically the same as the truth.

Works on the structures from normalize.py. Equal keys always match (so equal
normalize_answer keys imply a match). Otherwise:
  * collections need the same brackets and length; ordered ones (tuples, intervals)
    match element by element, unordered ones (sets, bare lists, unions) as multisets;
  * two rational numbers are compared exactly with Fraction, without sympy;
  * other expressions go to symbolic.expressions_equal, under the time limit;
  * percent rule: when exactly one side is written with %, `X%` matches both `X` and
    `X/100` (`50\\%` matches `50` and `0.5`, as common graders do); when both are, the
    numbers before the signs must match (`50\\%` does not match `0.5\\%`).
There is no numeric tolerance: `0.33` does not match `1/3`, nor `3.14` match `\\pi`.
"""

from __future__ import annotations

import time
from fractions import Fraction

from .expr import Expr, Num, div
from .normalize import Answer, Atom, Collection, parse_answer
from .symbolic import expressions_equal

__all__ = ["answers_match"]


def answers_match(predicted: str | None, truth: str, *, timeout_s: float = 1.0) -> bool:
    """True when predicted is mathematically the same answer as truth."""
    if predicted is None:
        return False
    deadline = time.monotonic() + timeout_s
    try:
        return _match(parse_answer(predicted), parse_answer(truth), deadline)
    except Exception:  # untrusted model output: any failure to decide means "not equal"
        return False


def _match(predicted: Answer, truth: Answer, deadline: float) -> bool:
    if predicted.key == truth.key:
        return True
    if isinstance(predicted, Atom) and isinstance(truth, Atom):
        return _atoms_match(predicted, truth, deadline)
    if not (isinstance(predicted, Collection) and isinstance(truth, Collection)):
        return False
    if (predicted.open, predicted.close) != (truth.open, truth.close):
        return False
    if len(predicted.items) != len(truth.items):
        return False
    if predicted.ordered:
        return all(_match(p, t, deadline) for p, t in zip(predicted.items, truth.items))
    return _multisets_match(predicted.items, truth.items, deadline)


def _multisets_match(
    predicted: tuple[Answer, ...], truth: tuple[Answer, ...], deadline: float
) -> bool:
    """Greedy pairing, identical keys first; enough because matching is an equivalence
    on everything but percent atoms."""
    unmatched = list(truth)
    pending = []
    for item in predicted:
        same = next((t for t in unmatched if t.key == item.key), None)
        if same is None:
            pending.append(item)
        else:
            unmatched.remove(same)
    for item in pending:
        partner = next((t for t in unmatched if _match(item, t, deadline)), None)
        if partner is None:
            return False
        unmatched.remove(partner)
    return True


def _atoms_match(predicted: Atom, truth: Atom, deadline: float) -> bool:
    if predicted.expr is None or truth.expr is None:
        return False  # text and unparseable answers match only by key
    return any(
        _exprs_equal(p, t, deadline)
        for p in _readings(predicted, truth)
        for t in _readings(truth, predicted)
    )


def _readings(atom: Atom, other: Atom) -> tuple[Expr, ...]:
    if atom.percent and not other.percent:
        return atom.expr, div(atom.expr, Num(Fraction(100)))
    return (atom.expr,)


def _exprs_equal(a: Expr, b: Expr, deadline: float) -> bool:
    if isinstance(a, Num) and isinstance(b, Num):
        return a.value == b.value
    return expressions_equal(a, b, deadline)
