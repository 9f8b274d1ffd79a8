"""Independent trajectories, step by step: greedy decoding and best-of-N / majority-vote sampling.

    trajectories = sample_trajectories(problems, engine, executor, SamplingSettings(n=8, temperature=1.0))
    trajectories["p1"][0].answer, trajectories["p1"][0].text

Each trajectory is generated one step at a time with its code executed in the sandbox
and the output block appended, exactly as in search, until it states an answer, fails
too many times in a row, writes an invalid step, or reaches the depth limit. All
unfinished trajectories of all problems go to the engine together, and all their code
to the executor together. The first step of a problem's N samples is one prompt with
n = N, so its prefix is encoded once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from rstar_math.models.engine import Engine, SamplingParams
from rstar_math.sandbox import ExecRequest
from rstar_math.search.mcts import Executor, Problem, SearchStats, code_step_outcome
from rstar_math.steps import STOP_STRINGS, StepKind, parse_step, render_prompt, render_step


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_depth: int = 16
    max_consecutive_errors: int = 2
    max_step_tokens: int = 2048


@dataclass
class Trajectory:
    """One sampled solution."""

    problem_id: str
    question: str
    steps: list[tuple[str, str | None]] = field(default_factory=list)  # (step text, output block or None)
    code: list[str] = field(default_factory=list)  # code of the clean steps: the next step's prefix
    answer: str | None = None
    end: str = ""  # answered, errors, depth, invalid ('' while running)
    tokens: int = 0
    consecutive_errors: int = 0

    @property
    def finished(self) -> bool:
        return bool(self.end)

    @property
    def completion(self) -> str:
        return "".join(render_step(text, output) for text, output in self.steps)

    @property
    def text(self) -> str:
        """Prompt and steps, as the policy and the PPM see them."""
        return render_prompt(self.question) + self.completion


def _advance(trajectory: Trajectory, completion, result, settings: SamplingSettings) -> None:
    trajectory.tokens += completion.token_count
    step = parse_step(completion.text)
    if completion.finish_reason == "length" or step.kind is StepKind.INVALID:
        trajectory.steps.append((step.text, None))
        trajectory.end = "invalid"
        return
    if step.kind is StepKind.ANSWER:
        trajectory.steps.append((step.text, None))
        trajectory.answer = step.answer
        trajectory.end = "answered"
        return
    status, output, is_error = code_step_outcome(result)
    trajectory.steps.append((step.text, output))
    if is_error:
        trajectory.consecutive_errors += 1
    else:
        trajectory.consecutive_errors = 0
        trajectory.code.append(step.code)
    if trajectory.consecutive_errors >= settings.max_consecutive_errors:
        trajectory.end = "errors"
    elif len(trajectory.steps) >= settings.max_depth:
        trajectory.end = "depth"


def _params(settings: SamplingSettings, n: int) -> SamplingParams:
    return SamplingParams(n=n, temperature=settings.temperature, top_p=settings.top_p,
                          max_new_tokens=settings.max_step_tokens, stop=STOP_STRINGS)


def sample_trajectories(
    problems: Sequence[Problem],
    engine: Engine,
    executor: Executor,
    settings: SamplingSettings,
    *,
    stats: SearchStats | None = None,
) -> dict[str, list[Trajectory]]:
    """`settings.n` trajectories per problem (one greedy trajectory at temperature 0)."""
    stats = stats if stats is not None else SearchStats()
    started = time.monotonic()
    out = {p.problem_id: [Trajectory(p.problem_id, p.question) for _ in range(settings.n)] for p in problems}
    first = True
    while True:
        active = [t for group in out.values() for t in group if not t.finished]
        if not active:
            break
        tick = time.monotonic()
        if first:  # every sample of a problem starts from the same prompt: one prompt, n completions
            grouped = engine.generate([render_prompt(p.question) for p in problems], _params(settings, settings.n))
            completions = [c for group in grouped for c in group]
        else:
            completions = [group[0] for group in engine.generate([t.text for t in active], _params(settings, 1))]
        stats.engine_s += time.monotonic() - tick
        first = False

        tick = time.monotonic()
        requests, owners = [], []
        for trajectory, completion in zip(active, completions):
            step = parse_step(completion.text)
            if step.kind is StepKind.CODE and completion.finish_reason != "length":
                owners.append(len(requests))
                requests.append(ExecRequest(code=step.code, prefix="\n".join(trajectory.code)))
            else:
                owners.append(None)
        results = executor.run_batch(requests) if requests else []
        stats.executor_s += time.monotonic() - tick
        stats.executor_calls += len(requests)

        tick = time.monotonic()
        for trajectory, completion, owner in zip(active, completions, owners):
            stats.generated_tokens += completion.token_count
            _advance(trajectory, completion, results[owner] if owner is not None else None, settings)
        stats.bookkeeping_s += time.monotonic() - tick
    stats.problems += len(problems)
    stats.wall_s += time.monotonic() - started
    return out
