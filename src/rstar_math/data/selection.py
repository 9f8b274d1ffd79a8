"""Training data from verified search trees (METHOD.md, "Data selection after search").

Policy SFT data: for each solved problem, the top-2 trajectories that reach the
correct answer, ranked by the average Q of their steps (optionally only those within
a gap of the problem's best, `sft_max_q_gap`). Two trajectories that share
every step and differ only in how the final answer sentence is worded are one
solution: the second is skipped (otherwise the top-2 are nearly always one code path
written twice, since sibling answer steps share their parent's Q).

PPM pairs, per shared prefix (an inner node and its children, the sibling steps):
  positives  the 2 children with the highest Q among those that lead to a correct answer
             (a correct terminal at or below them);
  negatives  the 2 children with the lowest Q among those that lead only to wrong answers
             (terminals below them, none correct);
  pairs      every positive against every negative.
For the final step, where identical prefixes rarely meet, full trajectories are
compared instead: the 2 correct solutions with the highest average Q against the 2
wrong ones with the lowest. Q ranks; it is never a regression target.

Every choice breaks ties by node id, so the same trees always give the same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rstar_math.search.tree import SearchTree
from rstar_math.steps import render_prompt, render_step


@dataclass(frozen=True)
class SftExample:
    problem_id: str
    prompt: str
    completion: str
    avg_q: float


@dataclass(frozen=True)
class PreferencePair:
    problem_id: str
    prefix: str
    chosen: str
    rejected: str
    q_chosen: float
    q_rejected: float
    depth: int
    kind: str  # "step" or "final"


@dataclass(frozen=True)
class SelectionCounts:
    problem_id: str
    solved: bool
    sft_examples: int
    step_pairs: int
    final_pairs: int


@dataclass
class Selection:
    sft: list[SftExample] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    counts: list[SelectionCounts] = field(default_factory=list)


def _is_correct(tree: SearchTree, index: int) -> bool:
    node = tree.nodes[index]
    return node.is_terminal and node.reward is not None and node.reward > 0


def _outcomes(tree: SearchTree) -> tuple[list[bool], list[bool]]:
    """Per node: whether a correct terminal lies at or below it, and whether any terminal does."""
    any_correct = [False] * len(tree.nodes)
    any_terminal = [False] * len(tree.nodes)
    for index in range(len(tree.nodes) - 1, -1, -1):  # children have larger ids than their parents
        node = tree.nodes[index]
        if node.is_terminal:
            any_terminal[index] = True
            any_correct[index] = _is_correct(tree, index)
        parent = node.parent
        if parent is not None:
            any_correct[parent] |= any_correct[index]
            any_terminal[parent] |= any_terminal[index]
    return any_correct, any_terminal


def _average_q(tree: SearchTree, terminal: int) -> float:
    steps = tree.path(terminal)[1:]
    return sum(tree.q(i) for i in steps) / len(steps)


def _completion(tree: SearchTree, index: int) -> str:
    """The rendered steps from the first to `index` (what follows the prompt)."""
    return "".join(render_step(text, output) for text, output in tree.steps(index))


def solution_key(steps: Sequence[tuple[str, str | None]], answered: bool = True) -> tuple[str, ...]:
    """What tells two trajectories apart as solutions: the texts of their (step text, output)
    steps, less the final answer sentence when there is one (its wording is not a different way
    to solve the problem)."""
    texts = tuple(text for text, _ in steps)
    return texts[:-1] if answered else texts


def _trajectories(tree: SearchTree, correct: bool) -> list[tuple[float, int]]:
    """(average Q, terminal id) of distinct complete trajectories (solution_key): correct ones best
    first, wrong ones worst first; of two that are one solution, the one ranked first is kept."""
    found = [(_average_q(tree, t), t) for t in tree.terminals() if _is_correct(tree, t) == correct]
    sign = -1 if correct else 1
    kept, seen = [], set()
    for q, terminal in sorted(found, key=lambda item: (sign * item[0], item[1])):
        key = solution_key(tree.steps(terminal), tree.nodes[terminal].answer is not None)
        if key not in seen:
            seen.add(key)
            kept.append((q, terminal))
    return kept


def select_from_tree(tree: SearchTree, *, sft_per_problem: int = 2, sft_max_q_gap: float | None = None,
                     positives: int = 2, negatives: int = 2) -> Selection:
    out = Selection()
    prompt = render_prompt(tree.question)
    correct_paths = _trajectories(tree, correct=True)
    wrong_paths = _trajectories(tree, correct=False)

    for avg_q, terminal in correct_paths[:sft_per_problem]:
        if sft_max_q_gap is not None and avg_q < correct_paths[0][0] - sft_max_q_gap:
            break  # ranked best first: the rest are further below
        out.sft.append(SftExample(tree.problem_id, prompt, _completion(tree, terminal), avg_q))

    leads_correct, leads_anywhere = _outcomes(tree)
    step_pairs = 0
    for parent, node in enumerate(tree.nodes):
        if len(node.children) < 2:
            continue
        good = [c for c in node.children if leads_correct[c]]
        bad = [c for c in node.children if leads_anywhere[c] and not leads_correct[c]]
        chosen = sorted(good, key=lambda c: (-tree.q(c), c))[:positives]
        rejected = sorted(bad, key=lambda c: (tree.q(c), c))[:negatives]
        if not chosen or not rejected:
            continue
        prefix = prompt + _completion(tree, parent)
        for c in chosen:
            for r in rejected:
                out.pairs.append(
                    PreferencePair(
                        tree.problem_id,
                        prefix,
                        _step_text(tree, c),
                        _step_text(tree, r),
                        tree.q(c),
                        tree.q(r),
                        tree.nodes[c].depth,
                        "step",
                    )
                )
                step_pairs += 1

    final_pairs = 0
    for q_good, good in correct_paths[:positives]:
        for q_bad, bad in wrong_paths[:negatives]:
            out.pairs.append(
                PreferencePair(
                    tree.problem_id,
                    prompt,
                    _completion(tree, good),
                    _completion(tree, bad),
                    q_good,
                    q_bad,
                    tree.nodes[good].depth,
                    "final",
                )
            )
            final_pairs += 1

    out.counts.append(SelectionCounts(tree.problem_id, bool(correct_paths), len(out.sft), step_pairs, final_pairs))
    return out


def _step_text(tree: SearchTree, index: int) -> str:
    node = tree.nodes[index]
    return render_step(node.text, node.output if node.has_output else None)
