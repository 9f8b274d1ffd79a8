"""Verify stage: the authoritative verdict on every terminal trajectory of the search trees.

    counts = verify(trees_uri, problems_uri, out_uri, sandbox=cfg.sandbox, context=ctx, round=2)

For each terminal, the trajectory is re-executed from scratch in the sandbox, step
by step (each clean step's cumulative program, exactly as search ran it), and every
step's output must come out as recorded; the final answer is re-extracted from the
answer step's text, parsed by the step grammar search uses (a malformed step, say one
that opens a second <answer>, has no answer however boxed), and graded against the
ground truth. Verdicts:
  correct       every step reproduced and the answer matches   -> reward +1
  wrong         the answer does not match, or there is none    -> reward -1
  exec_failure  a step failed or printed something else         -> reward -1
Rewards, Q values and visit counts are then rebuilt from these verdicts (see
SearchTree.recompute_statistics), so select trusts nothing the search claimed.
Works on one shard of trees; `merge_counts` adds shards' counts up.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import pyarrow as pa

from rstar_math.artifacts import ArtifactRef, open_artifact, write_artifact
from rstar_math.config import SandboxConfig
from rstar_math.data.schemas import TREES, VERIFIED_TREES, read_table, write_table
from rstar_math.grading import answers_match
from rstar_math.lineage import RunContext
from rstar_math.sandbox import ExecRequest, ExecutorPool
from rstar_math.search.tree import SearchTree, group_rows
from rstar_math.stages.io import read_problem_set
from rstar_math.stages.rollout import STATS_FILE as ROLLOUT_STATS_FILE
from rstar_math.steps import parse_step

VERIFIED_FILE = "verified_trees.parquet"
REPORT_FILE = "verify_report.json"


@dataclass(frozen=True)
class VerifyCounts:
    problems: int = 0
    solved: int = 0
    terminals: int = 0
    correct: int = 0
    wrong: int = 0
    exec_failures: int = 0
    disagreements: int = 0
    """Terminals whose verified reward differs from the reward search gave them."""

    def __add__(self, other: "VerifyCounts") -> "VerifyCounts":
        return VerifyCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


def merge_counts(counts: Sequence[VerifyCounts]) -> VerifyCounts:
    total = VerifyCounts()
    for c in counts:
        total = total + c
    return total


@dataclass
class _Check:
    """One terminal's re-execution: the step requests it needs and what each must print."""

    tree: SearchTree
    terminal: int
    answer: str
    requests: list[int]  # indices into the shared request list
    expected: list[str]


def _plan(trees: list[SearchTree]) -> tuple[list[_Check], list[ExecRequest]]:
    requests: list[ExecRequest] = []
    index: dict[ExecRequest, int] = {}  # identical programs (shared prefixes) run once
    checks = []
    for tree in trees:
        for terminal in tree.terminals():
            answer = parse_step(tree.nodes[terminal].text).answer
            if answer is None:
                continue  # no final answer: wrong without running anything
            check = _Check(tree, terminal, answer, [], [])
            prefix: list[str] = []
            for i in tree.path(terminal)[1:]:
                node = tree.nodes[i]
                if node.exec_status != "ok":
                    continue  # failed steps never entered the program
                request = ExecRequest(code=node.code, prefix="\n".join(prefix))
                if request not in index:
                    index[request] = len(requests)
                    requests.append(request)
                check.requests.append(index[request])
                check.expected.append(node.output)
                prefix.append(node.code)
            checks.append(check)
    return checks, requests


