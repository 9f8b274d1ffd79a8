"""From answer text to a structured answer and its canonical key (no sympy here).

Cleaning (string level): `$`, `\\(..\\)`, `\\[..\\]`; `\\text{}`, `\\mathrm{}` and similar
wrappers (also a nested `\\boxed{}`); `\\left`/`\\right`/`\\big`; LaTeX spacing; `\\$`;
`\\dfrac`/`\\tfrac` -> `\\frac`; degree signs; a trailing period; unicode minus, times,
pi, infinity and root signs; a leading `x =` (for one answer, or when every element of a
list assigns the same variable); thousands separators in a lone number (`1,000`,
`1{,}000`, `1\\,000`; not `(1,000)`, which is read as a tuple).

Structure:
  * `A \\cup B` is a union, compared without order;
  * `\\{a, b\\}` is a set and a bare `a, b` a list of answers; both are compared as
    multisets (order does not matter), since "enter all solutions separated by commas"
    has no order; they also match each other;
  * `(a, b)`, `[a, b)`, ... with at least one top-level comma are ordered tuples or
    intervals: the brackets must be the same and the elements must match in order;
  * anything else is one Atom.

Atoms: a trailing `%` / `\\%` / `percent` sets Atom.percent (the rule for matching is in
match.py); a trailing unit word from _UNITS is dropped when what precedes it is a
number (letters only inside commands like `\\sqrt`), so `5 cm` -> `5` but `5 x` stays;
plain words (`Yes`, `\\text{Even}`, `True`) become lower-case text; everything else is
parsed into an expression (parse.py). The key of a rational number is `str(Fraction)`
(`0.50`, `1/2`, `\\frac{1}{2}` -> `1/2`; `-3.0` -> `-3`; `007` -> `7`); the percent sign
is not part of the key, so `50%` and `50` share a key (and do match). Not covered:
matrices/`pmatrix`, `\\pm`, equations other than `x = ...`, mixed numbers written with
a space (`2 1/2`), multi-letter words as products (`xy` alone is read as a word).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .expr import Expr, key
from .extract import matching_brace
from .latex import KNOWN_WORDS, Unparseable
from .parse import parse_expression

__all__ = [
    "Atom", "Collection", "Answer", "parse_answer", "normalize_answer", "MAX_ANSWER_CHARS"
]

# Longer answers are not parsed at all: only their stripped text is compared.
MAX_ANSWER_CHARS = 1000
MAX_ITEMS = 50
_MAX_NESTING = 4


@dataclass(frozen=True)
class Atom:
    key: str
    expr: Expr | None  # None for text and for what could not be parsed
    percent: bool = False


@dataclass(frozen=True)
class Collection:
    key: str
    open: str  # "(" "[" for tuples/intervals; "{" for sets and bare lists; "" for unions
    close: str
    items: tuple[Answer, ...]
    ordered: bool


Answer = Atom | Collection


def normalize_answer(answer: str) -> str:
    """Canonical string form of an answer, used as the key for majority voting (see the
    module docstring for the rules). Equal keys imply answers_match is True."""
    return parse_answer(answer).key


def parse_answer(text: str) -> Answer:
    """The structured answer for text (see the module docstring)."""
    if len(text) > MAX_ANSWER_CHARS:
        return Atom(key=text.strip(), expr=None)
    return _parse_short(text)


# The same ground truth is graded thousands of times. Only short texts are cached, so the
# cache stays under MAX_ANSWER_CHARS * maxsize characters.
@functools.lru_cache(maxsize=4096)
def _parse_short(text: str) -> Answer:
    cleaned = _thousands(_strip_assignment(_clean(text)))
    return _structure(cleaned, depth=0)


# --- cleaning ---------------------------------------------------------------------

_UNICODE = str.maketrans(
    {
        "\u2212": "-", "\u00d7": "*", "\u00b7": "*", "\u00f7": "/", "\u03c0": "\\pi ",
        "\u221e": "\\infty ", "\u221a": "\\sqrt", "\u222a": "\\cup ", "\u2205": "\\emptyset ",
        "\u00b2": "^2", "\u00b3": "^3", "\u00b0": "", "\u00a0": " ", "\u2009": " ",
    }
)
_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mathsf|mathtt|mbox|hbox"
    r"|operatorname|boxed|fbox)\s*\{"
)
_SUBSTITUTIONS = [
    (re.compile(r"\\[dtc]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\(?:varnothing|emptyset)(?![A-Za-z])|\\\{\s*\\\}"), r"\\emptyset"),
    (re.compile(r"\\(?:left|right)\s*\.|\\(?:left|right|[bB]igg?[lr]?)(?![A-Za-z])"), ""),
    (re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree"), ""),
    (re.compile(r"\\displaystyle|\\!|\\\$|\$|\\[()\[\]]"), ""),
    (re.compile(r"(?<=\d)(?:\{,\}|\\[,;:! ])(?=\d{3}(?!\d))"), ""),  # 1{,}000 and 1\,000
    (re.compile(r"\\[,;: ]|\\q?quad(?![A-Za-z])|~"), " "),
    (re.compile(r"\s+"), " "),
]
_TRAILING = re.compile(r"[\s.]+$")


def _clean(text: str) -> str:
    """String-level cleanup shared by every answer (see the module docstring)."""
    text = _unwrap(text.translate(_UNICODE))
    for pattern, replacement in _SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    return _TRAILING.sub("", text).strip()


def _unwrap(text: str) -> str:
    """`\\text{ cm}` -> ` cm `: the content stays, spaced so that units remain words."""
    start = 0
    while match := _WRAPPER.search(text, start):
        end = matching_brace(text, match.end() - 1)
        if end is None:
            return text
        text = f"{text[:match.start()]} {text[match.end():end]} {text[end + 1:]}"
        start = match.start()
    return text


_ASSIGNMENT = re.compile(
    r"\s*(?P<var>[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?|\\(?:alpha|beta|gamma|theta|phi|lambda|mu))"
    r"\s*=(?!=)(?P<rest>[^=]*)\Z"
)


def _strip_assignment(text: str) -> str:
    """`x = 5` -> `5`; `x = 1, 2` -> `1, 2`; `x = 1, x = 2` -> `1,2`; `x = 1, y = 2` stays."""
    parts = _split_top_level(text, ",")
    matches = [_ASSIGNMENT.match(p) for p in parts]
    if matches[0] and not any("=" in p for p in parts[1:]):
        return text[matches[0].start("rest") :].strip()
    if all(matches) and len({m["var"] for m in matches}) == 1:
        return ",".join(m["rest"] for m in matches).strip()
    return text


_THOUSANDS = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?([^\d,()\[\]{}]*)\Z")


def _thousands(text: str) -> str:
    match = _THOUSANDS.match(text)
    if match is None:
        return text
    sign, digits, decimals, rest = match.groups()
    return f"{sign}{digits.replace(',', '')}{decimals or ''}{rest}"


# --- structure --------------------------------------------------------------------

_OPENERS, _CLOSERS = "([{", ")]}"


def _split_top_level(text: str, separator: str) -> list[str]:
    """text split at separator where no bracket of any kind is open."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        char = text[i]
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
        elif depth == 0 and text.startswith(separator, i):
            parts.append(text[start:i])
            start = i + len(separator)
            i = start
            continue
        i += 1
    parts.append(text[start:])
    return parts


