"""The grader's own small expression tree, built by parse.py and read by symbolic.py.

Covers numbers (exact `Fraction`s), symbols, the constants pi/e/i/oo, sums,
products, negation, division, powers and one-argument whitelisted functions. The
constructors fold constant rational arithmetic exactly (so `\\frac{-3}{4}`,
`-\\frac{3}{4}` and `-0.75` are all `Num(-3/4)`), with size limits so that folding
cannot be made to build huge integers. `key` prints a tree unambiguously, with the
terms of sums and products sorted, for use as a majority-voting key. No sympy here.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .latex import Unparseable

__all__ = [
    "Expr", "Num", "Sym", "Const", "Add", "Mul", "Neg", "Div", "Pow", "Call",
    "add", "mul", "neg", "div", "power", "key", "free_symbols", "has_infinity",
    "MAX_EXPONENT",
]

MAX_EXPONENT = 1000
# A folded power may have at most this many bits in numerator plus denominator.
MAX_FOLDED_BITS = 10_000


@dataclass(frozen=True)
class Num:
    value: Fraction


@dataclass(frozen=True)
class Sym:
    name: str


@dataclass(frozen=True)
class Const:
    name: str  # "pi", "e", "i" or "oo"


@dataclass(frozen=True)
class Add:
    terms: tuple[Expr, ...]


@dataclass(frozen=True)
class Mul:
    factors: tuple[Expr, ...]


@dataclass(frozen=True)
class Neg:
    operand: Expr


@dataclass(frozen=True)
class Div:
    numerator: Expr
    denominator: Expr


@dataclass(frozen=True)
class Pow:
    base: Expr
    exponent: Expr


@dataclass(frozen=True)
class Call:
    function: str
    argument: Expr


Expr = Num | Sym | Const | Add | Mul | Neg | Div | Pow | Call


def neg(operand: Expr) -> Expr:
    if isinstance(operand, Num):
        return Num(-operand.value)
    if isinstance(operand, Neg):
        return operand.operand
    return Neg(operand)


def add(left: Expr, right: Expr) -> Expr:
    terms = _flatten(Add, "terms", left, right)
    if all(isinstance(t, Num) for t in terms):
        return Num(sum((t.value for t in terms), Fraction(0)))
    return Add(terms)


def mul(left: Expr, right: Expr) -> Expr:
    factors = _flatten(Mul, "factors", left, right)
    if all(isinstance(f, Num) for f in factors):
        product = Fraction(1)
        for factor in factors:
            product *= factor.value
        return Num(product)
    return Mul(factors)


def div(numerator: Expr, denominator: Expr) -> Expr:
    if isinstance(denominator, Num) and denominator.value == 0:
        raise Unparseable("division by zero")
    if isinstance(numerator, Num) and isinstance(denominator, Num):
        return Num(numerator.value / denominator.value)
    return Div(numerator, denominator)


def power(base: Expr, exponent: Expr) -> Expr:
    """Callers have already bounded constant exponents by MAX_EXPONENT (parse.py)."""
    if isinstance(base, Num) and isinstance(exponent, Num) and exponent.value.denominator == 1:
        b, e = base.value, exponent.value.numerator
        if b == 0 and e < 0:
            raise Unparseable("division by zero")
        if (b.numerator.bit_length() + b.denominator.bit_length()) * abs(e) > MAX_FOLDED_BITS:
            raise Unparseable("power too large")
        return Num(b**e)
    return Pow(base, exponent)


def _flatten(kind: type, field: str, left: Expr, right: Expr) -> tuple[Expr, ...]:
    out: list[Expr] = []
    for part in (left, right):
        out.extend(getattr(part, field) if isinstance(part, kind) else (part,))
    return tuple(out)


def key(expr: Expr) -> str:
    """Unambiguous canonical text: every compound operand is parenthesised."""
    match expr:
        case Num(value):
            return str(value)
        case Sym(name) | Const(name):
            return name
        case Add(terms):
            return "+".join(sorted(_operand(t) for t in terms))
        case Mul(factors):
            return "*".join(sorted(_operand(f) for f in factors))
        case Neg(operand):
            return f"-{_operand(operand)}"
        case Div(numerator, denominator):
            return f"{_operand(numerator)}/{_operand(denominator)}"
        case Pow(base, exponent):
            return f"{_operand(base)}^{_operand(exponent)}"
        case Call(function, argument):
            return f"{function}({key(argument)})"
    raise TypeError(expr)


def _operand(expr: Expr) -> str:
    simple = isinstance(expr, (Sym, Const, Call)) or (
        isinstance(expr, Num) and expr.value.denominator == 1 and expr.value >= 0
    )
    return key(expr) if simple else f"({key(expr)})"


def _children(expr: Expr) -> tuple[Expr, ...]:
    match expr:
        case Add(terms):
            return terms
        case Mul(factors):
            return factors
        case Neg(operand) | Call(_, operand):
            return (operand,)
        case Div(a, b) | Pow(a, b):
            return (a, b)
    return ()


def free_symbols(expr: Expr) -> frozenset[str]:
    if isinstance(expr, Sym):
        return frozenset({expr.name})
    return frozenset().union(*(free_symbols(c) for c in _children(expr)))


def has_infinity(expr: Expr) -> bool:
    return expr == Const("oo") or any(has_infinity(c) for c in _children(expr))
