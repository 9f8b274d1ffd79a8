"""Select rules on a hand-built tree whose answers and Q values are known."""

from __future__ import annotations

import random

from rstar_math.data.selection import select_from_tree
from rstar_math.search.tree import ROOT, SearchTree, trees_table


def _code(tree, parent, body, output, status="ok"):
    return tree.add_child(parent, text=f"<code>\n{body}\n<end_of_step>", code=body, output=output, exec_status=status)


def _answer(tree, parent, value, reward):
    index = tree.add_child(parent, text=f"<answer>\\boxed{{{value}}}<end_of_answer>", is_terminal=True, answer=value)
    tree.nodes[index].reward = reward
    tree.backup(index, reward)
    return index


def known_tree() -> SearchTree:
    """root -> A (13) -> wrong; B (42) -> right, wrong; C (42) -> right; D (error) -> dead end; E unexplored."""
    tree = SearchTree("p1", "What is 6 * 7?", "42")
    a = _code(tree, ROOT, "print(6 + 7)", "13")
    b = _code(tree, ROOT, "print(6 * 7)", "42")
    c = _code(tree, ROOT, "print(7 * 6)", "42")
    d = _code(tree, ROOT, "print(y)", "NameError: name 'y' is not defined", status="error")
    _code(tree, ROOT, "print(42 + 0)", "42")  # E: never explored
    _answer(tree, a, "13", -1.0)
    _answer(tree, b, "42", 1.0)
    _answer(tree, b, "41", -1.0)
    _answer(tree, c, "42", 1.0)
    dead = tree.add_child(d, text="<code>\nprint(z)\n<end_of_step>", code="print(z)", output="NameError", exec_status="error",
                          is_terminal=True)
    tree.nodes[dead].reward = -1.0
    tree.backup(dead, -1.0)
    return tree


def test_sft_takes_the_top_two_correct_trajectories_by_average_q():
    selection = select_from_tree(known_tree())
    assert [round(e.avg_q, 6) for e in selection.sft] == [1.0, 0.5]
    first = selection.sft[0]
    assert first.prompt == "<question>\nWhat is 6 * 7?\n<end_of_question>\n"
    assert first.completion == (
        "<code>\nprint(7 * 6)\n<end_of_step>\n<output>42<end_of_output>\n<answer>\\boxed{42}<end_of_answer>\n"
    )


def test_a_trajectory_further_than_the_gap_below_the_best_is_not_kept():
    """C (average Q 1) and B's right answer (0.5: B's wrong answer pulls B's Q to 0)."""
    assert [e.avg_q for e in select_from_tree(known_tree(), sft_max_q_gap=0.5).sft] == [1.0, 0.5]
    assert [e.avg_q for e in select_from_tree(known_tree(), sft_max_q_gap=0.4).sft] == [1.0]


def test_answers_worded_differently_after_the_same_steps_are_one_solution():
    """B's two correct answers (average Q 1) outrank C's (1/3): without the rule both SFT examples
    would be B's code with two wordings of its answer, and C's wrong answer would be rejected twice."""
    tree = SearchTree("p3", "What is 6 * 7?", "42")
    b = _code(tree, ROOT, "print(6 * 7)", "42")
    c = _code(tree, ROOT, "print(7 * 6)", "42")
    for text in ("\\boxed{42}", "The answer is \\boxed{42}"):
        index = tree.add_child(b, text=f"<answer>{text}<end_of_answer>", is_terminal=True, answer="42")
        tree.nodes[index].reward = 1.0
        tree.backup(index, 1.0)
    _answer(tree, c, "42", 1.0)
    for text in ("\\boxed{41}", "So it is \\boxed{41}"):  # one wrong solution, worded twice
        index = tree.add_child(c, text=f"<answer>{text}<end_of_answer>", is_terminal=True, answer="41")
        tree.nodes[index].reward = -1.0
        tree.backup(index, -1.0)
    selection = select_from_tree(tree)
    assert [e.completion.split("\n")[1] for e in selection.sft] == ["print(6 * 7)", "print(7 * 6)"]
    final = [p for p in selection.pairs if p.kind == "final"]
    assert [(p.chosen.split("\n")[1], p.rejected.split("\n")[1]) for p in final] == [
        ("print(6 * 7)", "print(7 * 6)"),
        ("print(7 * 6)", "print(7 * 6)"),
    ]


def test_step_pairs_are_best_correct_siblings_against_worst_wrong_ones():
    pairs = [p for p in select_from_tree(known_tree()).pairs if p.kind == "step"]
    root_pairs = [(p.chosen.split("\n")[1], p.rejected.split("\n")[1]) for p in pairs if p.depth == 1]
    assert root_pairs == [
        ("print(7 * 6)", "print(6 + 7)"),
        ("print(7 * 6)", "print(y)"),
        ("print(6 * 7)", "print(6 + 7)"),
        ("print(6 * 7)", "print(y)"),
    ]
    assert all("print(42 + 0)" not in p.chosen + p.rejected for p in pairs)  # unexplored: no verdict
    [deep] = [p for p in pairs if p.depth == 2]
    assert deep.prefix.endswith("<code>\nprint(6 * 7)\n<end_of_step>\n<output>42<end_of_output>\n")
    assert (deep.chosen, deep.rejected) == ("<answer>\\boxed{42}<end_of_answer>\n", "<answer>\\boxed{41}<end_of_answer>\n")
    assert (deep.q_chosen, deep.q_rejected) == (1.0, -1.0)
    assert pairs[0].chosen.endswith("<output>42<end_of_output>\n")  # steps carry their output blocks


def test_final_pairs_compare_full_trajectories():
    final = [p for p in select_from_tree(known_tree()).pairs if p.kind == "final"]
    assert len(final) == 4
    assert {p.prefix for p in final} == {"<question>\nWhat is 6 * 7?\n<end_of_question>\n"}
    assert all("\\boxed{42}" in p.chosen for p in final)
    rejected = sorted({p.rejected.split("\n")[1] for p in final})
    assert rejected == ["print(6 + 7)", "print(y)"]  # the two lowest average Q; B's wrong branch is at -0.5


def test_counts_per_problem():
    [counts] = select_from_tree(known_tree()).counts
    assert (counts.solved, counts.sft_examples, counts.step_pairs, counts.final_pairs) == (True, 2, 5, 4)


def test_an_unsolved_problem_gives_no_sft_and_no_pairs_without_a_positive():
    tree = SearchTree("p2", "q", "1")
    for value in ("2", "3"):
        _answer(tree, ROOT, value, -1.0)
    selection = select_from_tree(tree)
    assert selection.sft == [] and selection.pairs == []
    assert selection.counts[0].solved is False


def test_selection_is_deterministic_and_independent_of_row_order():
    tree = known_tree()
    rows = trees_table([tree]).to_pylist()
    random.Random(3).shuffle(rows)
    again = SearchTree.from_rows("p1", tree.question, tree.ground_truth, rows)
    assert select_from_tree(again) == select_from_tree(known_tree())