def _wraps_whole(text: str) -> bool:
    """The bracket opening text closes at its very end: `(1,2)` yes, `(1)(2)` no."""
    depth = 0
    for i, char in enumerate(text):
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
            if depth == 0:
                return i == len(text) - 1
    return False


def _structure(text: str, depth: int) -> Answer:
    if depth > _MAX_NESTING:
        return _opaque(text)
    union = _split_top_level(text, "\\cup")
    if len(union) > 1:
        return _collection("", "", union, ordered=False, depth=depth)
    if text.startswith("\\{") and text.endswith("\\}") and _wraps_whole(text[1:]):
        return _collection("{", "}", _split_top_level(text[2:-2], ","), ordered=False, depth=depth)
    if len(text) > 1 and text[0] in "([" and text[-1] in ")]" and _wraps_whole(text):
        elements = _split_top_level(text[1:-1], ",")
        if len(elements) > 1:
            return _collection(text[0], text[-1], elements, ordered=True, depth=depth)
    elements = _split_top_level(text, ",")
    if len(elements) > 1:
        return _collection("{", "}", elements, ordered=False, depth=depth)
    return _atom(text)


def _collection(open_: str, close: str, parts: list[str], *, ordered: bool, depth: int) -> Answer:
    if len(parts) > MAX_ITEMS:
        return _opaque(open_ + ",".join(parts) + close)
    items = tuple(_structure(p.strip(), depth + 1) for p in parts)
    keys = [item.key for item in items]
    separator = "," if open_ else "\\cup"
    body = separator.join(keys if ordered else sorted(keys))
    return Collection(f"{open_}{body}{close}", open_, close, items, ordered)


