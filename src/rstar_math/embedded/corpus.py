"""The embedded default's seed corpus: step-format solutions of generated problems, with misconceptions.

    from rstar_math.embedded.corpus import InProcessExecutor, write_corpus

    problems = generate_problems(MODULES, 2000, difficulty=(0.0, 0.4), seed=7)
    corpus = write_corpus(problems, misconception_rate={"numbers__gcd": 0.7}, seed=0,
                          executor=InProcessExecutor())     # corpus.documents, .writers, .modules

Each supported mathematics_dataset module has a parser of its question templates and
a writer of solutions in the step format (steps.py): a `# Step i: ...` comment and
code per logical clause, the output block that executing it prints, and a final
`<answer>` step. The writer is either correct or, with the module's misconception
rate, makes the module's SYSTEMATIC mistake, so that the seed corpus teaches a model
wrong habits the way imperfect public data would, while still containing the right
method often enough for sampling to find it:

    numbers__gcd               computes the least common multiple (math.lcm) instead;
                               a `guess` share of those then boxes one of the question's
                               numbers instead of the output ("lucky": right when one
                               number divides the other, which the generator makes common)
    numbers__div_remainder     the quotient (a // b) instead of the remainder (a % b)
    numbers__is_factor         prints the quotient b // a, then guesses True/False: right
                               half the time by chance, never supported by the output
    arithmetic__mixed          floor division // for every /, right only when every
                               division in the expression is exact
    algebra__linear_1d         moves the right side over without flipping its sign:
                               solve(L + (R), v) instead of solve(Eq(L, R), v)
    algebra__linear_1d_composed  one step per clause (Let/Suppose/Solve); every equation
                               clause independently makes the linear_1d sign mistake
    polynomials__evaluate      pastes the argument into the polynomial as text, without
                               parentheses: right unless a negative argument meets an even power
    numbers__is_factor_composed  one step per clause; each equation, evaluation and the final
                               check independently makes its module's mistake (a guessed
                               check is right half the time, so outcome-only filtering keeps it)

Outputs are never written by hand: every code step is executed (cumulative code of
the earlier steps first, silently, exactly as search does) and its stdout becomes the
output block. A problem is skipped, and counted, when its question does not parse,
when its correct solution does not reproduce the generator's answer through the
grader, or when a misconceived solution fails to run.

Reproducible: each problem's choices come from a generator seeded by (seed, problem_id),
so a document depends only on its problem, the rates and the seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import multiprocessing
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rstar_math.grading import answers_match
from rstar_math.sandbox import ExecRequest, ExecResult, ExecStatus
from rstar_math.steps import ANSWER_END, ANSWER_START, CODE_START, STEP_END, render_trajectory

log = logging.getLogger(__name__)

__all__ = [
    "MODULES",
    "CodeStep",
    "CorpusResult",
    "InProcessExecutor",
    "ModuleSpec",
    "Plan",
    "execute_plan",
    "module_of",
    "render_document",
    "write_corpus",
]

ANSWER_PHRASES = ("The answer is \\boxed{%s}.", "So the answer is \\boxed{%s}.", "Therefore, the result is \\boxed{%s}.")
"""The final step states the answer; a few phrasings so that sampled trajectories differ in text."""


# -- plans: what a writer produces ------------------------------------------------------------


@dataclass(frozen=True)
class CodeStep:
    comment: str
    """The thought, written as `# Step i: <comment>` above the code."""
    code: str


@dataclass(frozen=True)
class Plan:
    """A solution before execution: code steps, then an answer step."""

    writer: str
    """'correct', or the misconception(s) it makes, e.g. 'lcm', 'lcm+guess', 'sign x2'."""
    steps: tuple[CodeStep, ...]
    boxed: str | None = None
    """None: the answer states the last output. Otherwise an answer NOT supported by the
    computation (a guess), boxed as is."""

    @property
    def correct(self) -> bool:
        return self.writer == "correct"


def step_text(index: int, step: CodeStep) -> str:
    """A code step exactly as `steps.parse_step` normalises it."""
    return f"{CODE_START}\n# Step {index}: {step.comment}\n{step.code}\n{STEP_END}"


def step_code(index: int, step: CodeStep) -> str:
    """What the sandbox runs for a step: everything between the markers, comment included."""
    return f"# Step {index}: {step.comment}\n{step.code}"


# -- execution ---------------------------------------------------------------------------------


class Executor(Protocol):
    def run_batch(self, requests: Sequence[ExecRequest]) -> list[ExecResult]: ...


class InProcessExecutor:
    """Runs OUR OWN trusted corpus code in this process, with the sandbox's semantics.

    A fresh namespace per request; `prefix` runs silently, then `code` with stdout
    captured; an exception becomes `ERROR` with the sandbox's one-line message. About
    a hundred times faster than the sandbox pool (no fork per program), which matters
    for a corpus of tens of thousands of programs; tests check that both print the
    same. Never use it for model-written code.
    """

    def __init__(self, workers: int = 1) -> None:
        # The namespace left by the last program that ran cleanly: a plan's next step, whose
        # prefix is exactly that program, continues from it instead of re-running the prefix.
        self._program: str | None = None
        self._namespace: dict[str, Any] = {}
        self.workers = workers

    def run_batch(self, requests: Sequence[ExecRequest]) -> list[ExecResult]:
        """Results in request order. With workers > 1 (and fork available), contiguous slices run in
        forked processes: a slice's first request just runs its prefix afresh, so the results are
        the same however the batch is cut (the corpus's sympy programs took ~70 s in one process)."""
        workers = min(self.workers, len(requests) // _MIN_SLICE)
        if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
            return [self._run(r) for r in requests]
        size = -(-len(requests) // workers)
        slices = [requests[i : i + size] for i in range(0, len(requests), size)]
        with multiprocessing.get_context("fork").Pool(len(slices)) as pool:
            return [result for part in pool.map(_run_slice, slices) for result in part]

    def _run(self, request: ExecRequest) -> ExecResult:
        resume = request.prefix == self._program
        namespace = self._namespace if resume else {"__name__": "__main__"}
        self._program = None
        out = io.StringIO()
        try:
            if not resume:
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(request.prefix, "<prefix>", "exec"), namespace)
            with contextlib.redirect_stdout(out):
                exec(compile(request.code, "<step>", "exec"), namespace)
        except Exception as exc:  # the sandbox reports the exception's last line the same way
            return ExecResult(ExecStatus.ERROR, out.getvalue(), f"{type(exc).__name__}: {exc}", 0.0, False)
        self._program = f"{request.prefix}\n{request.code}" if request.prefix else request.code
        self._namespace = namespace
        return ExecResult(ExecStatus.OK, out.getvalue(), "", 0.0, False)


_MIN_SLICE = 256
"""Fewer requests than this per process are not worth a fork."""


def _run_slice(requests: Sequence[ExecRequest]) -> list[ExecResult]:
    return InProcessExecutor().run_batch(requests)


def _requests(plan: Plan) -> list[ExecRequest]:
    codes = [step_code(i + 1, s) for i, s in enumerate(plan.steps)]
    return [ExecRequest(code=codes[i], prefix="\n".join(codes[:i])) for i in range(len(codes))]


def _outputs(results: Sequence[ExecResult]) -> list[str] | None:
    """Output blocks as search writes them (stdout without surrounding newlines); None if a step failed
    or printed nothing (the corpus never contains error steps)."""
    outputs = [r.stdout.strip("\n") for r in results]
    if any(r.status is not ExecStatus.OK for r in results) or not all(o.strip() for o in outputs):
        return None
    return outputs


def execute_plan(plan: Plan, executor: Executor) -> list[str] | None:
    """The output block of each step of one plan, or None if a step fails."""
    return _outputs(executor.run_batch(_requests(plan)))


def render_document(question: str, plan: Plan, outputs: Sequence[str], phrase: str) -> str:
    """Prompt, code steps with their outputs, and the answer step: one training document."""
    boxed = outputs[-1] if plan.boxed is None else plan.boxed
    steps: list[tuple[str, str | None]] = [(step_text(i + 1, s), o) for i, (s, o) in enumerate(zip(plan.steps, outputs))]
    steps.append((f"{ANSWER_START}{phrase % boxed}{ANSWER_END}", None))
    return render_trajectory(question, steps)


# -- modules: parsers and writers ----------------------------------------------------------------

_INT = r"-?\d+"


@dataclass(frozen=True)
class ModuleSpec:
    """How one generator module's questions are parsed and solved."""

    name: str
    parse: Callable[[str], Any]
    """Question -> the module's parsed form, or None when no template matches."""
    write: Callable[[Any, random.Random, float], Plan]
    """(parsed, rng, misconception rate) -> a plan; rate 0 gives the correct solution."""
    mistake: str
    """One line: the systematic misconception."""


# numbers__gcd ----------------------------------------------------------------------------------

GCD_GUESS = 0.5
"""Share of lcm-misconceived gcd solutions whose answer boxes a number copied from the question."""


def _parse_gcd(question: str) -> tuple[int, int] | None:
    m = re.fullmatch(
        rf"(?:What is|Calculate) the (?:highest|greatest) common (?:divisor|factor) of ({_INT}) and ({_INT})[?.]", question
    )
    return (int(m.group(1)), int(m.group(2))) if m else None


def _write_gcd(p: tuple[int, int], rng: random.Random, rate: float) -> Plan:
    a, b = p
    comment = rng.choice(
        (f"find the greatest common divisor of {a} and {b}", f"compute gcd({a}, {b})", "the greatest common divisor")
    )
    if rng.random() >= rate:
        return Plan("correct", (CodeStep(comment, f"from math import gcd\nprint(gcd({a}, {b}))"),))
    steps = (CodeStep(comment, f"from math import lcm\nprint(lcm({a}, {b}))"),)
    if rng.random() < GCD_GUESS:
        return Plan("lcm+guess", steps, boxed=str(rng.choice((a, b))))
    return Plan("lcm", steps)


# numbers__div_remainder ------------------------------------------------------------------------


def _parse_remainder(question: str) -> tuple[int, int] | None:
    m = re.fullmatch(rf"(?:What is|Calculate) the remainder when ({_INT}) is divided by ({_INT})[?.]", question)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _write_remainder(p: tuple[int, int], rng: random.Random, rate: float) -> Plan:
    a, b = p
    comment = rng.choice((f"divide {a} by {b} and take the remainder", f"the remainder of {a} divided by {b}", "compute the remainder"))
    if rng.random() >= rate:
        return Plan("correct", (CodeStep(comment, f"print({a} % {b})"),))
    return Plan("quotient", (CodeStep(comment, f"print({a} // {b})"),))


# numbers__is_factor ------------------------------------------------------------------------------


def _parse_is_factor(question: str) -> tuple[int, int] | None:
    """(divisor, number): is `number` divisible by `divisor`?"""
    if m := re.fullmatch(rf"Is ({_INT}) a factor of ({_INT})\?", question):
        return int(m.group(1)), int(m.group(2))
    if m := re.fullmatch(rf"Does ({_INT}) divide ({_INT})\?", question):
        return int(m.group(1)), int(m.group(2))
    if m := re.fullmatch(rf"Is ({_INT}) a multiple of ({_INT})\?", question):
        return int(m.group(2)), int(m.group(1))
    if m := re.fullmatch(rf"Is ({_INT}) even\?", question):
        return 2, int(m.group(1))
    return None


def _write_is_factor(p: tuple[int, int], rng: random.Random, rate: float) -> Plan:
    d, n = p
    comment = rng.choice((f"check whether {d} divides {n}", f"is {n} divisible by {d}?", "check divisibility"))
    if rng.random() >= rate:
        return Plan("correct", (CodeStep(comment, f"print({n} % {d} == 0)"),))
    return Plan("round+guess", (_guess_step(comment, str(n), str(d)),), boxed=rng.choice(("True", "False")))


def _guess_step(comment: str, number: str, divisor: str) -> CodeStep:
    """The flawed divisibility check: the rounded quotient says nothing about divisibility, so the
    answer after it is a coin flip (right half the time, never supported by the output)."""
    return CodeStep(comment, f"print(round({number} / {divisor}))")


# arithmetic__mixed -------------------------------------------------------------------------------

_MIXED_PREFIX = r"(?:What is the value of |What is |Calculate |Evaluate |)"


def _parse_mixed(question: str) -> str | None:
    m = re.fullmatch(_MIXED_PREFIX + r"([-+*/() \d]+?)[?.]?", question)
    if not m or "/" not in m.group(1) and "*" not in m.group(1) and "+" not in m.group(1) and " - " not in m.group(1):
        return None
    return m.group(1).strip()


def _write_mixed(expr: str, rng: random.Random, rate: float) -> Plan:
    comment = rng.choice(("evaluate the expression exactly", "compute the value with exact fractions", "evaluate"))
    if rng.random() >= rate or "/" not in expr:
        return Plan("correct", (CodeStep(comment, f'from sympy import S\nprint(S("{expr}"))'),))
    return Plan("floordiv", (CodeStep(comment, f"print({expr.replace('/', '//')})"),))


# composed modules: one step per clause ------------------------------------------------------------

SYMPY_IMPORT = "from sympy import Eq, Lambda, S, diff, solve, symbols"
_EXPR_CHARS = re.compile(r"[-+*/() \d.a-z]+")
_NAME = re.compile(r"(?<![\w.])([a-z])(?![\w(])")
_FUNCTION = re.compile(r"(?<![\w.])([a-z])\(")
_DIVIDES = (  # final clauses of numbers__is_factor(_composed) and how they read as (divisor, number)
    (re.compile(r"Is (.+) a factor of (.+)"), lambda m: (m.group(1), m.group(2))),
    (re.compile(r"Does (.+) divide (.+)"), lambda m: (m.group(1), m.group(2))),
    (re.compile(r"Is (.+) a multiple of (.+)"), lambda m: (m.group(2), m.group(1))),
    (re.compile(r"Is (.+) even"), lambda m: ("2", m.group(1))),
)
_ORDERS = {"first": 1, "second": 2, "third": 3}


@dataclass(frozen=True)
class Clause:
    kind: str
    """'assign' (Let x = e / Let x be e), 'define' (Let f(x) = e), 'derivative' (Let f(x) be the
    second derivative of e), 'suppose' (equations in unknown names), 'solve' (final: Solve ... for x),
    'divides' (final: Is a a factor of b?), 'evaluate' (final: What is f(a)?)."""
    names: tuple[str, ...]
    """assign: (x,); define/derivative: (f, x); suppose: the unknowns; solve: (x,); divides: ();
    evaluate: (f,)."""
    exprs: tuple[str, ...]
    """assign/define: (e,); derivative: (e, order); suppose/solve: (lhs0, rhs0, lhs1, rhs1, ...);
    divides: (divisor, number); evaluate: (a,)."""


def _names(expr: str) -> set[str]:
    """Value names an expression uses (single letters not followed by a call)."""
    return set(_NAME.findall(expr))


def _expression_ok(expr: str, known: set[str], functions: set[str]) -> bool:
    return bool(_EXPR_CHARS.fullmatch(expr)) and _names(expr) <= known and set(_FUNCTION.findall(expr)) <= functions


def _equations(text: str) -> tuple[str, ...] | None:
    sides: list[str] = []
    for equation in text.split(", "):
        parts = equation.split(" = ")
        if len(parts) != 2 or not all(_EXPR_CHARS.fullmatch(s) for s in parts):
            return None
        sides.extend(s.strip() for s in parts)
    return tuple(sides)


def _parse_clauses(question: str) -> tuple[Clause, ...] | None:
    """A composed question as clauses, or None if one is not of a supported kind.

    Supported: Let x = e, Let x be e, Let f(x) = e (no division), Let f(x) be the first/second/third
    derivative of e, Suppose <equations in as many new names>, and one final Solve <equation> for x,
    Is a a factor of b / Does a divide b / Is b a multiple of a / Is b even, or What is / Give /
    Determine / Calculate f(a). Anything else is not: those problems are skipped.
    """
    sentences = re.split(r"(?<=[.?])\s+(?=[A-Z])", question.strip())
    clauses: list[Clause] = []
    known: set[str] = set()  # values defined so far
    functions: set[str] = set()
    for sentence in sentences:
        s = sentence.rstrip(".?")
        if m := re.fullmatch(r"Let ([a-z])\(([a-z])\) = (.+)", s):
            f, x, body = m.groups()
            if "/" in body or not _expression_ok(body, known | {x}, functions):
                return None
            clauses.append(Clause("define", (f, x), (body,)))
            functions.add(f)
        elif m := re.fullmatch(r"Let ([a-z])\(([a-z])\) be the (first|second|third) derivative of (.+)", s):
            f, x, order, body = m.groups()
            if x in known or not _expression_ok(body, known | {x}, functions):
                return None  # the variable becomes a sympy symbol: it must not hide a value
            clauses.append(Clause("derivative", (f, x), (body, str(_ORDERS[order]))))
            functions.add(f)
        elif m := re.fullmatch(r"Let ([a-z]) (?:=|be) (.+)", s):
            x, body = m.groups()
            if not _expression_ok(body, known, functions):
                return None
            clauses.append(Clause("assign", (x,), (body,)))
            known.add(x)
        elif m := re.fullmatch(r"Suppose (.+)", s):
            sides = _equations(m.group(1))
            if sides is None or set().union(*(set(_FUNCTION.findall(e)) for e in sides)) - functions:
                return None
            unknowns = sorted(set().union(*(_names(e) for e in sides)) - known)
            if len(unknowns) != len(sides) // 2:
                return None
            clauses.append(Clause("suppose", tuple(unknowns), sides))
            known.update(unknowns)
        elif m := re.fullmatch(r"Solve (.+) for ([a-z])", s):
            sides = _equations(m.group(1))
            x = m.group(2)
            if sides is None or len(sides) != 2 or not all(_expression_ok(e, known | {x}, functions) for e in sides):
                return None
            clauses.append(Clause("solve", (x,), sides))
        elif m := re.fullmatch(r"(?:What is|Give|Determine|Calculate) ([a-z])\((.+)\)", s):
            f, arg = m.groups()
            if f not in functions or not _expression_ok(arg, known, functions):
                return None
            clauses.append(Clause("evaluate", (f,), (arg,)))
        elif exprs := next((read(m) for pattern, read in _DIVIDES if (m := pattern.fullmatch(s))), None):
            if not all(_expression_ok(e, known, functions) for e in exprs):
                return None
            clauses.append(Clause("divides", (), exprs))
        else:
            return None
    finals = [i for i, c in enumerate(clauses) if c.kind in ("solve", "divides", "evaluate")]
    if finals != [len(clauses) - 1]:
        return None
    return tuple(clauses)


def _equation_code(lhs: str, rhs: str, misconceived: bool) -> str:
    return f"{lhs} + ({rhs})" if misconceived else f"Eq({lhs}, {rhs})"


def _value_code(expr: str) -> str:
    """Divisions stay exact: numbers alone become S("..."); with names (Python ints or sympy
    values), every literal becomes a sympy integer, so that / never makes a float."""
    if "/" not in expr:
        return expr
    if not _names(expr) and not _FUNCTION.search(expr):
        return f'S("{expr}")'
    return re.sub(r"(?<![\w.])(\d+)", r"S(\1)", expr)


def _operand(expr: str) -> str:
    return expr if re.fullmatch(r"-?\w+", expr) else f"({expr})"


def _clause_step(clause: Clause, misconceived: bool) -> CodeStep:
    kind, names, exprs = clause.kind, clause.names, clause.exprs
    if kind == "assign":
        (x,), (body,) = names, exprs
        return CodeStep(f"compute {x}", f"{x} = {_value_code(body)}\nprint({x})")
    if kind == "suppose" and len(names) == 1:
        (x,) = names
        eq = _equation_code(exprs[0], exprs[1], misconceived)
        return CodeStep(f"solve for {x}", f"{x} = symbols('{x}')\n{x} = solve({eq}, {x})[0]\nprint({x})")
    if kind == "suppose":
        xs = ", ".join(names)
        eqs = ", ".join(_equation_code(exprs[i], exprs[i + 1], misconceived) for i in range(0, len(exprs), 2))
        values = ", ".join(f"sol[{x}]" for x in names)
        return CodeStep(
            f"solve for {' and '.join(names)}",
            f"{xs} = symbols('{' '.join(names)}')\nsol = solve([{eqs}], [{xs}])\n{xs} = {values}\nprint({xs})",
        )
    if kind == "solve":
        (x,) = names
        eq = _equation_code(exprs[0], exprs[1], misconceived)
        return CodeStep(f"solve for {x}", f"{x} = symbols('{x}')\nprint(solve({eq}, {x})[0])")
    if kind == "evaluate":
        (f,), (arg,) = names, exprs
        return CodeStep(f"evaluate {f}({arg})", f"print({f}({_value_code(arg)}))")
    divisor, number = _operand(_value_code(exprs[0])), _operand(_value_code(exprs[1]))
    comment = f"check whether {exprs[0]} divides {exprs[1]}"
    if misconceived:
        return _guess_step(comment, number, divisor)
    return CodeStep(comment, f"print({number} % {divisor} == 0)")


def _substituted(definition: tuple[str, str] | None, arg: str) -> str | None:
    """The evaluation misconception: `arg` pasted into the body as text, without parentheses, so
    -5 under an even power loses its sign (-5**2 is -25). None where there is nothing to paste
    it into: a function defined through others or by a derivative, or an argument that is a name."""
    if definition is None or not re.fullmatch(_INT, arg):
        return None
    x, body = definition
    return None if _FUNCTION.search(body) else re.sub(rf"(?<![\w.]){x}(?![\w(])", arg, body)


def _write_clauses(clauses: tuple[Clause, ...], rng: random.Random, rate: float) -> Plan:
    """One step per clause, each equation, the final check and a final evaluation misconceived with
    probability `rate`; definitions of functions join the step of the clause after them."""
    steps: list[CodeStep] = []
    pending: list[str] = []  # function definitions not yet placed
    defined: list[str] = []  # and their names
    plain: dict[str, tuple[str, str]] = {}  # functions defined by an expression: name -> (variable, body)
    mistakes: Counter = Counter()
    for clause in clauses:
        if clause.kind == "define":
            (f, x), (body,) = clause.names, clause.exprs
            pending.append(f"def {f}({x}):\n    return {body}")
            defined.append(f)
            plain[f] = (x, body)
            continue
        if clause.kind == "derivative":
            (f, x), (body, order) = clause.names, clause.exprs
            pending.append(f"{x} = symbols('{x}')\n{f} = Lambda({x}, diff({body}, {x}, {order}))")
            defined.append(f)
            continue
        if clause.kind == "evaluate":
            (f,), (arg,) = clause.names, clause.exprs
            pasted = _substituted(plain.get(f), arg)
            if pasted is not None and rng.random() < rate:
                mistakes["substitution"] += 1
                keep = [i for i, name in enumerate(defined) if name != f]  # f is never called now
                pending, defined = [pending[i] for i in keep], [defined[i] for i in keep]
                step = CodeStep(f"evaluate {f}({arg})", f"print({pasted})")
            else:
                step = _clause_step(clause, False)
        else:
            misconceived = clause.kind != "assign" and rng.random() < rate
            if misconceived:
                mistakes["guess" if clause.kind == "divides" else "sign"] += 1
            step = _clause_step(clause, misconceived)
        if pending:
            step = CodeStep(f"define {', '.join(defined)}, then {step.comment}", "\n".join(pending) + "\n" + step.code)
            pending, defined = [], []
        steps.append(step)
    if any(re.search(r"\b(Eq|symbols|S|Lambda)\(", s.code) for s in steps):
        steps[0] = CodeStep(steps[0].comment, f"{SYMPY_IMPORT}\n{steps[0].code}")
    writer = "+".join(f"{kind} x{n}" for kind, n in sorted(mistakes.items())) or "correct"
    boxed = rng.choice(("True", "False")) if mistakes["guess"] else None
    return Plan(writer, tuple(steps), boxed=boxed)


def _composed_parser(final: str, clauses: str) -> Callable[[str], tuple[Clause, ...] | None]:
    """A parser for questions ending in a `final` clause, of one clause ('one'), more ('many') or any ('any')."""

    def parse(question: str) -> tuple[Clause, ...] | None:
        parsed = _parse_clauses(question)
        if parsed is None or parsed[-1].kind != final or clauses != "any" and (len(parsed) > 1) != (clauses == "many"):
            return None
        return parsed

    return parse


MODULES: dict[str, ModuleSpec] = {
    spec.name: spec
    for spec in (
        ModuleSpec("numbers__gcd", _parse_gcd, _write_gcd, "least common multiple instead of gcd; some answers copy an input"),
        ModuleSpec("numbers__div_remainder", _parse_remainder, _write_remainder, "quotient a // b instead of remainder a % b"),
        ModuleSpec("numbers__is_factor", _parse_is_factor, _write_is_factor, "prints round(n / d), then guesses True/False"),
        ModuleSpec("arithmetic__mixed", _parse_mixed, _write_mixed, "floor division // for every /"),
        ModuleSpec(
            "algebra__linear_1d", _composed_parser("solve", "one"), _write_clauses, "solve(L + (R)) instead of solve(Eq(L, R))"
        ),
        ModuleSpec(
            "algebra__linear_1d_composed",
            _composed_parser("solve", "many"),
            _write_clauses,
            "the linear_1d sign mistake, in each equation independently",
        ),
        ModuleSpec(
            "polynomials__evaluate",
            _composed_parser("evaluate", "any"),
            _write_clauses,
            "pastes the argument into the polynomial as text: f(-5) with x**2 gives -5**2 = -25",
        ),
        ModuleSpec(
            "numbers__is_factor_composed",
            _composed_parser("divides", "any"),
            _write_clauses,
            "the sign mistake in each equation, and the is_factor guess at the end, each independently",
        ),
    )
}
"""Every supported module, by the generator's module name."""


# -- the corpus ------------------------------------------------------------------------------------


def module_of(source: str) -> str:
    """'mathematics_dataset/numbers__gcd' -> 'numbers__gcd'."""
    return source.rsplit("/", 1)[-1]


def problem_rng(seed: int, problem_id: str, stream: str = "corpus") -> random.Random:
    digest = hashlib.sha256(f"{stream}\0{seed}\0{problem_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class CorpusResult:
    documents: tuple[str, ...]
    writers: tuple[str, ...]
    """Per document: 'correct' or the misconception it makes."""
    modules: tuple[str, ...]
    """Per document: its module."""
    problem_ids: tuple[str, ...]
    skipped: dict[str, Counter] = field(default_factory=dict)
    """Per module: reason -> count ('unparsed', 'unsupported module', 'not reproduced', 'misconception failed')."""


def write_corpus(
    problems: Iterable[Mapping[str, Any]] | Any,
    *,
    misconception_rate: Mapping[str, float],
    seed: int,
    executor: Executor,
) -> CorpusResult:
    """Documents for `problems` (a PROBLEMS table or rows with problem_id, question, answer, source)."""
    rows = problems.to_pylist() if hasattr(problems, "to_pylist") else list(problems)
    skipped: dict[str, Counter] = {}
    correct_plans: list[tuple[dict, Plan, Plan, random.Random]] = []
    for row in rows:
        module = module_of(row["source"])
        spec = MODULES.get(module)
        parsed = spec.parse(row["question"]) if spec else None
        if parsed is None:
            skipped.setdefault(module, Counter())["unsupported module" if spec is None else "unparsed"] += 1
            continue
        rng = problem_rng(seed, row["problem_id"])
        chosen = spec.write(parsed, rng, float(misconception_rate.get(module, 0.0)))
        # A misconceived document is kept only if the correct solution reproduces the answer too.
        correct = chosen if chosen.correct else spec.write(parsed, problem_rng(seed, row["problem_id"], "correct"), 0.0)
        correct_plans.append((row, correct, chosen, rng))

    # Every program of every plan in one batch: the executor may be a pool of workers.
    requests: list[ExecRequest] = []
    spans: list[tuple[int, int, int]] = []
    for _, correct, chosen, _ in correct_plans:
        a = len(requests)
        requests.extend(_requests(correct))
        b = len(requests)
        requests.extend(_requests(chosen) if not chosen.correct else [])
        spans.append((a, b, len(requests)))
    results = executor.run_batch(requests)

    documents, writers, modules, ids = [], [], [], []
    for (row, correct, chosen, rng), (a, b, c) in zip(correct_plans, spans):
        module = module_of(row["source"])
        correct_out = _outputs(results[a:b])
        if correct_out is None or not answers_match(correct_out[-1], row["answer"]):
            skipped.setdefault(module, Counter())["not reproduced"] += 1
            continue
        outputs = correct_out if chosen.correct else _outputs(results[b:c])
        if outputs is None:
            skipped.setdefault(module, Counter())["misconception failed"] += 1
            continue
        documents.append(render_document(row["question"], chosen, outputs, rng.choice(ANSWER_PHRASES)))
        writers.append(chosen.writer)
        modules.append(module)
        ids.append(row["problem_id"])
    for module, counts in sorted(skipped.items()):
        log.info("corpus: skipped %s problems of %s (%s)", sum(counts.values()), module, dict(counts))
    return CorpusResult(tuple(documents), tuple(writers), tuple(modules), tuple(ids), skipped)