def verify_trees(trees: list[SearchTree], executor) -> tuple[list[dict], VerifyCounts]:
    """Re-execute and grade every terminal; returns verified-tree rows and counts."""
    checks, requests = _plan(trees)
    results = executor.run_batch(requests) if requests else []
    verdicts: dict[tuple[str, int], str] = {}
    for check in checks:
        reproduced = all(
            results[r].ok and results[r].stdout.strip("\n") == expected for r, expected in zip(check.requests, check.expected)
        )
        if not reproduced:
            verdicts[(check.tree.problem_id, check.terminal)] = "exec_failure"
        else:
            correct = answers_match(check.answer, check.tree.ground_truth)
            verdicts[(check.tree.problem_id, check.terminal)] = "correct" if correct else "wrong"

    rows: list[dict] = []
    counts = VerifyCounts()
    for tree in trees:
        search_rewards = {i: tree.nodes[i].reward for i in tree.terminals()}
        tree_verdicts = {i: verdicts.get((tree.problem_id, i), "wrong") for i in tree.terminals()}
        rewards = {i: 1.0 if v == "correct" else -1.0 for i, v in tree_verdicts.items()}
        tree.recompute_statistics(rewards)
        columns = tree.rows()
        columns["verdict"] = [tree_verdicts.get(i) for i in range(len(tree.nodes))]
        columns["search_reward"] = [search_rewards.get(i) for i in range(len(tree.nodes))]
        rows.extend(dict(zip(columns, values)) for values in zip(*columns.values()))
        counts = counts + VerifyCounts(
            problems=1,
            solved=int("correct" in tree_verdicts.values()),
            terminals=len(tree_verdicts),
            correct=sum(v == "correct" for v in tree_verdicts.values()),
            wrong=sum(v == "wrong" for v in tree_verdicts.values()),
            exec_failures=sum(v == "exec_failure" for v in tree_verdicts.values()),
            disagreements=sum(rewards[i] != search_rewards[i] for i in tree_verdicts),
        )
    return rows, counts


def load_trees(trees_table: pa.Table, problems: pa.Table, source: str) -> list[SearchTree]:
    """SearchTrees from a trees table, with question and ground truth from the problems table."""
    by_id = {r["problem_id"]: r for r in problems.select(["problem_id", "question", "answer"]).to_pylist()}
    trees = []
    for problem_id, rows in group_rows(trees_table).items():
        if problem_id not in by_id:
            raise ValueError(f"{source}: tree for problem {problem_id} has no row in the problems artefact")
        problem = by_id[problem_id]
        trees.append(SearchTree.from_rows(problem_id, problem["question"], problem["answer"], rows))
    return trees


def verify(
    trees: str | ArtifactRef,
    problems: str | ArtifactRef,
    out: str | ArtifactRef,
    *,
    sandbox: SandboxConfig,
    context: RunContext,
    round: int | None = None,
    executor=None,
) -> VerifyCounts:
    """Verify one shard of trees; write verified trees and a report (counts) with lineage.

    The report also carries the shard's search statistics forward (rollout_stats.json of
    the trees artefact), so later stages can account for the whole round.
    """
    started = time.monotonic()
    trees_ref = ArtifactRef.of(trees)
    with open_artifact(trees_ref) as (trees_dir, _):
        trees_table = read_table(trees_dir, TREES)
        stats_file = trees_dir / ROLLOUT_STATS_FILE
        search_stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    search_trees = load_trees(trees_table, read_problem_set(problems), trees_ref.uri)
    if executor is None:
        with ExecutorPool.from_config(sandbox) as pool:
            rows, counts = verify_trees(search_trees, pool)
    else:
        rows, counts = verify_trees(search_trees, executor)
    table = pa.Table.from_pylist(rows, schema=VERIFIED_TREES.schema) if rows else VERIFIED_TREES.schema.empty_table()
    with write_artifact(out, kind="verified_trees", stage="verify", context=context, round=round,
                        inputs={"trees": trees, "problems": problems}) as out_dir:
        write_table(table, out_dir / VERIFIED_FILE, VERIFIED_TREES)
        report = {"counts": asdict(counts), "search": search_stats, "seconds": time.monotonic() - started}
        (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True))
    return counts


def merge_reports(reports: Sequence[dict]) -> dict:
    """Verify reports of several shards as one: counts, search statistics and seconds added up."""

    def add(into: dict, more: dict) -> dict:
        for key, value in more.items():
            if isinstance(value, dict):
                into[key] = add(into.get(key, {}), value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                into[key] = into.get(key, 0) + value
        return into

    merged: dict = {}
    for report in reports:
        add(merged, report)
    return merged

