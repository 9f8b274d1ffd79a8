"""Generated school-math problems for the embedded default, from DeepMind's mathematics_dataset.

    from rstar_math.data.generate import generate_problems, split_train_eval

    table = generate_problems(["algebra__linear_1d", "numbers__gcd"], 100, difficulty=0.2, seed=1234)
    train, held_out = split_train_eval(["arithmetic__mixed"], 60, 40, difficulty=(0.0, 0.5), seed=1234)

Module names are the package's own flattened names (`available_modules()` lists all 56),
e.g. 'algebra__linear_1d', 'arithmetic__add_or_sub', 'polynomials__evaluate_composed'.

Difficulty is where in each module's *train* entropy range the problems are drawn,
as fractions of that range (the arithmetic of upstream's `_make_entropy_fn`):
a band `(low, high)` with 0 <= low <= high <= 1, or one number `d`, the point
band `(d, d)`. Upstream's train-easy/medium/hard splits are the bands (0, 1/3),
(1/3, 2/3), (2/3, 1). The `level` column is 1 + floor(5 * midpoint), capped at 5:
levels 1..5 in equal fifths of the range, on the same 1..5 scale as MATH.

Reproducibility: each module draws from its own stream, seeded from (seed, module
name), so a table depends only on its arguments, and adding a module leaves the
other modules' problems unchanged (unless the new module, listed earlier, produces
an identical question, which is then kept only once). The generators draw from
Python's `random`, numpy's global generator and sympy's generator (`randprime`),
so all three are seeded per module and restored afterwards; not thread-safe.

Composed modules (`*_composed`) chain 2 to 4 sub-questions upstream, each an
intermediate value the next one uses; `max_composed_modules=n` draws at most n
(n = 2: one intermediate value, then the question itself), 0 keeps upstream's range.

Like upstream's generate.py, problems with a question over 160 or an answer over
30 characters are dropped; so are repeats and the rare draw that fails one of
upstream's internal assertions. Each module draws until it has its count, at
most 10 * count + 1000 times.
"""

from __future__ import annotations

import functools
import hashlib
import random
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rstar_math.data import _mathds_compat
from rstar_math.data.problems import problem_id
from rstar_math.data.schemas import PROBLEMS, validate

__all__ = [
    "GenerationError",
    "available_modules",
    "difficulty_band",
    "difficulty_level",
    "generate_problems",
    "split_train_eval",
]

Difficulty = float | tuple[float, float]


class GenerationError(ValueError):
    """A module cannot produce the requested number of distinct problems."""


def difficulty_band(difficulty: Difficulty) -> tuple[float, float]:
    """`difficulty` as a (low, high) band of fractions of the train entropy range; ValueError if invalid."""
    if isinstance(difficulty, (int, float)) and not isinstance(difficulty, bool):
        band = (float(difficulty), float(difficulty))
    elif isinstance(difficulty, (tuple, list)) and len(difficulty) == 2:
        band = (float(difficulty[0]), float(difficulty[1]))
    else:
        raise ValueError(f"difficulty must be a number or a (low, high) pair in [0, 1], not {difficulty!r}")
    if not 0.0 <= band[0] <= band[1] <= 1.0:
        raise ValueError(f"difficulty band {band} must satisfy 0 <= low <= high <= 1")
    return band


def difficulty_level(difficulty: Difficulty) -> int:
    """The `level` (1..5) recorded for problems generated at `difficulty`: equal fifths of the range."""
    low, high = difficulty_band(difficulty)
    return 1 + min(4, int(5 * (low + high) / 2))


def _flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Callable[[], Any]]]:
    """('algebra__linear_1d', generator) pairs from upstream's nested {'algebra': {'linear_1d': ...}}."""
    for key, value in tree.items():
        name = f"{prefix}__{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flatten(value, name)
        else:
            yield name, value