_PERCENT = re.compile(r"\s*(?:\\?%|percent)\Z", re.IGNORECASE)
_UNIT_WORDS = (
    "mm cm m km meters? metres? centimeters? centimetres? millimeters? kilometers? inch(?:es)? in"
    " f(?:ee|oo)t ft yards? yd miles? mi g kg mg grams? kilograms? pounds? lbs? oz ounces? tons?"
    " l ml liters? litres? gallons? cups? s sec seconds? min minutes? h hr hrs hours? days? weeks?"
    " months? years? mph dollars? cents? euros? degrees? units? points?"
).split()
_UNIT = re.compile(
    r"(?P<value>.*?[\d}).])(?P<space>\s*)(?:(?:square|sq\.?|cubic)\s+)?"
    rf"(?P<unit>{'|'.join(_UNIT_WORDS)})\.?(?:\s*\^\s*\{{?\s*[23]\s*\}}?)?\Z",
    re.IGNORECASE,
)
_COMMAND_NAME = re.compile(r"\\[A-Za-z]+")
_WORDS = re.compile(r"[A-Za-z][A-Za-z' -]*\Z")
_LETTER_RUN = re.compile(r"[A-Za-z]{2,}")


def _atom(text: str) -> Atom:
    percent = _PERCENT.search(text)
    if percent:
        text = text[: percent.start()]
    text = _strip_unit(text).strip()
    if _is_words(text):
        return Atom(key=" ".join(text.lower().split()), expr=None, percent=bool(percent))
    try:
        expr = parse_expression(text)
    except (Unparseable, RecursionError):
        return Atom(key=re.sub(r"\s+", "", text), expr=None, percent=bool(percent))
    return Atom(key=key(expr), expr=expr, percent=bool(percent))


def _strip_unit(text: str) -> str:
    match = _UNIT.match(text)
    if match is None:
        return text
    value = match["value"]
    if re.search(r"[A-Za-z]", _COMMAND_NAME.sub("", value)):
        return text  # `5 x m`: letters before the unit, so it may be a variable
    if len(match["unit"]) == 1 and not match["space"]:
        return text  # `5m` may be 5 times m
    return value


def _is_words(text: str) -> bool:
    """Plain text such as `Yes` or `no solution`: letters only, with a word that is not
    a function or constant name (so `pi` and `sqrt` stay expressions)."""
    return bool(_WORDS.match(text)) and any(
        w not in KNOWN_WORDS for w in _LETTER_RUN.findall(text)
    )


def _opaque(text: str) -> Atom:
    return Atom(key=re.sub(r"\s+", "", text), expr=None)

