"""Safe parsing of one scalar answer into an expression tree (expr.py).

latex.py rewrites the text as Python source; `ast.parse` only builds a syntax tree
(it runs nothing), and this module walks that tree over a whitelist: numeric
literals (taken from their source text, so `0.1` is exactly 1/10), symbol names,
the constants, + - * / ** and unary signs, and calls of whitelisted functions with
one argument. Anything else (attributes, subscripts, strings, other calls, lambdas,
keywords, comparisons, tuples) is refused, as are trees over MAX_NODES nodes and
powers whose constant exponent exceeds MAX_EXPONENT in magnitude (`10**10**10`).
sympy is never given a string.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

from .expr import MAX_EXPONENT, Call, Const, Expr, Num, Sym, add, div, free_symbols, mul, neg, power
from .latex import FUNCTIONS, GREEK_NAMES, MAX_LITERAL_CHARS, Unparseable, to_python
from .numeric import EVALUATION_ERRORS, FLOAT, evaluate

__all__ = ["parse_expression", "MAX_NODES"]

MAX_NODES = 200

_CONSTANT_NAMES = {"pi": "pi", "oo": "oo", "e": "e", "i": "i", "I": "i"}
_SYMBOL = re.compile(r"(?P<stem>[A-Za-z]+)(?:_[A-Za-z0-9]{1,3})?\Z")
# Whole-answer numbers skip latex.py and ast entirely: the common case must be cheap.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:/\d+)?\Z")


def parse_expression(text: str) -> Expr:
    """The expression tree for text; raises Unparseable."""
    text = text.strip()
    if _PLAIN_NUMBER.match(text):
        if len(text) > MAX_LITERAL_CHARS:
            raise Unparseable("number literal too long")
        try:
            return Num(Fraction(text))
        except ZeroDivisionError:
            raise Unparseable("division by zero") from None
    source = to_python(text)
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise Unparseable(f"not an expression: {error}") from None
    for count, _ in enumerate(ast.walk(tree)):
        if count > MAX_NODES:
            raise Unparseable("expression too large")
    return _Builder(source).build(tree.body)


class _Builder:
    def __init__(self, source: str) -> None:
        self.source = source

    def build(self, node: ast.AST) -> Expr:
        match node:
            case ast.Constant(value=int() | float()) if not isinstance(node.value, bool):
                # The literal's own text, not the float ast made of it, keeps decimals exact.
                return Num(Fraction(self.source[node.col_offset : node.end_col_offset]))
            case ast.Name(id=name):
                return self.name(name)
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                return neg(self.build(operand))
            case ast.UnaryOp(op=ast.UAdd(), operand=operand):
                return self.build(operand)
            case ast.BinOp(left=left, op=op, right=right):
                return self.binary(op, self.build(left), self.build(right))
            case ast.Call(func=ast.Name(id=function), args=[argument], keywords=[]) if (
                function in FUNCTIONS
            ):
                return Call(function, self.build(argument))
        raise Unparseable(f"not allowed: {type(node).__name__}")

    @staticmethod
    def binary(op: ast.operator, a: Expr, b: Expr) -> Expr:
        match op:
            case ast.Add():
                return add(a, b)
            case ast.Sub():
                return add(a, neg(b))
            case ast.Mult():
                return mul(a, b)
            case ast.Div():
                return div(a, b)
            case ast.Pow():
                _check_exponent(b)
                return power(a, b)
        raise Unparseable(f"not allowed: {type(op).__name__}")

    @staticmethod
    def name(name: str) -> Expr:
        if name in _CONSTANT_NAMES:
            return Const(_CONSTANT_NAMES[name])
        symbol = _SYMBOL.match(name)
        if symbol and (len(symbol["stem"]) == 1 or symbol["stem"] in GREEK_NAMES):
            return Sym(name)
        raise Unparseable(f"not a symbol name: {name}")


def _check_exponent(exponent: Expr) -> None:
    """Constant exponents must be at most MAX_EXPONENT in size, so nothing downstream
    (fraction folding, sympy, mpmath) is asked for a number with billions of digits."""
    if free_symbols(exponent):
        return
    if isinstance(exponent, Num):
        size = abs(exponent.value)
    else:
        try:
            size = abs(evaluate(exponent, {}, FLOAT))
        except EVALUATION_ERRORS:
            raise Unparseable("exponent cannot be bounded") from None
    if size > MAX_EXPONENT:
        raise Unparseable("exponent too large")
