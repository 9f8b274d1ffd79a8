"""MCTS over a scripted policy and the real sandbox: the search logic, not the model."""

from __future__ import annotations

import pytest

from rstar_math.sandbox import ExecutorPool, SandboxLimits
from rstar_math.search.mcts import Problem, SearchSettings, SearchStats, run_search
from rstar_math.search.tree import ROOT

from scripted import ScriptedEngine, answer, code, last_output


@pytest.fixture(scope="module")
def executor():
    with ExecutorPool(SandboxLimits(timeout_s=2.0), workers=2) as pool:
        yield pool


def one_correct_branch(prompt: str) -> list[str]:
    """Root: four ways to start, only `6 * 7` is right. After a step: box what it printed."""
    if "<code>" not in prompt.split("<end_of_question>")[1]:
        return [code("x = 6 + 7\nprint(x)"), code("x = 6 * 7\nprint(x)"), code("x = 6 - 7\nprint(x)"), code("print(y)")]
    out = last_output(prompt)
    if out is not None and out.startswith("NameError"):
        return [code("print(z)")]  # a second error in a row
    return [answer(out)]


def _search(script, executor, *, rollouts=4, **settings):
    stats = SearchStats()
    problems = [Problem("p1", "What is 6 * 7?", "42", rollouts)]
    trees = list(run_search(problems, ScriptedEngine(script), executor, SearchSettings(**settings), stats=stats))
    return trees[0], stats


def test_search_finds_the_one_correct_branch(executor):
    tree, stats = _search(one_correct_branch, executor, candidates=4, max_consecutive_errors=2)
    assert tree.solved and stats.solved == 1
    roots = tree.nodes[ROOT].children
    assert [tree.nodes[c].output for c in roots] == ["13", "42", "-1", "NameError: name 'y' is not defined"]
    correct = [i for i in tree.terminals() if tree.nodes[i].reward == 1.0]
    assert len(correct) == 1 and tree.path(correct[0])[1] == roots[1]
    assert tree.nodes[correct[0]].answer == "42"
    # Each of the four first steps leads to exactly one terminal, backed up once: Q is exact.
    assert [tree.q(c) for c in roots] == [-1.0, 1.0, -1.0, -1.0]
    assert [tree.nodes[c].visits for c in roots] == [1, 1, 1, 1]
    assert tree.nodes[ROOT].visits == 4 and tree.q(ROOT) == -0.5


def test_consecutive_errors_end_a_branch_with_reward_minus_one(executor):
    tree, _ = _search(one_correct_branch, executor, candidates=4, max_consecutive_errors=2)
    error_branch = tree.nodes[ROOT].children[3]
    [second] = tree.nodes[error_branch].children
    node = tree.nodes[second]
    assert node.is_terminal and node.reward == -1.0 and node.consecutive_errors == 2
    assert node.exec_status == "error" and node.answer is None


def test_depth_limit_makes_a_terminal(executor):
    def forever(prompt):
        return [code("print(1)")]

    tree, stats = _search(forever, executor, rollouts=2, candidates=1, max_depth=3)
    assert max(n.depth for n in tree.nodes) == 3
    deepest = [n for n in tree.nodes if n.depth == 3]
    assert all(n.is_terminal and n.reward == -1.0 for n in deepest)
    assert not tree.solved and stats.problems == 1


def test_unsolved_problems_are_recorded_not_dropped(executor):
    def always_wrong(prompt):
        return [answer("0")]

    problems = [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1), 2) for i in range(3)]
    stats = SearchStats()
    trees = list(run_search(problems, ScriptedEngine(always_wrong), executor, SearchSettings(candidates=2), stats=stats))
    assert sorted(t.problem_id for t in trees) == ["p0", "p1", "p2"]
    assert stats.solved == 0 and stats.problems == 3


def test_duplicate_candidates_are_kept_once(executor):
    def same(prompt):
        return [answer("42")]

    tree, _ = _search(same, executor, candidates=4, rollouts=1)
    assert len(tree.nodes[ROOT].children) == 1


def test_trees_advance_together_in_one_engine_call(executor):
    engine = ScriptedEngine(one_correct_branch)
    problems = [Problem(f"p{i}", "What is 6 * 7?", "42", 2) for i in range(5)]
    list(run_search(problems, engine, executor, SearchSettings(candidates=4, trees_in_flight=5)))
    assert len(engine.calls[0][0]) == 5  # the first call expands all five roots at once


def test_budget_counts_rollouts(executor):
    """Each rollout ends when its descent runs out of non-terminal children."""
    def two_levels(prompt):
        depth = prompt.count("<code>")
        if depth < 2:
            return [code(f"print({depth}1)"), code(f"print({depth}2)")]
        return [answer("42"), answer("41")]

    tree, stats = _search(two_levels, executor, rollouts=3, candidates=2)
    assert stats.rollouts == 3
    # 3 rollouts reach three different depth-2 nodes, each expanded into two terminals.
    assert len(tree.terminals()) == 6
    assert tree.nodes[ROOT].visits == 6


class ConstantPPM:
    def __init__(self, value: float):
        self.value = value
        self.calls = 0

    def score(self, texts):
        self.calls += 1
        return [self.value] * len(texts)


def test_ppm_mode_seeds_new_nodes_and_records_scores(executor):
    ppm = ConstantPPM(0.25)
    stats = SearchStats()
    problems = [Problem("p1", "What is 6 * 7?", "42", 2)]
    [tree] = run_search(problems, ScriptedEngine(one_correct_branch), executor,
                        SearchSettings(candidates=4, use_ppm=True), ppm=ppm, stats=stats)
    inner = [n for n in tree.nodes[1:] if not n.is_terminal]
    assert inner and all(n.ppm_score == 0.25 for n in tree.nodes[1:])
    # An inner node's N counts its seed plus the terminals below it.
    for i, n in enumerate(tree.nodes):
        if i and not n.is_terminal:
            below = [t for t in tree.terminals() if i in tree.path(t)]
            assert n.visits == 1 + len(below)
    assert stats.ppm_calls >= 1


def test_ppm_mode_without_a_ppm_is_an_error(executor):
    with pytest.raises(ValueError, match="value model"):
        list(run_search([], ScriptedEngine(one_correct_branch), executor, SearchSettings(use_ppm=True)))


def test_test_time_search_uses_ppm_scores_as_rewards(executor):
    ppm = ConstantPPM(0.5)
    problems = [Problem("p1", "What is 6 * 7?", "unknown", 2)]
    [tree] = run_search(problems, ScriptedEngine(one_correct_branch), executor,
                        SearchSettings(candidates=4, terminal_reward="ppm", use_ppm=True), ppm=ppm)
    answered = [tree.nodes[i] for i in tree.terminals() if tree.nodes[i].answer is not None]
    assert answered and all(n.reward == 0.5 for n in answered)
