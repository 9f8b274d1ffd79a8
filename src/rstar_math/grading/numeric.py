"""Evaluating an expression tree at a point, in complex floats or 50-digit mpmath.

Both backends compute with principal complex branches, so `sqrt(-2)` or `log(-1)` at
a sample point are values, not errors. Work is bounded by construction: trees are
small (parse.py caps their size), powers and growing functions refuse arguments above
LARGE_ARGUMENT, and any intermediate value larger than the backend's bound makes the
point unusable (Unusable) instead of growing further. That bound is what lets the
off-main-thread path, which has no alarm, still finish promptly. No sympy here.
"""

from __future__ import annotations

import cmath
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import mpmath

from .expr import Add, Call, Const, Div, Expr, Mul, Neg, Num, Pow, Sym

__all__ = ["Backend", "Unusable", "FLOAT", "high_precision", "evaluate", "EVALUATION_ERRORS"]

LARGE_ARGUMENT = 1e4
# Functions that grow exponentially in their argument (on the complex plane).
_GROWING = frozenset({"exp", "sin", "cos", "tan", "cot", "sec", "csc"})


class Unusable(ArithmeticError):
    """This point gives no usable value (overflow, a pole, an argument too large)."""


EVALUATION_ERRORS = (ArithmeticError, ValueError)


@dataclass(frozen=True)
class Backend:
    number: Callable[[Fraction], Any]
    constants: Mapping[str, Any]
    functions: Mapping[str, Callable[[Any], Any]]
    bounded: Callable[[Any], bool]  # finite and small enough to keep computing with
    real_root: Callable[[Any, int], Any]  # the positive q-th root of a positive real


def _float_number(value: Fraction) -> complex:
    return complex(float(value))


FLOAT = Backend(
    number=_float_number,
    constants={"pi": complex(cmath.pi), "e": complex(cmath.e), "i": 1j},
    functions={
        "sqrt": cmath.sqrt, "exp": cmath.exp, "log": cmath.log,
        "sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan,
        "cot": lambda z: 1 / cmath.tan(z), "sec": lambda z: 1 / cmath.cos(z),
        "csc": lambda z: 1 / cmath.sin(z),
        "arcsin": cmath.asin, "arccos": cmath.acos, "arctan": cmath.atan,
        "abs": lambda z: complex(abs(z)),
    },
    bounded=lambda z: cmath.isfinite(z) and abs(z) < 1e300,
    real_root=lambda x, q: x ** (1 / q),
)

_local = threading.local()


def high_precision() -> Backend:
    """A 50-digit backend on this thread's own mpmath context (the global one is shared)."""
    backend = getattr(_local, "backend", None)
    if backend is None:
        ctx = mpmath.MPContext()
        ctx.dps = 50
        backend = Backend(
            number=lambda v: ctx.mpf(v.numerator) / v.denominator,
            constants={"pi": ctx.mpf(ctx.pi), "e": ctx.mpf(ctx.e), "i": ctx.mpc(0, 1)},
            functions={
                "sqrt": ctx.sqrt, "exp": ctx.exp, "log": ctx.log,
                "sin": ctx.sin, "cos": ctx.cos, "tan": ctx.tan,
                "cot": ctx.cot, "sec": ctx.sec, "csc": ctx.csc,
                "arcsin": ctx.asin, "arccos": ctx.acos, "arctan": ctx.atan,
                "abs": abs,
            },
            bounded=lambda z: ctx.isfinite(z) and ctx.mag(z) < 4000,
            real_root=ctx.root,
        )
        _local.backend = backend
    return backend


def _odd_root(base: Any, exponent: Expr, backend: Backend) -> Any:
    """(-8)**(1/3) is -2 here, not the principal complex root: answers like
    `\\sqrt[3]{-2}` mean the real root. None when the rule does not apply."""
    if not (isinstance(exponent, Num) and exponent.value.denominator % 2 == 1):
        return None
    if base.imag != 0 or base.real >= 0:
        return None
    p, q = exponent.value.numerator, exponent.value.denominator
    magnitude = backend.real_root(-base.real, q) ** p
    return -magnitude if p % 2 else magnitude


def evaluate(expr: Expr, point: Mapping[str, Any], backend: Backend) -> Any:
    """Value of expr with symbols taken from point; raises one of EVALUATION_ERRORS."""
    match expr:
        case Num(value):
            result = backend.number(value)
        case Sym(name):
            result = point[name]
        case Const(name):
            if name not in backend.constants:
                raise Unusable(name)
            result = backend.constants[name]
        case Add(terms):
            result = evaluate(terms[0], point, backend)
            for term in terms[1:]:
                result = result + evaluate(term, point, backend)
        case Mul(factors):
            result = evaluate(factors[0], point, backend)
            for factor in factors[1:]:
                result = result * evaluate(factor, point, backend)
        case Neg(operand):
            result = -evaluate(operand, point, backend)
        case Div(numerator, denominator):
            den = evaluate(denominator, point, backend)
            if den == 0:
                raise Unusable("pole")
            result = evaluate(numerator, point, backend) / den
        case Pow(base, exponent):
            b, e = evaluate(base, point, backend), evaluate(exponent, point, backend)
            if abs(e) > LARGE_ARGUMENT or (b == 0 and e.real <= 0):
                raise Unusable("power")
            result = _odd_root(b, exponent, backend)
            if result is None:
                result = b**e
        case Call(function, argument):
            a = evaluate(argument, point, backend)
            if function in _GROWING and abs(a) > LARGE_ARGUMENT:
                raise Unusable(function)
            result = backend.functions[function](a)
        case _:
            raise TypeError(expr)
    if not backend.bounded(result):
        raise Unusable("too large")
    return result
