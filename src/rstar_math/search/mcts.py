"""Batched Monte Carlo tree search over code-augmented steps (METHOD.md, "MCTS").

    for tree in run_search(problems, engine, executor, settings, ppm=None, stats=stats):
        ...   # finished trees, as soon as each one is done

One rollout descends from the root: a leaf is expanded with k sampled candidate
steps (each code step's cumulative program run in the sandbox, each answer graded
and backed up at once), then the descent continues into a child chosen by UCT
(unvisited first) until no non-terminal child is left; that node is exhausted and
the rollout ends. A problem's budget is a number of rollouts.

Many trees advance together: every iteration gathers the pending expansions of all
trees in flight into one engine call, their code into one executor batch, and their
new nodes into one PPM call, so the model always sees a full batch and no tree
waits on another's Python.

Identical candidate steps within one expansion are kept once (the same action);
the executor caches repeated programs, so duplicates cost nothing twice.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence

from rstar_math.grading import answers_match
from rstar_math.models.engine import Engine, SamplingParams
from rstar_math.sandbox import ExecRequest, ExecResult, ExecStatus
from rstar_math.search.tree import ROOT, SearchTree
from rstar_math.steps import STOP_STRINGS, Step, StepKind, parse_step

NO_OUTPUT = "no_output"
NO_OUTPUT_MESSAGE = "NoOutput: the step printed nothing"


class Executor(Protocol):
    def run_batch(self, requests: Sequence[ExecRequest]) -> list[ExecResult]: ...


class ValueModel(Protocol):
    def score(self, texts: Sequence[str]) -> list[float]:
        """Scores in [-1, 1] of partial trajectories (prompt + steps), in order."""
        ...


@dataclass(frozen=True)
class Problem:
    problem_id: str
    question: str
    answer: str
    rollouts: int
    """This problem's budget (hard problems may get more)."""


@dataclass(frozen=True)
class SearchSettings:
    candidates: int = 8
    max_depth: int = 16
    max_consecutive_errors: int = 2
    c_uct: float = 2.0
    temperature: float = 0.7
    top_p: float = 1.0
    max_step_tokens: int = 2048
    time_limit_s: float = 0.0
    trees_in_flight: int = 256
    use_ppm: bool = False
    """Seed new nodes' Q with the PPM score (rounds >= ppm_from_round)."""
    terminal_reward: str = "ground_truth"
    """'ground_truth' (training search: +1/-1 from the grader) or 'ppm' (test time: the PPM's
    score of the finished trajectory, since the answer is unknown)."""

    def __post_init__(self):
        if self.terminal_reward not in ("ground_truth", "ppm"):
            raise ValueError(f"terminal_reward must be 'ground_truth' or 'ppm', got {self.terminal_reward!r}")


@dataclass
class SearchStats:
    problems: int = 0
    solved: int = 0
    rollouts: int = 0
    nodes: int = 0
    expansions: int = 0
    generated_tokens: int = 0
    executor_calls: int = 0
    ppm_calls: int = 0
    engine_s: float = 0.0
    executor_s: float = 0.0
    ppm_s: float = 0.0
    bookkeeping_s: float = 0.0
    wall_s: float = 0.0
    timed_out_problems: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Cursor:
    """Where one tree's search stands."""

    tree: SearchTree
    budget: int
    deadline: float | None
    rollouts_done: int = 0
    node: int = ROOT
    timed_out: bool = False


@dataclass
class _Candidate:
    cursor: _Cursor
    parent: int
    step: Step
    tokens: int
    truncated: bool
    request_index: int | None = None  # into the executor batch
    exec_result: ExecResult | None = None
    children: list[int] = field(default_factory=list)


def _advance(cursor: _Cursor, c_uct: float, now: float) -> bool:
    """Walk the cursor down to the next leaf to expand; False when this tree is finished."""
    tree = cursor.tree
    while True:
        if cursor.deadline is not None and now >= cursor.deadline:
            cursor.timed_out = True
            return False
        if cursor.rollouts_done >= cursor.budget or tree.nodes[ROOT].exhausted:
            return False
        node = tree.nodes[cursor.node]
        if not node.children and not node.is_terminal and not node.exhausted:
            return True  # a leaf: expand it
        child = tree.select_child(cursor.node, c_uct)
        if child is not None:
            cursor.node = child
            continue
        node.exhausted = True  # nothing left below: this rollout is over
        cursor.rollouts_done += 1
        cursor.node = ROOT


