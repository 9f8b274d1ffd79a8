"""Answer grading: does a model's final answer equal the ground truth?

Called thousands of times per problem during search, on untrusted model output. It
never evaluates that output: answers are parsed with `ast.parse` over a whitelist into
the grader's own expression tree (parse.py, expr.py), from which sympy objects are
built node by node when needed. Plain numbers take an exact Fraction path that never
touches sympy; other expressions are compared numerically at high precision and, as a
last resort, with sympy.simplify, under a time limit (symbolic.py). Anything that
times out or does not parse is "not equal", never an exception.

    >>> grade(r"... so the answer is $\\boxed{\\frac{1}{2}}$.", "0.5")
    Grade(answer='\\\\frac{1}{2}', correct=True)

Modules: extract (the last \\boxed), normalize (cleaning, structure, voting keys), latex
and parse (text -> expression tree), expr (the tree), numeric (evaluating it),
symbolic (equality under a time limit), match (answers_match and its rules).
"""

from __future__ import annotations

from dataclasses import dataclass

from .extract import extract_boxed
from .match import answers_match
from .normalize import normalize_answer

__all__ = ["Grade", "grade", "extract_boxed", "normalize_answer", "answers_match"]


@dataclass(frozen=True)
class Grade:
    answer: str | None  # extracted answer (None when the text has no boxed answer)
    correct: bool


def grade(text: str, truth: str) -> Grade:
    """Extract the boxed answer from a whole trajectory/answer text and compare with truth."""
    answer = extract_boxed(text)
    return Grade(answer=answer, correct=answers_match(answer, truth))
