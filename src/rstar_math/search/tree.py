"""One search tree per problem: nodes, UCT selection, backup, and the trees artefact rows.

Statistics follow METHOD.md:
  visits N and value sum W per node; Q = W / N (a node never visited has Q = its
  initial value, 0 in terminal-guided search).
  UCT(s, a) = Q(s, a) + c * sqrt(ln N(s) / N(s, a)), unvisited children first.
  Backup adds a terminal's reward to N and W of every node from it to the root.
  PPM-guided search seeds each new non-terminal node with its PPM score as one
  visit of that value (N = 1, W = score), so its initial Q is the PPM score,
  as in the authors' code; the parent's N is untouched by seeds.

Because every terminal is backed up exactly once (when it is created; selection
never re-enters a terminal), N and W of any node are a function of the rewards of
the terminals below it plus its seed. `recompute_statistics` uses that to rebuild
them from verified rewards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import pyarrow as pa

from rstar_math.data.schemas import TREES
from rstar_math.steps import render_trajectory

ROOT = 0


@dataclass
class Node:
    """One step of a trajectory (the root is the bare question)."""

    parent: int | None
    depth: int
    text: str = ""
    code: str = ""
    output: str = ""
    exec_status: str = "none"  # executor status of a code step; "none" for answers, invalid steps and the root
    is_terminal: bool = False
    answer: str | None = None
    reward: float | None = None
    ppm_score: float | None = None
    consecutive_errors: int = 0
    visits: int = 0
    value_sum: float = 0.0
    children: list[int] = field(default_factory=list)
    exhausted: bool = False  # every child is terminal or exhausted: nothing left to explore below

    @property
    def has_output(self) -> bool:
        return self.exec_status != "none"


class SearchTree:
    """The tree of one problem. Node ids are list indices; the root is 0."""

    def __init__(self, problem_id: str, question: str, answer: str):
        self.problem_id = problem_id
        self.question = question
        self.ground_truth = answer
        self.nodes: list[Node] = [Node(parent=None, depth=0)]

    def __len__(self) -> int:
        return len(self.nodes)

    # -- structure -------------------------------------------------------------------------

    def add_child(self, parent: int, **fields) -> int:
        node = Node(parent=parent, depth=self.nodes[parent].depth + 1, **fields)
        self.nodes.append(node)
        index = len(self.nodes) - 1
        self.nodes[parent].children.append(index)
        return index

    def path(self, index: int) -> list[int]:
        """Node ids from the root to `index`, both included."""
        out = []
        current: int | None = index
        while current is not None:
            out.append(current)
            current = self.nodes[current].parent
        return out[::-1]

    def steps(self, index: int) -> list[tuple[str, str | None]]:
        """(step text, output block or None) from the first step to `index`."""
        return [(self.nodes[i].text, self.nodes[i].output if self.nodes[i].has_output else None) for i in self.path(index)[1:]]

    def trajectory(self, index: int) -> str:
        """The rendered prompt and steps up to `index`, as the policy and the PPM see them."""
        return render_trajectory(self.question, self.steps(index))

    def cumulative_code(self, index: int) -> str:
        """Code of the steps from the root to `index` that ran cleanly (the prefix for a child of `index`)."""
        parts = [self.nodes[i].code for i in self.path(index)[1:] if self.nodes[i].exec_status == "ok" and self.nodes[i].code]
        return "\n".join(parts)

    def terminals(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.is_terminal]

    @property
    def solved(self) -> bool:
        return any(n.is_terminal and n.reward is not None and n.reward > 0 for n in self.nodes)

    # -- statistics ------------------------------------------------------------------------

    def q(self, index: int) -> float:
        node = self.nodes[index]
        return node.value_sum / node.visits if node.visits else 0.0

    def uct(self, index: int, c: float) -> float:
        node = self.nodes[index]
        parent_visits = self.nodes[node.parent].visits if node.parent is not None else node.visits
        if node.visits == 0:
            return math.inf
        return self.q(index) + c * math.sqrt(math.log(max(parent_visits, 1)) / node.visits)

    def select_child(self, index: int, c: float) -> int | None:
        """The child to descend into: unvisited first (in creation order), else the highest UCT.

        Terminal and exhausted children are skipped; None when none is left (the caller
        marks `index` exhausted). Ties go to the earlier child, so search is deterministic.
        """
        best, best_score = None, -math.inf
        for child in self.nodes[index].children:
            node = self.nodes[child]
            if node.is_terminal or node.exhausted:
                continue
            score = self.uct(child, c)
            if score > best_score:
                best, best_score = child, score
        return best

    def backup(self, index: int, reward: float) -> None:
        """Add a terminal reward to every node from `index` up to the root."""
        for i in self.path(index):
            self.nodes[i].visits += 1
            self.nodes[i].value_sum += reward

    def seed(self, index: int, value: float) -> None:
        """Initialise a new node's Q with a value estimate (the PPM score) as one visit."""
        node = self.nodes[index]
        node.visits += 1
        node.value_sum += value

    def recompute_statistics(self, rewards: Mapping[int, float]) -> None:
        """Rebuild every node's N and W from terminal rewards (and PPM seeds), bottom-up.

        `rewards` gives the reward of each terminal; terminals not in it keep theirs.
        """
        for index, reward in rewards.items():
            if not self.nodes[index].is_terminal:
                raise ValueError(f"{self.problem_id}: node {index} is not terminal")
            self.nodes[index].reward = reward
        for node in self.nodes:
            seeded = node.ppm_score is not None and not node.is_terminal
            node.visits = 1 if seeded else 0
            node.value_sum = node.ppm_score if seeded else 0.0
        for index in range(len(self.nodes) - 1, -1, -1):  # children always have larger ids than parents
            node = self.nodes[index]
            if node.is_terminal and node.reward is not None:
                for i in self.path(index):
                    self.nodes[i].visits += 1
                    self.nodes[i].value_sum += node.reward

    # -- the trees artefact ----------------------------------------------------------------

    def rows(self) -> dict[str, list]:
        """Columns of the TREES schema for this tree."""
        columns: dict[str, list] = {name: [] for name in TREES.columns}
        for index, node in enumerate(self.nodes):
            columns["problem_id"].append(self.problem_id)
            columns["node_id"].append(index)
            columns["parent_id"].append(node.parent)
            columns["depth"].append(node.depth)
            columns["text"].append(node.text)
            columns["code"].append(node.code)
            columns["output"].append(node.output)
            columns["exec_status"].append(node.exec_status)
            columns["is_terminal"].append(node.is_terminal)
            columns["answer"].append(node.answer)
            columns["reward"].append(node.reward)
            columns["q_value"].append(self.q(index))
            columns["visits"].append(node.visits)
            columns["ppm_score"].append(node.ppm_score)
        return columns

    @classmethod
    def from_rows(cls, problem_id: str, question: str, answer: str, rows: Iterable[Mapping]) -> "SearchTree":
        """Rebuild a tree from its TREES rows (any order). Value sums are derived as Q * N."""
        ordered = sorted(rows, key=lambda r: r["node_id"])
        if not ordered or ordered[0]["node_id"] != ROOT or ordered[0]["parent_id"] is not None:
            raise ValueError(f"{problem_id}: tree has no root row (node_id 0 without parent)")
        tree = cls(problem_id, question, answer)
        tree.nodes = []
        for expected, row in enumerate(ordered):
            if row["node_id"] != expected:
                raise ValueError(f"{problem_id}: node ids are not contiguous (missing {expected})")
            parent = row["parent_id"]
            if parent is not None and not 0 <= parent < expected:
                raise ValueError(f"{problem_id}: node {expected} has parent {parent}, which does not precede it")
            node = Node(
                parent=parent,
                depth=row["depth"],
                text=row["text"],
                code=row["code"],
                output=row["output"],
                exec_status=row["exec_status"],
                is_terminal=row["is_terminal"],
                answer=row["answer"],
                reward=row["reward"],
                ppm_score=row["ppm_score"],
                visits=row["visits"],
                value_sum=row["q_value"] * row["visits"],
            )
            tree.nodes.append(node)
            if parent is not None:
                tree.nodes[parent].children.append(expected)
        return tree


def trees_table(trees: Iterable[SearchTree]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in TREES.columns}
    for tree in trees:
        for name, values in tree.rows().items():
            columns[name].extend(values)
    return pa.Table.from_pydict(columns, schema=TREES.schema)


def group_rows(table: pa.Table) -> dict[str, list[dict]]:
    """Rows of a trees table grouped by problem_id, in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        groups.setdefault(row["problem_id"], []).append(row)
    return groups
