"""The verify stage: re-execution from scratch, grading, rebuilt statistics, shard merging."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from rstar_math.artifacts import write_artifact
from rstar_math.config import SandboxConfig
from rstar_math.data.schemas import PROBLEMS, TREES, VERIFIED_TREES, write_table
from rstar_math.lineage import RunContext, audit
from rstar_math.sandbox import ExecutorPool, SandboxLimits
from rstar_math.search.mcts import Problem, SearchSettings, run_search
from rstar_math.search.tree import trees_table
from rstar_math.stages.io import read_artifact_table
from rstar_math.stages.verify import VerifyCounts, merge_counts, verify
from rstar_math.store import join

from scripted import ScriptedEngine, answer, code, last_output

CTX = RunContext(run_id="verify-test")
QUESTIONS = {"p1": ("What is 6 * 7?", "42"), "p2": ("What is 6 + 7?", "13")}


def script(prompt: str) -> list[str]:
    if "<code>" not in prompt.split("<end_of_question>")[1]:
        return [code("x = 6 * 7\nprint(x)"), code("x = 6 + 7\nprint(x)"), code("print(y)")]
    out = last_output(prompt)
    if out.startswith("NameError"):
        return [code("print(z)")]
    return [answer(out)]


@pytest.fixture(scope="module")
def executor():
    with ExecutorPool(SandboxLimits(timeout_s=2.0), workers=2) as pool:
        yield pool


def _artefacts(tmp_path, executor, table_edit=None, policy=script):
    problems = pa.table({
        "problem_id": list(QUESTIONS),
        "question": [q for q, _ in QUESTIONS.values()],
        "answer": [a for _, a in QUESTIONS.values()],
        "source": ["test"] * 2,
        "level": pa.array([None, None], pa.int32()),
    })
    todo = [Problem(pid, q, a, 3) for pid, (q, a) in QUESTIONS.items()]
    trees = list(run_search(todo, ScriptedEngine(policy), executor, SearchSettings(candidates=3)))
    table = trees_table(sorted(trees, key=lambda t: t.problem_id))
    if table_edit:
        table = table_edit(table)
    with write_artifact(str(tmp_path / "problems"), kind="problems", stage="intake", context=CTX) as d:
        write_table(problems, d / "problems.parquet", PROBLEMS)
    with write_artifact(str(tmp_path / "trees"), kind="trees", stage="rollout", context=CTX, round=1,
                        inputs={"problems": str(tmp_path / "problems")}) as d:
        write_table(table, d / "trees.parquet", TREES)
    return str(tmp_path / "problems"), str(tmp_path / "trees"), table


def test_untouched_trees_verify_without_disagreement_and_keep_their_statistics(tmp_path, executor):
    problems, trees, search_table = _artefacts(tmp_path, executor)
    counts = verify(trees, problems, str(tmp_path / "verified"), sandbox=SandboxConfig(), context=CTX, round=1,
                    executor=executor)
    assert counts == VerifyCounts(problems=2, solved=2, terminals=6, correct=2, wrong=4, exec_failures=0, disagreements=0)
    verified = read_artifact_table(str(tmp_path / "verified"), VERIFIED_TREES)
    assert verified.column("q_value").to_pylist() == search_table.column("q_value").to_pylist()
    assert verified.column("visits").to_pylist() == search_table.column("visits").to_pylist()
    assert verified.column("search_reward").to_pylist() == search_table.column("reward").to_pylist()
    assert audit(str(tmp_path / "verified")).ok


def _edit_output(table: pa.Table, old: str, new: str) -> pa.Table:
    outputs = [new if o == old else o for o in table.column("output").to_pylist()]
    return table.set_column(table.column_names.index("output"), "output", pa.array(outputs))


def test_an_output_that_does_not_reproduce_is_an_execution_failure(tmp_path, executor):
    """Search claimed `42` for a step; re-execution prints something else, so its answer is not trusted."""
    problems, trees, _ = _artefacts(tmp_path, executor, lambda t: _edit_output(t, "42", "41"))
    counts = verify(trees, problems, str(tmp_path / "verified"), sandbox=SandboxConfig(), context=CTX, executor=executor)
    # `6 * 7` prints 42 in both trees: p1's correct path and p2's wrong one stop reproducing.
    assert counts.exec_failures == 2 and counts.correct == 1 and counts.disagreements == 1
    rows = read_artifact_table(str(tmp_path / "verified"), VERIFIED_TREES).to_pylist()
    [failed] = [r for r in rows if r["verdict"] == "exec_failure" and r["problem_id"] == "p1"]
    assert failed["reward"] == -1.0 and failed["search_reward"] == 1.0
    root = next(r for r in rows if r["problem_id"] == failed["problem_id"] and r["node_id"] == 0)
    assert root["q_value"] == -1.0  # every terminal below the root now counts -1


def test_the_answer_is_regraded_from_the_step_text(tmp_path, executor):
    """A tree whose stored reward says 'correct' for a wrong boxed answer is corrected."""
    def lie(table):
        rewards = [1.0 if r is not None else None for r in table.column("reward").to_pylist()]
        return table.set_column(table.column_names.index("reward"), "reward", pa.array(rewards, pa.float64()))

    problems, trees, _ = _artefacts(tmp_path, executor, lie)
    counts = verify(trees, problems, str(tmp_path / "verified"), sandbox=SandboxConfig(), context=CTX, executor=executor)
    assert counts.correct == 2 and counts.disagreements == 4


def test_a_malformed_answer_step_has_no_answer_however_boxed(tmp_path, executor):
    """A policy glitch seen in a default run: an answer step that opens a second <answer>. Search
    parses it as an invalid step (reward -1); verify must not grade its boxed value as correct."""
    def glitching(prompt: str) -> list[str]:
        steps = script(prompt)
        if steps[0].startswith("<answer>"):
            return ["<answer>Therefore,\n" + steps[0], steps[0]]
        return steps

    problems, trees, _ = _artefacts(tmp_path, executor, policy=glitching)
    counts = verify(trees, problems, str(tmp_path / "verified"), sandbox=SandboxConfig(), context=CTX, executor=executor)
    assert counts.disagreements == 0 and counts.correct == 2
    rows = read_artifact_table(str(tmp_path / "verified"), VERIFIED_TREES).to_pylist()
    glitches = [r for r in rows if r["text"].startswith("<answer>Therefore")]  # one after each answer
    assert len(glitches) == 4 and all(r["verdict"] == "wrong" and r["reward"] == -1.0 for r in glitches)


def test_shards_merge_by_adding_counts():
    a = VerifyCounts(problems=2, solved=1, terminals=5, correct=1, wrong=3, exec_failures=1, disagreements=1)
    b = VerifyCounts(problems=1, solved=1, terminals=2, correct=2, wrong=0, exec_failures=0, disagreements=0)
    assert merge_counts([a, b]) == VerifyCounts(3, 2, 7, 3, 3, 1, 1)


def test_a_tree_without_its_problem_is_a_clear_error(tmp_path, executor):
    problems, trees, table = _artefacts(tmp_path, executor)
    with write_artifact(str(tmp_path / "other"), kind="problems", stage="intake", context=CTX) as d:
        write_table(PROBLEMS.schema.empty_table(), d / "problems.parquet", PROBLEMS)
    with pytest.raises(ValueError, match="has no row in the problems artefact"):
        verify(trees, str(tmp_path / "other"), str(tmp_path / "v"), sandbox=SandboxConfig(), context=CTX, executor=executor)


def test_verify_runs_against_s3_and_writes_a_report(tmp_path, executor, s3_root):
    problems, trees, _ = _artefacts(tmp_path, executor)
    out = join(s3_root, "round-1", "verified-0")
    counts = verify(trees, problems, out, sandbox=SandboxConfig(timeout_s=2), context=CTX, round=1)
    from rstar_math.store import store_for

    report = json.loads(store_for(out).read_bytes(join(out, "verify_report.json")))
    assert report["counts"]["correct"] == counts.correct == 2 and report["seconds"] > 0