def run_search(
    problems: Iterable[Problem],
    engine: Engine,
    executor: Executor,
    settings: SearchSettings,
    *,
    ppm: ValueModel | None = None,
    stats: SearchStats | None = None,
) -> Iterator[SearchTree]:
    """Search every problem; yield each tree when its budget is spent (not in input order)."""
    if (settings.use_ppm or settings.terminal_reward == "ppm") and ppm is None:
        raise ValueError("PPM-guided search needs a value model (ppm=...)")
    stats = stats if stats is not None else SearchStats()
    params = SamplingParams(
        n=settings.candidates,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_step_tokens,
        stop=STOP_STRINGS,
    )
    pending = iter(problems)
    active: deque[_Cursor] = deque()
    started = time.monotonic()

    def refill() -> None:
        while len(active) < settings.trees_in_flight:
            problem = next(pending, None)
            if problem is None:
                return
            deadline = time.monotonic() + settings.time_limit_s if settings.time_limit_s > 0 else None
            active.append(_Cursor(SearchTree(problem.problem_id, problem.question, problem.answer), problem.rollouts, deadline))
            stats.problems += 1

    refill()
    while active:
        tick = time.monotonic()
        expand: list[_Cursor] = []
        for cursor in list(active):
            if _advance(cursor, settings.c_uct, tick):
                expand.append(cursor)
            else:
                active.remove(cursor)
                stats.rollouts += cursor.rollouts_done
                stats.timed_out_problems += cursor.timed_out
                stats.solved += cursor.tree.solved
                stats.nodes += len(cursor.tree)
                yield cursor.tree
        refill()
        if not expand:
            stats.bookkeeping_s += time.monotonic() - tick
            continue
        prompts = [cursor.tree.trajectory(cursor.node) for cursor in expand]
        stats.bookkeeping_s += time.monotonic() - tick

        tick = time.monotonic()
        outputs = engine.generate(prompts, params)
        stats.engine_s += time.monotonic() - tick
        stats.expansions += len(expand)

        tick = time.monotonic()
        candidates, requests = _candidates(expand, outputs, stats)
        stats.bookkeeping_s += time.monotonic() - tick

        if requests:
            tick = time.monotonic()
            results = executor.run_batch(requests)
            stats.executor_s += time.monotonic() - tick
            stats.executor_calls += len(requests)
            for candidate in candidates:
                if candidate.request_index is not None:
                    candidate.exec_result = results[candidate.request_index]

        tick = time.monotonic()
        new_nodes = [_add_child(candidate, settings) for candidate in candidates]
        stats.bookkeeping_s += time.monotonic() - tick

        _score_and_back_up(list(zip(candidates, new_nodes)), settings, ppm, stats)
    stats.wall_s += time.monotonic() - started


def _candidates(expand: list[_Cursor], outputs, stats: SearchStats) -> tuple[list[_Candidate], list[ExecRequest]]:
    candidates: list[_Candidate] = []
    requests: list[ExecRequest] = []
    for cursor, completions in zip(expand, outputs):
        seen: set[str] = set()
        prefix = None
        for completion in completions:
            stats.generated_tokens += completion.token_count
            step = parse_step(completion.text)
            if step.text in seen:
                continue
            seen.add(step.text)
            candidate = _Candidate(cursor, cursor.node, step, completion.token_count, completion.finish_reason == "length")
            if step.kind is StepKind.CODE and not candidate.truncated:
                if prefix is None:
                    prefix = cursor.tree.cumulative_code(cursor.node)
                candidate.request_index = len(requests)
                requests.append(ExecRequest(code=step.code, prefix=prefix))
            candidates.append(candidate)
    return candidates, requests


def code_step_outcome(result: ExecResult) -> tuple[str, str, bool]:
    """(exec_status, output block text, is_error) of an executed code step.

    A step that raised, timed out or printed nothing is an error step; its output block
    carries the error so the next step can react to it.
    """
    output = result.stdout.strip("\n")
    if result.status is ExecStatus.OK and output.strip():
        return "ok", output, False
    if result.status is ExecStatus.OK:
        return NO_OUTPUT, NO_OUTPUT_MESSAGE, True
    return result.status.value, result.error or result.status.value, True


def _add_child(candidate: _Candidate, settings: SearchSettings) -> int:
    """Create the tree node for one candidate step and decide whether it is terminal."""
    tree, parent = candidate.cursor.tree, candidate.parent
    parent_node = tree.nodes[parent]
    step = candidate.step
    if candidate.truncated or step.kind is StepKind.INVALID:
        return tree.add_child(parent, text=step.text, is_terminal=True, consecutive_errors=parent_node.consecutive_errors)
    if step.kind is StepKind.ANSWER:
        return tree.add_child(parent, text=step.text, is_terminal=True, answer=step.answer)
    assert candidate.exec_result is not None
    status, output, is_error = code_step_outcome(candidate.exec_result)
    errors = parent_node.consecutive_errors + 1 if is_error else 0
    depth = parent_node.depth + 1
    terminal = errors >= settings.max_consecutive_errors or depth >= settings.max_depth
    return tree.add_child(
        parent,
        text=step.text,
        code=step.code,
        output=output,
        exec_status=status,
        consecutive_errors=errors,
        is_terminal=terminal,
    )


def _score_and_back_up(
    created: list[tuple[_Candidate, int]], settings: SearchSettings, ppm: ValueModel | None, stats: SearchStats
) -> None:
    """Give terminals their reward and back it up; seed new inner nodes with the PPM."""
    if ppm is not None and (settings.use_ppm or settings.terminal_reward == "ppm"):
        # Every new node is scored: inner nodes for their initial Q, terminals for the record
        # (and, at test time, as their reward).
        texts = [c.cursor.tree.trajectory(node) for c, node in created]
        tick = time.monotonic()
        scores = ppm.score(texts) if texts else []
        stats.ppm_s += time.monotonic() - tick
        stats.ppm_calls += 1
        for (candidate, node), score in zip(created, scores):
            candidate.cursor.tree.nodes[node].ppm_score = float(score)
    tick = time.monotonic()
    for candidate, index in created:
        tree = candidate.cursor.tree
        node = tree.nodes[index]
        if node.is_terminal:
            node.reward = _terminal_reward(tree, index, settings)
            tree.backup(index, node.reward)
        elif settings.use_ppm and node.ppm_score is not None:
            tree.seed(index, node.ppm_score)
    stats.bookkeeping_s += time.monotonic() - tick


def _terminal_reward(tree: SearchTree, index: int, settings: SearchSettings) -> float:
    node = tree.nodes[index]
    if settings.terminal_reward == "ppm":
        # Test time: no ground truth. Failed trajectories still count as failures.
        return float(node.ppm_score) if node.answer is not None else -1.0
    if node.answer is None:
        return -1.0  # no answer: invalid step, too many errors or too deep
    return 1.0 if answers_match(node.answer, tree.ground_truth) else -1.0
