"""The rollout stage end to end: a tiny transformers model, generated problems, the real sandbox."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rstar_math.artifacts import write_artifact
from rstar_math.config import load_config
from rstar_math.data.generate import generate_problems
from rstar_math.data.schemas import PROBLEMS, TREES, write_table
from rstar_math.lineage import RunContext, audit, read_record
from rstar_math.models.hf_engine import TransformersEngine
from rstar_math.sandbox import ExecutorPool, SandboxLimits
from rstar_math.stages.io import read_artifact_table
from rstar_math.stages.rollout import rollout, select_shard, shard_of

CTX = RunContext(run_id="rollout-test")
CONFIG = load_config("smoke", ["search.rollouts=[2]", "search.candidates=2", "search.max_step_tokens=16"])


@pytest.fixture(scope="module")
def problems_uri(tmp_path_factory):
    path = tmp_path_factory.mktemp("problems") / "problems"
    table = generate_problems(["arithmetic__add_or_sub", "algebra__linear_1d"], 3, difficulty=0.0, seed=5)
    with write_artifact(str(path), kind="problems", stage="intake", context=CTX) as d:
        write_table(table, d / "problems.parquet", PROBLEMS)
    return str(path)


@pytest.fixture(scope="module")
def executor():
    with ExecutorPool(SandboxLimits(timeout_s=2.0), workers=2) as pool:
        yield pool


def test_a_tiny_random_model_produces_valid_trees_for_every_problem(problems_uri, tiny_model_dir, tmp_path, executor):
    out = str(tmp_path / "trees")
    result = rollout(problems_uri, str(tiny_model_dir), out, config=CONFIG, round=1, context=CTX, executor=executor)
    table = read_artifact_table(out, TREES)
    assert result.problems == 6 and sorted(set(table.column("problem_id").to_pylist())) == sorted(
        read_artifact_table(problems_uri, PROBLEMS).column("problem_id").to_pylist()
    )
    # A random model writes no valid step, so a tree can run out of nodes to explore before its budget.
    assert 6 <= result.stats["rollouts"] <= 12 and result.stats["generated_tokens"] > 0
    for key in ("engine_s", "executor_s", "bookkeeping_s"):
        assert key in result.stats
    roots = [r for r in table.to_pylist() if r["node_id"] == 0]
    assert all(r["visits"] >= 1 for r in roots)  # every problem was searched, solved or not
    report = audit(out)
    assert report.ok and {"problems", "policy"} <= {i.role for i in report.nodes[report.target].record.inputs}


def test_each_round_expands_as_many_candidates_as_the_config_gives_it(problems_uri, tiny_model_dir, tmp_path,
                                                                     executor):
    config = load_config("smoke", ["search.rollouts=[2]", "search.candidates=[3, 1]", "search.max_step_tokens=16"])
    for round, width in ((1, 3), (2, 1), (3, 1)):
        out = str(tmp_path / f"trees-{round}")
        rollout(problems_uri, str(tiny_model_dir), out, config=config, round=round, context=CTX, executor=executor)
        assert read_record(out).params["settings"]["candidates"] == width
        children: dict[tuple[str, int], int] = {}
        for node in read_artifact_table(out, TREES).to_pylist():
            if node["parent_id"] is not None:
                key = (node["problem_id"], node["parent_id"])
                children[key] = children.get(key, 0) + 1
        assert children and max(children.values()) <= width
        if width > 1:
            assert max(children.values()) > 1  # the sampled candidates differ somewhere


def test_a_model_that_knows_the_solutions_solves_its_problems(memorized_model_dir, tmp_path, executor):
    """Engine, search, sandbox and grader together: the memorized step runs, its output feeds the answer."""
    questions = {"What is 2 + 3?": "5", "Solve 4*x = 12 for x.": "3"}
    problems = pa.table({"problem_id": ["m1", "m2"], "question": list(questions), "answer": list(questions.values()),
                         "source": ["sample"] * 2, "level": pa.array([None, None], pa.int32())})
    with write_artifact(str(tmp_path / "problems"), kind="problems", stage="intake", context=CTX) as d:
        write_table(problems, d / "problems.parquet", PROBLEMS)
    config = load_config("smoke", ["search.rollouts=[2]", "search.candidates=2", "search.max_step_tokens=96",
                                   "search.temperature=0.2"])
    result = rollout(str(tmp_path / "problems"), str(memorized_model_dir), str(tmp_path / "trees"), config=config,
                     round=1, context=CTX, executor=executor)
    assert result.solved == 2
    rows = read_artifact_table(str(tmp_path / "trees"), TREES).to_pylist()
    assert {r["output"] for r in rows if r["exec_status"] == "ok"} >= {"5", "3.0"}


def test_shards_partition_the_problems(problems_uri):
    table = read_artifact_table(problems_uri, PROBLEMS)
    shards = [select_shard(table, i, 3) for i in range(3)]
    ids = [r["problem_id"] for shard in shards for r in shard]
    assert sorted(ids) == sorted(table.column("problem_id").to_pylist())
    assert all(shard_of(r["problem_id"], 3) == i for i, shard in enumerate(shards) for r in shard)


class _DiesAfter:
    """Stands in for a pod killed mid-search: the engine raises after `calls` generate calls."""

    def __init__(self, engine, calls):
        self.engine, self.left = engine, calls

    def generate(self, prompts, params):
        if self.left == 0:
            raise RuntimeError("pod killed")
        self.left -= 1
        return self.engine.generate(prompts, params)


def test_a_killed_rollout_resumes_from_its_checkpoint_chunks(problems_uri, tiny_model_dir, tmp_path, executor):
    engine = TransformersEngine.from_pretrained(str(tiny_model_dir))
    config = load_config("smoke", ["search.rollouts=[2]", "search.candidates=2", "search.max_step_tokens=16",
                                   "search.trees_in_flight=1"])
    checkpoint = str(tmp_path / "checkpoint")
    out = str(tmp_path / "trees")
    with pytest.raises(RuntimeError, match="pod killed"):
        rollout(problems_uri, str(tiny_model_dir), out, config=config, round=1, context=CTX, executor=executor,
                engine=_DiesAfter(engine, 3), checkpoint_uri=checkpoint, chunk_size=1)
    assert not (tmp_path / "trees").exists()
    result = rollout(problems_uri, str(tiny_model_dir), out, config=config, round=1, context=CTX, executor=executor,
                     engine=engine, checkpoint_uri=checkpoint, chunk_size=1)
    assert 0 < result.resumed_problems < 6
    table = read_artifact_table(out, TREES)
    assert len(set(table.column("problem_id").to_pylist())) == 6
    assert table.num_rows == len({(r["problem_id"], r["node_id"]) for r in table.to_pylist()})  # nothing twice


def test_hard_problems_get_the_hard_budget(problems_uri, tiny_model_dir, tmp_path, executor):
    """Problems unsolved in the previous round's verified trees get `hard_rollouts`."""
    from rstar_math.data.schemas import VERIFIED_TREES

    from scripted import ScriptedEngine, code

    unsolved = read_artifact_table(problems_uri, PROBLEMS).column("problem_id").to_pylist()[0]
    root = dict(problem_id=unsolved, node_id=0, parent_id=None, depth=0, text="", code="", output="",
                exec_status="none", is_terminal=False, answer=None, reward=None, q_value=0.0, visits=0,
                ppm_score=None, verdict=None, search_reward=None)
    with write_artifact(str(tmp_path / "prev"), kind="verified_trees", stage="verify", context=CTX) as d:
        write_table(pa.Table.from_pylist([root], schema=VERIFIED_TREES.schema), d / "v.parquet", VERIFIED_TREES)
    # A script that never answers: every rollout runs to the depth limit, so budgets are spent exactly.
    engine = ScriptedEngine(lambda prompt: [code(f"print({prompt.count('<code>')}1)"), code("print(2)")])
    config = load_config("smoke", ["search.rollouts=[1]", "search.hard_rollouts=[3]", "search.candidates=2",
                                   "search.max_depth=4"])
    result = rollout(problems_uri, str(tiny_model_dir), str(tmp_path / "trees"), config=config, round=1,
                     context=CTX, executor=executor, engine=engine, previous=str(tmp_path / "prev"))
    assert result.stats["rollouts"] == 5 * 1 + 1 * 3
