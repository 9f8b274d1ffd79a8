"""Deciding whether two non-rational expression trees are equal, under a time limit.

Order of checks, cheapest first:
  1. identical trees are equal; trees containing infinity are equal only if identical;
  2. a complex-float probe at a few seeded random points (symbols get reals of both
     signs, 0.5 <= |v| <= 2.5) rejects clearly different answers in well under 1 ms;
  3. the same points in 50-digit mpmath decide: agreement to 35 digits at every usable
     point is "equal". For answers with free symbols this is the random-point identity
     test; for constants it separates `\\pi` from `3.14159265358979` and `0.33` from
     `1/3`, which a float check cannot. It runs before sympy because `simplify` is
     slow (tens of ms) and misses true identities;
  4. only when no point was usable (every point hit a pole or overflow) and we are on
     the main thread: `sympy.simplify(a - b) == 0`, on sympy objects built from the
     tree (never from a string).

Time limit: on the main thread, steps 3-4 run under SIGALRM (signal.setitimer), nested
correctly inside any alarm already set (pytest-timeout uses one). Signals cannot be
used off the main thread, so there step 4 is skipped and steps 2-3 are bounded by
construction instead (small trees, capped exponents and magnitudes, five points, a
deadline checked between points). A timeout means "not equal". The one-off import of
sympy (about a second, on the first comparison that needs step 4) is not counted.
"""

from __future__ import annotations

import functools
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from enum import Enum
from fractions import Fraction
from types import ModuleType
from typing import Any

from .expr import Add, Call, Const, Div, Expr, Mul, Neg, Num, Pow, Sym, free_symbols, has_infinity
from .numeric import EVALUATION_ERRORS, FLOAT, Backend, evaluate, high_precision

__all__ = ["expressions_equal", "to_sympy", "run_with_time_limit", "TIMED_OUT"]

POINTS = 5
FLOAT_REJECT_TOLERANCE = 1e-6
HIGH_PRECISION_TOLERANCE = 1e-35
_SEED = 20250101


class Verdict(Enum):
    EQUAL = "equal"
    DIFFERENT = "different"
    UNKNOWN = "unknown"


def expressions_equal(a: Expr, b: Expr, deadline: float) -> bool:
    """Whether a and b are the same number or function; False on timeout. deadline is
    a time.monotonic() value."""
    if a == b:
        return True
    if has_infinity(a) or has_infinity(b):
        return False
    points = _sample_points(free_symbols(a) | free_symbols(b))
    if _numeric_verdict(a, b, FLOAT, points, deadline) is Verdict.DIFFERENT:
        return False
    if not _can_use_alarm():
        return _high_precision_verdict(a, b, points, deadline) is Verdict.EQUAL
    verdict = run_with_time_limit(
        lambda: _high_precision_verdict(a, b, points, deadline), deadline - time.monotonic()
    )
    if verdict is not Verdict.UNKNOWN:
        return verdict is Verdict.EQUAL
    if time.monotonic() >= deadline:
        return False
    sympy = _load_sympy()
    same = run_with_time_limit(lambda: _sympy_equal(sympy, a, b), deadline - time.monotonic())
    return same is True


def _sample_points(symbols: frozenset[str]) -> list[dict[str, Fraction]]:
    if not symbols:
        return [{}]
    # A fixed seed keeps grades reproducible; sorted names make the points independent
    # of set iteration order.
    rng = random.Random(_SEED)
    names = sorted(symbols)
    return [
        {n: rng.choice((-1, 1)) * Fraction(rng.randint(50_000, 250_000), 100_000) for n in names}
        for _ in range(POINTS)
    ]


def _high_precision_verdict(
    a: Expr, b: Expr, points: list[dict[str, Fraction]], deadline: float
) -> Verdict:
    return _numeric_verdict(a, b, high_precision(), points, deadline)