@functools.lru_cache(maxsize=16)
def _train_modules(band: tuple[float, float], max_composed_modules: int = 0) -> dict[str, Callable[[], Any]]:
    """Upstream's train generators with each module's entropy range narrowed to `band`
    (and composed modules capped at `max_composed_modules` sub-questions, 0 = no cap)."""
    _mathds_compat.install()
    from mathematics_dataset.modules import modules

    low, high = band

    def entropy_fn(range_: tuple[float, float]) -> tuple[float, float]:
        length = range_[1] - range_[0]
        return (range_[0] + low * length, range_[0] + high * length)

    generators = dict(sorted(_flatten(modules.train(entropy_fn))))
    if max_composed_modules:
        generators = {name: _capped(fn, max_composed_modules) for name, fn in generators.items()}
    return generators


def _capped(generator: Callable[[], Any], max_modules: int) -> Callable[[], Any]:
    """`generator` with its module-count range capped at `max_modules`.

    Upstream builds every module as functools.partial(fn, ..., PreSampleArgs(min, max, ...));
    composed ones have max > 1. A generator of another shape is returned as it is."""
    from mathematics_dataset.util.composition import PreSampleArgs

    if not isinstance(generator, functools.partial):
        return generator

    def cap(arg: Any) -> Any:
        if isinstance(arg, PreSampleArgs) and arg.max_modules > max_modules:
            return arg._replace(max_modules=max(arg.min_modules, max_modules))
        return arg

    return functools.partial(generator.func, *map(cap, generator.args),
                             **{key: cap(value) for key, value in generator.keywords.items()})


def available_modules() -> list[str]:
    """Every train module name the installed mathematics_dataset offers, sorted."""
    return list(_train_modules((0.0, 1.0)))


def _stream_seed(seed: int, module: str, stream: str) -> int:
    # A hash, not Python's hash(): that one is salted per process.
    digest = hashlib.sha256(f"{stream}\0{seed}\0{module}".encode()).digest()
    return int.from_bytes(digest[:4], "big")  # 32 bits: numpy's legacy seed range


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the three generators the package draws from; give the caller's states back afterwards."""
    from sympy.core.random import rng as sympy_rng  # sympy >= 1.10: randprime no longer uses `random`

    saved = random.getstate(), np.random.get_state(), sympy_rng.getstate()
    random.seed(seed)
    np.random.seed(seed)
    sympy_rng.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        sympy_rng.setstate(saved[2])


def _distinct_draws(
    module: str, generator: Callable[[], Any], count: int, seen: set[str], band: tuple[float, float]
) -> Iterator[tuple[str, str, str]]:
    """`count` (problem_id, question, answer) triples from `generator`, ids not in `seen` (which is updated)."""
    from mathematics_dataset import generate_settings

    # Enough for the length filter (drops up to ~50% in calculus__differentiate) and repeats.
    max_attempts = 10 * count + 1000
    kept = failed = 0
    last_failure = ""
    for _ in range(max_attempts):
        if kept == count:
            return
        try:
            problem = generator()
        except AssertionError as exc:
            # Upstream's internal checks fail on rare draws (integers_with_sum's `assert entropy == 0`
            # in about 1 of 10^5 composed problems: np.random.dirichlet with alpha 1e-9 is rarely not 0).
            # Deterministic for a seed, so dropping the draw keeps runs reproducible.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            failed, last_failure = failed + 1, f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
            continue
        question, answer = str(problem.question), str(problem.answer)
        # Upstream's own filter (generate.sample_from_module): overlong problems are not in the data set.
        if len(question) > generate_settings.MAX_QUESTION_LENGTH or len(answer) > generate_settings.MAX_ANSWER_LENGTH:
            continue
        pid = problem_id(question)
        if pid not in seen:
            seen.add(pid)
            kept += 1
            yield pid, question, answer
    if kept < count:
        failures = f"; {failed} draws failed an upstream assertion, last at {last_failure}" if failed else ""
        raise GenerationError(
            f"{module}: only {kept} distinct problems of {count} requested after {max_attempts} draws "
            f"at difficulty {band}{failures}; ask for fewer or widen the difficulty band"
        )


