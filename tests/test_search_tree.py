"""UCT selection and backup on hand-built trees: visit counts and Q values are exact."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rstar_math.data.schemas import TREES, validate
from rstar_math.search.tree import ROOT, SearchTree, trees_table


def _tree() -> SearchTree:
    """root -> a, b;  a -> a1 (terminal), a2;  b -> b1 (terminal)."""
    tree = SearchTree("p1", "What is 2+3?", "5")
    a = tree.add_child(ROOT, text="<code>\nx=5\n<end_of_step>", code="x=5", output="5", exec_status="ok")
    b = tree.add_child(ROOT, text="<code>\nx=6\n<end_of_step>", code="x=6", output="6", exec_status="ok")
    tree.add_child(a, text="<answer>\\boxed{5}<end_of_answer>", is_terminal=True, answer="5")
    tree.add_child(a, text="<code>\nprint(x)\n<end_of_step>", code="print(x)", output="5", exec_status="ok")
    tree.add_child(b, text="<answer>\\boxed{6}<end_of_answer>", is_terminal=True, answer="6")
    return tree


def test_backup_adds_reward_to_every_node_on_the_path():
    tree = _tree()
    tree.backup(3, 1.0)
    tree.backup(5, -1.0)
    assert [n.visits for n in tree.nodes] == [2, 1, 1, 1, 0, 1]
    assert [tree.q(i) for i in range(6)] == [0.0, 1.0, -1.0, 1.0, 0.0, -1.0]


def test_unvisited_children_come_first_in_creation_order():
    tree = _tree()
    assert tree.select_child(ROOT, c=2.0) == 1
    tree.backup(3, 1.0)
    assert tree.select_child(ROOT, c=2.0) == 2  # b is still unvisited
    # Terminal children are never selected; a2 is the only candidate below a.
    assert tree.select_child(1, c=2.0) == 4


def test_uct_value_is_the_method_formula():
    tree = _tree()
    tree.backup(3, 1.0)  # a: N=1, Q=1
    tree.backup(5, -1.0)  # b: N=1, Q=-1
    tree.backup(3, 1.0)  # a: N=2 (a terminal backed up twice only in this hand-built case)
    root_n = tree.nodes[ROOT].visits
    assert tree.uct(1, 2.0) == pytest.approx(1.0 + 2.0 * math.sqrt(math.log(root_n) / 2))
    assert tree.uct(2, 2.0) == pytest.approx(-1.0 + 2.0 * math.sqrt(math.log(root_n) / 1))
    expected = 1 if tree.uct(1, 2.0) > tree.uct(2, 2.0) else 2
    assert tree.select_child(ROOT, c=2.0) == expected


def test_exploration_term_can_overturn_exploitation():
    tree = SearchTree("p", "q", "1")
    good = tree.add_child(ROOT)
    other = tree.add_child(ROOT)
    for _ in range(20):
        t = tree.add_child(good, is_terminal=True)
        tree.backup(t, 0.2)
    t = tree.add_child(other, is_terminal=True)
    tree.backup(t, 0.0)
    # Q(good)=0.2 with 20 visits, Q(other)=0 with 1: with c=2 the rarely tried child wins, with c=0 it does not.
    assert tree.select_child(ROOT, c=2.0) == other
    assert tree.select_child(ROOT, c=0.0) == good


def test_ppm_seed_is_one_visit_of_the_score_and_leaves_the_parent_alone():
    tree = _tree()
    tree.nodes[4].ppm_score = 0.5
    tree.seed(4, 0.5)
    assert (tree.nodes[4].visits, tree.q(4), tree.nodes[1].visits) == (1, 0.5, 0)


def test_exhausted_and_terminal_children_are_skipped():
    tree = _tree()
    tree.nodes[1].exhausted = True
    assert tree.select_child(ROOT, c=2.0) == 2
    tree.nodes[2].exhausted = True
    assert tree.select_child(ROOT, c=2.0) is None


def test_cumulative_code_keeps_only_clean_steps():
    tree = SearchTree("p", "q", "1")
    a = tree.add_child(ROOT, code="x = 1", exec_status="ok", output="1")
    b = tree.add_child(a, code="y = undefined", exec_status="error", output="NameError: ...")
    c = tree.add_child(b, code="y = x + 1", exec_status="ok", output="2")
    assert tree.cumulative_code(c) == "x = 1\ny = x + 1"
    assert tree.cumulative_code(ROOT) == ""


def test_trajectory_renders_steps_with_output_blocks():
    tree = _tree()
    text = tree.trajectory(3)
    assert text.startswith("<question>\nWhat is 2+3?\n<end_of_question>\n")
    assert "<end_of_step>\n<output>5<end_of_output>\n<answer>\\boxed{5}<end_of_answer>\n" in text


def test_rows_round_trip_through_the_trees_schema():
    tree = _tree()
    tree.backup(3, 1.0)
    tree.nodes[3].reward = 1.0
    table = validate(trees_table([tree]), TREES)
    rows = table.to_pylist()
    again = SearchTree.from_rows("p1", tree.question, "5", reversed(rows))
    assert again.rows() == tree.rows()
    assert again.nodes[1].children == [3, 4]


def test_from_rows_rejects_broken_trees():
    rows = trees_table([_tree()]).to_pylist()
    with pytest.raises(ValueError, match="no root"):
        SearchTree.from_rows("p1", "q", "5", rows[1:])
    with pytest.raises(ValueError, match="not contiguous"):
        SearchTree.from_rows("p1", "q", "5", rows[:2] + rows[3:])


@st.composite
def _random_trees(draw):
    """A random tree with terminal rewards backed up once each, as search does."""
    tree = SearchTree("p", "q", "1")
    for _ in range(draw(st.integers(1, 25))):
        inner = [i for i, n in enumerate(tree.nodes) if not n.is_terminal]
        parent = draw(st.sampled_from(inner))
        terminal = draw(st.booleans())
        index = tree.add_child(parent, is_terminal=terminal)
        if terminal:
            tree.nodes[index].reward = draw(st.sampled_from([-1.0, 1.0]))
            tree.backup(index, tree.nodes[index].reward)
        elif draw(st.booleans()):
            score = draw(st.floats(-1, 1))
            tree.nodes[index].ppm_score = score
            tree.seed(index, score)
    return tree


@settings(max_examples=200, deadline=None)
@given(_random_trees())
def test_recomputed_statistics_equal_the_ones_search_built(tree):
    before = [(n.visits, round(n.value_sum, 9)) for n in tree.nodes]
    tree.recompute_statistics({})
    assert [(n.visits, round(n.value_sum, 9)) for n in tree.nodes] == before


@settings(max_examples=100, deadline=None)
@given(_random_trees())
def test_flipping_a_reward_changes_q_along_exactly_its_path(tree):
    terminals = [i for i in tree.terminals() if tree.nodes[i].reward is not None]
    if not terminals:
        return
    flipped = terminals[0]
    before = [n.value_sum for n in tree.nodes]
    tree.recompute_statistics({flipped: -tree.nodes[flipped].reward})
    changed = {i for i, n in enumerate(tree.nodes) if abs(n.value_sum - before[i]) > 1e-9}
    assert changed == set(tree.path(flipped))
