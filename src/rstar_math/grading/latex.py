"""Rewriting one scalar answer (LaTeX or Python style) as Python expression source.

The output goes only to `ast.parse` and the whitelist in parse.py; nothing here or
there evaluates it. Covered: numbers (incl. `1e-3`), single-letter and Greek symbols
with short subscripts (`x_1`, `\\theta`), `\\frac`/`\\dfrac` including the `\\frac12`
shorthand, `\\sqrt{..}`/`\\sqrt[n]{..}`, `^`, `**`, `\\cdot`/`\\times`/`\\div`, `{}` groups,
the functions in FUNCTIONS, the constants pi, e, i (also I) and infinity, and implicit
multiplication (`2x`, `2\\sqrt{2}`, `(x+1)(x-1)`, `xy` inside a larger expression;
not a number after a letter: `x2` or the base-11 numeral `1a3` are refused).
A function may take its argument without parentheses (`\\sin x`) and carry a power
(`\\sin^2 x` is `\\sin(x)^2`; `\\sin^{-1}` is refused, as it means arcsin).

Two readings differ from TeX on purpose: a multi-digit exponent without braces
(`x^10`) is read as the number a model meant, not as `x^1 \\cdot 0`; and `\\sin x^2`
is `\\sin(x)^2`. Not covered (the text is refused with Unparseable): relations (=, <),
`\\pm`, `|x|`, factorials, `\\binom`, `\\log_b`, matrices, and any command or
character not listed above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .extract import matching_brace

__all__ = ["Unparseable", "FUNCTIONS", "GREEK_NAMES", "KNOWN_WORDS", "to_python"]


class Unparseable(ValueError):
    """The text is not an expression this grader understands."""


FUNCTIONS = frozenset(
    "sqrt exp log sin cos tan cot sec csc arcsin arccos arctan abs".split()
)
_FUNCTION_ALIASES = {
    "ln": "log", "asin": "arcsin", "acos": "arccos", "atan": "arctan", "Abs": "abs"
}
_CONSTANT_WORDS = {"pi": "pi", "oo": "oo", "inf": "oo", "infty": "oo", "infinity": "oo"}
# Words that a run of letters may contain without making the answer plain text.
KNOWN_WORDS = frozenset(FUNCTIONS | _FUNCTION_ALIASES.keys() | _CONSTANT_WORDS.keys())
_GREEK = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi"
    " rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Phi Psi"
    " Omega".split()
)
# As Python names: `lambda` is a keyword, so that symbol is spelled `lamda` (as sympy does).
GREEK_NAMES = frozenset("lamda" if g == "lambda" else g for g in _GREEK)
_TIMES = {"cdot": "*", "times": "*", "ast": "*", "div": "/"}
_FRACTIONS = frozenset({"frac", "dfrac", "tfrac", "cfrac"})
_WORDS_LONGEST_FIRST = tuple(sorted(KNOWN_WORDS, key=len, reverse=True))

MAX_DEPTH = 30
MAX_LITERAL_CHARS = 100

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3}(?![A-Za-z0-9]))?")
_LETTERS = re.compile(r"[A-Za-z]+")
_COMMAND = re.compile(r"\\([A-Za-z]+)")
_SUBSCRIPT = re.compile(r"[A-Za-z0-9]{1,3}\Z")
_DIGITS = re.compile(r"\d+")

# Token kinds. GROUP is an already-converted parenthesised unit (a `{}` group, \frac, \sqrt).
NUM, NAME, CONST, FUNC, GROUP, OP, LPAREN, RPAREN = "NUM NAME CONST FUNC GROUP OP ( )".split()
_ENDS_ATOM = frozenset({NUM, NAME, CONST, GROUP, RPAREN})
_STARTS_ATOM = frozenset({NUM, NAME, CONST, GROUP, FUNC, LPAREN})


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


def to_python(text: str) -> str:
    """Python source for one scalar answer; raises Unparseable."""
    return _convert(text, depth=0)


def _convert(text: str, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise Unparseable("nested too deeply")
    return _join(_tokens(text, depth))


def _is_digit(char: str) -> bool:
    """ASCII digits only: str.isdigit() is also true of '¹' or '٣', which no number literal here matches."""
    return len(char) == 1 and "0" <= char <= "9"


def _tokens(text: str, depth: int) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
        elif _is_digit(char) or (char == "." and _is_digit(text[i + 1 : i + 2])):
            match = _NUMBER.match(text, i)
            if len(match.group()) > MAX_LITERAL_CHARS:
                raise Unparseable("number literal too long")
            tokens.append(_Token(NUM, match.group()))
            i = match.end()
        elif char.isascii() and char.isalpha():
            match = _LETTERS.match(text, i)
            tokens.extend(_split_letters(match.group()))
            i = match.end()
        elif char == "\\":
            i = _command(text, i, depth, tokens)
        elif char == "{":
            end = matching_brace(text, i)
            if end is None:
                raise Unparseable("unbalanced brace")
            tokens.append(_Token(GROUP, f"({_convert(text[i + 1 : end], depth + 1)})"))
            i = end + 1
        elif char == "^":
            exponent, i = _argument(text, i + 1, exponent=True)
            tokens += [_Token(OP, "**"), _Token(GROUP, f"({_convert(exponent, depth + 1)})")]
        elif char == "_":
            subscript, i = _argument(text, i + 1)
            if not tokens or tokens[-1].kind != NAME or not _SUBSCRIPT.match(subscript):
                raise Unparseable("unsupported subscript")
            tokens[-1] = _Token(NAME, f"{tokens[-1].text}_{subscript}")
        elif text.startswith("**", i):
            tokens.append(_Token(OP, "**"))
            i += 2
        elif char in "+-*/":
            tokens.append(_Token(OP, char))
            i += 1
        elif char in "()":
            tokens.append(_Token(LPAREN if char == "(" else RPAREN, char))
            i += 1
        else:
            raise Unparseable(f"unsupported character {char!r}")
    return tokens


def _split_letters(run: str) -> list[_Token]:
    """`2pix` style runs: known words (longest first), otherwise one symbol per letter."""
    tokens = []
    i = 0
    while i < len(run):
        word = next((w for w in _WORDS_LONGEST_FIRST if run.startswith(w, i)), None)
        if word in _CONSTANT_WORDS:
            tokens.append(_Token(CONST, _CONSTANT_WORDS[word]))
        elif word is not None:
            tokens.append(_Token(FUNC, _FUNCTION_ALIASES.get(word, word)))
        else:
            word = run[i]
            tokens.append(_Token(NAME, word))
        i += len(word)
    return tokens


def _command(text: str, i: int, depth: int, tokens: list[_Token]) -> int:
    """Append the tokens for the command at text[i] (a backslash); return the next index."""
    match = _COMMAND.match(text, i)
    if match is None:
        raise Unparseable(f"unsupported command {text[i:i + 2]!r}")
    name, i = match.group(1), match.end()
    if name in _FRACTIONS:
        numerator, i = _argument(text, i)
        denominator, i = _argument(text, i)
        num, den = _convert(numerator, depth + 1), _convert(denominator, depth + 1)
        tokens.append(_Token(GROUP, f"(({num})/({den}))"))
    elif name == "sqrt":
        index = None
        if text[i:].lstrip().startswith("["):
            start = text.index("[", i)
            end = text.find("]", start)
            if end < 0:
                raise Unparseable("unbalanced root index")
            index, i = text[start + 1 : end], end + 1
        radicand, i = _argument(text, i)
        body = _convert(radicand, depth + 1)
        if index is None:
            tokens.append(_Token(GROUP, f"sqrt({body})"))
        else:
            tokens.append(_Token(GROUP, f"(({body})**(1/({_convert(index, depth + 1)})))"))
    elif name in FUNCTIONS or name in _FUNCTION_ALIASES:
        tokens.append(_Token(FUNC, _FUNCTION_ALIASES.get(name, name)))
    elif name in ("pi", "infty", "infinity"):
        tokens.append(_Token(CONST, _CONSTANT_WORDS[name]))
    elif name in _GREEK:
        tokens.append(_Token(NAME, "lamda" if name == "lambda" else name))
    elif name in _TIMES:
        tokens.append(_Token(OP, _TIMES[name]))
    else:
        raise Unparseable(f"unsupported command \\{name}")
    return i


def _argument(text: str, i: int, *, exponent: bool = False) -> tuple[str, int]:
    """The raw argument of a command at text[i:]: a `{}` group, a command, or one character
    (all the digits of a number after `^`). Returns it and the index after it."""
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        raise Unparseable("missing argument")
    if text[i] == "{":
        end = matching_brace(text, i)
        if end is None:
            raise Unparseable("unbalanced brace")
        return text[i + 1 : end], end + 1
    if text[i] == "\\":
        match = _COMMAND.match(text, i)
        if match is None:
            raise Unparseable("bad argument")
        return match.group(), match.end()
    if exponent and text[i] == "-":
        inner, end = _argument(text, i + 1, exponent=True)
        return f"-{inner}", end
    if exponent and _is_digit(text[i]):
        match = _DIGITS.match(text, i)
        return match.group(), match.end()
    return text[i], i + 1


def _join(tokens: list[_Token]) -> str:
    """Python source from tokens, with `*` where juxtaposition means multiplication."""
    parts: list[str] = []
    previous: _Token | None = None
    for token in _apply_functions(tokens):
        if previous is not None and previous.kind in _ENDS_ATOM and token.kind in _STARTS_ATOM:
            if previous.kind == NUM and token.kind == NUM:
                raise Unparseable("two numbers side by side")
            if previous.kind in (NAME, CONST) and token.kind == NUM:
                # Nobody writes x*2 as `x2`; it is more likely a base-n numeral like `-1a3`.
                raise Unparseable("a number right after a letter")
            parts.append("*")
        parts.append(token.text)
        previous = token
    return " ".join(parts)


def _apply_functions(tokens: list[_Token]) -> list[_Token]:
    """Fold each function with its argument into one GROUP: `sin(x)`, `\\sin x`, and
    `\\sin^2 x` as `sin(x)**2` (but `\\sin^{-1}`, an inverse, is refused)."""
    out: list[_Token] = []
    i = 0
    while i < len(tokens):
        function = tokens[i]
        i += 1
        if function.kind != FUNC:
            out.append(function)
            continue
        power = None
        if i + 1 < len(tokens) and tokens[i].text == "**" and tokens[i + 1].kind == GROUP:
            power = tokens[i + 1].text
            i += 2
            if power.replace(" ", "") == "(-1)":
                raise Unparseable("inverse function written as a power")
        if i >= len(tokens) or tokens[i].kind not in (NUM, NAME, CONST, GROUP, LPAREN):
            raise Unparseable("function without an argument")
        if tokens[i].kind == LPAREN:
            end = _closing_paren(tokens, i)
            argument = _join(tokens[i + 1 : end])
            i = end + 1
        else:
            argument = tokens[i].text
            i += 1
        call = f"{function.text}({argument})"
        out.append(_Token(GROUP, call if power is None else f"({call}**{power})"))
    return out


def _closing_paren(tokens: list[_Token], start: int) -> int:
    depth = 0
    for i in range(start, len(tokens)):
        depth += {LPAREN: 1, RPAREN: -1}.get(tokens[i].kind, 0)
        if depth == 0:
            return i
    raise Unparseable("unbalanced parenthesis")