def _numeric_verdict(
    a: Expr, b: Expr, backend: Backend, points: list[dict[str, Fraction]], deadline: float
) -> Verdict:
    tolerance = FLOAT_REJECT_TOLERANCE if backend is FLOAT else HIGH_PRECISION_TOLERANCE
    usable = 0
    for point in points:
        if time.monotonic() > deadline:
            return Verdict.UNKNOWN
        values = {name: backend.number(v) for name, v in point.items()}
        try:
            va, vb = evaluate(a, values, backend), evaluate(b, values, backend)
        except EVALUATION_ERRORS:
            continue
        usable += 1
        if abs(va - vb) > tolerance * max(1, abs(va), abs(vb)):
            return Verdict.DIFFERENT
    return Verdict.EQUAL if usable else Verdict.UNKNOWN


@functools.cache
def _load_sympy() -> ModuleType:
    """sympy, imported on first need (about a second; most runs never need it) and outside
    any alarm: `simplify` imports more of sympy on its first call, and an import cut
    short by the alarm could leave those modules half-initialised."""
    import sympy

    sympy.simplify(sympy.Symbol("x") + 1)
    return sympy


def _sympy_equal(sympy: ModuleType, a: Expr, b: Expr) -> bool:
    return sympy.simplify(to_sympy(sympy, a) - to_sympy(sympy, b)) == 0


def to_sympy(sympy: ModuleType, expr: Expr) -> Any:
    """The sympy object for a tree, built node by node (sympy never parses a string)."""
    constants = {"pi": sympy.pi, "e": sympy.E, "i": sympy.I, "oo": sympy.oo}
    functions = {
        "sqrt": sympy.sqrt, "exp": sympy.exp, "log": sympy.log, "sin": sympy.sin,
        "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec,
        "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
        "abs": sympy.Abs,
    }

    def build(node: Expr) -> Any:
        match node:
            case Num(value):
                return sympy.Rational(value.numerator, value.denominator)
            case Sym(name):
                return sympy.Symbol(name)
            case Const(name):
                return constants[name]
            case Add(terms):
                return sympy.Add(*map(build, terms))
            case Mul(factors):
                return sympy.Mul(*map(build, factors))
            case Neg(operand):
                return -build(operand)
            case Div(numerator, denominator):
                return build(numerator) / build(denominator)
            case Pow(base, exponent):
                return sympy.Pow(build(base), build(exponent))
            case Call(function, argument):
                return functions[function](build(argument))
        raise TypeError(node)

    return build(expr)


# --- time limit -------------------------------------------------------------------


_RETRY_S = 0.05
"""How often the alarm fires again once due, until the timed function has stopped."""


class _Timeout(BaseException):
    """Raised by our SIGALRM handler. A BaseException so that library code's
    `except Exception` cannot swallow it."""


TIMED_OUT = object()


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def run_with_time_limit(function: Callable[[], Any], seconds: float) -> Any:
    """function() or TIMED_OUT if it runs longer than seconds. Main thread only.

    Any alarm already pending (e.g. pytest-timeout's) is kept: ours fires no later than
    it would have, and it is re-armed afterwards with the time it had left."""
    if seconds <= 0:
        return TIMED_OUT
    armed = [True]

    def on_alarm(signum: int, frame: Any) -> None:
        # Raise on every tick until function() is left: a raise that lands in a __del__ or a
        # gc callback is swallowed by the interpreter, and one raise would then be lost.
        # Never once we are tearing down.
        if armed[0]:
            raise _Timeout

    previous_unraisable = sys.unraisablehook

    def on_unraisable(unraisable: Any) -> None:
        # A swallowed raise of ours is expected (the next tick follows); reporting it would
        # format a traceback, slow enough for that tick to land inside the reporting hook.
        if not isinstance(unraisable.exc_value, _Timeout):
            previous_unraisable(unraisable)

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    sys.unraisablehook = on_unraisable  # after the one call that can fail before the try
    started = time.monotonic()
    previous_delay, previous_interval = 0.0, 0.0
    try:
        previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds, _RETRY_S)
        if 0 < previous_delay < seconds:
            signal.setitimer(signal.ITIMER_REAL, previous_delay, _RETRY_S)
        try:
            return function()
        finally:
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return TIMED_OUT
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)  # again: a tick may have cut the first one short
        signal.signal(signal.SIGALRM, previous_handler)
        sys.unraisablehook = previous_unraisable
        if previous_delay > 0:
            remaining = previous_delay - (time.monotonic() - started)
            # Already due: fire it almost at once rather than lose it.
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), previous_interval)
