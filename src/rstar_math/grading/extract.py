"""Finding the final answer in a model's text: the content of its last ``\\boxed``.

Covers ``\\boxed{...}`` and ``\\fbox{...}`` with nested braces (escaped ``\\{``/``\\}``
do not count), and the brace-less ``\\boxed 5`` form, which runs to the next ``$`` or
end of line. Does not cover ``\\boxed`` arguments split across a `$` boundary, or any
other way of marking an answer ("The answer is 5"): rStar-Math prompts ask for a box.
"""

from __future__ import annotations

import re

__all__ = ["extract_boxed", "matching_brace"]

# `\boxedfoo` is some other command; only whitespace or `{` may follow the name.
_BOX = re.compile(r"\\(?:boxed|fbox)(?=[\s{])")


def matching_brace(text: str, start: int) -> int | None:
    """Index of the `}` closing the `{` at text[start], or None when unbalanced."""
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # `\{` and `\}` are literal braces, not grouping
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the LAST \\boxed{...} (also \\fbox{...}, and `\\boxed 5` without braces) in text,
    with nested braces handled; None if absent or unbalanced."""
    last = None
    for last in _BOX.finditer(text):
        pass
    if last is None:
        return None
    rest = last.end()
    stripped = text[rest:].lstrip()
    start = len(text) - len(stripped)
    if stripped.startswith("{"):
        end = matching_brace(text, start)
        return None if end is None else text[start + 1 : end]
    # `\boxed 5`: the answer is the rest of the line, up to a closing `$`.
    content = re.split(r"[$\n]", stripped, maxsplit=1)[0].strip()
    return content or None