def _generate(
    modules: Sequence[str],
    count: int,
    difficulty: Difficulty,
    seed: int,
    source_prefix: str,
    exclude: Collection[str],
    stream: str,
    max_composed_modules: int,
) -> pa.Table:
    if isinstance(modules, str):  # list("numbers__gcd") would be a list of letters
        raise TypeError(f"modules must be a sequence of module names, not the string {modules!r}")
    modules = list(modules)
    band = difficulty_band(difficulty)
    level = difficulty_level(band)
    if count < 0:
        raise ValueError(f"count_per_module must be >= 0, not {count}")
    if max_composed_modules < 0 or max_composed_modules == 1:
        raise ValueError(f"max_composed_modules must be 0 (upstream's 2 to 4) or at least 2, not {max_composed_modules}")
    generators = _train_modules(band, max_composed_modules)
    unknown = [name for name in modules if name not in generators]
    if unknown:
        raise ValueError(f"unknown mathematics_dataset module(s) {unknown}; valid names: {', '.join(generators)}")
    if len(set(modules)) != len(modules):
        raise ValueError(f"modules listed more than once: {sorted({m for m in modules if modules.count(m) > 1})}")
    seen = set(exclude)
    rows: list[dict[str, Any]] = []
    for module in modules:
        with _seeded(_stream_seed(seed, module, stream)):
            for pid, question, answer in _distinct_draws(module, generators[module], count, seen, band):
                rows.append(
                    {
                        "problem_id": pid,
                        "question": question,
                        "answer": answer,
                        "source": f"{source_prefix}/{module}",
                        "level": level,
                    }
                )
    return validate(pa.Table.from_pylist(rows, schema=PROBLEMS.schema), PROBLEMS, source="generate_problems")


def generate_problems(
    modules: Sequence[str],
    count_per_module: int,
    *,
    difficulty: Difficulty,
    seed: int,
    source_prefix: str = "mathematics_dataset",
    exclude: Collection[str] = (),
    max_composed_modules: int = 0,
) -> pa.Table:
    """`count_per_module` distinct problems from each module, as a PROBLEMS table, in module order.

    Questions are distinct by `problem_id` across the whole table, and none has an
    id in `exclude` (e.g. a held-out or benchmark set). Raises ValueError for an
    unknown module (listing the valid ones) and GenerationError when a module cannot
    reach the count in 10 * count + 1000 draws.
    """
    return _generate(modules, count_per_module, difficulty, seed, source_prefix, frozenset(exclude), "train",
                     max_composed_modules)


def split_train_eval(
    modules: Sequence[str],
    train_per_module: int,
    eval_per_module: int,
    *,
    difficulty: Difficulty,
    seed: int,
    eval_difficulty: Difficulty | None = None,
    source_prefix: str = "mathematics_dataset",
    max_composed_modules: int = 0,
) -> tuple[pa.Table, pa.Table]:
    """(train, held_out) tables with no question in common.

    The held-out set is drawn first from its own streams (at `eval_difficulty`, default
    `difficulty`); train is exactly `generate_problems(...)` with the held-out ids
    excluded, so it equals the plain generated table wherever nothing collided.
    """
    held_out = _generate(
        modules,
        eval_per_module,
        difficulty if eval_difficulty is None else eval_difficulty,
        seed,
        source_prefix,
        frozenset(),
        "eval",
        max_composed_modules,
    )
    train = generate_problems(
        modules,
        train_per_module,
        difficulty=difficulty,
        seed=seed,
        source_prefix=source_prefix,
        exclude=held_out.column("problem_id").to_pylist(),
        max_composed_modules=max_composed_modules,
    )
    return train, held_out
