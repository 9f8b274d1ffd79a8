"""The rejection-sampling control's data, on a scripted policy: which samples it keeps and how many."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest

from rstar_math.artifacts import write_artifact
from rstar_math.config import load_config
from rstar_math.data.schemas import PROBLEMS, SFT_DATA, write_table
from rstar_math.lineage import RunContext
from rstar_math.sandbox import ExecutorPool, SandboxLimits
from rstar_math.stages.controls import rejection_sampled_data
from rstar_math.stages.io import read_artifact_table

from scripted import ScriptedEngine, code, last_output

CTX = RunContext(run_id="controls-test")
FIRST_STEPS = ["print(6 * 7)", "print(6 * 7)", "print(7 * 6)", "print(6 + 7)", "print(42)"]


def _sft(path, rows: int) -> str:
    table = pa.table({"problem_id": [f"x{i}" for i in range(rows)], "prompt": ["q"] * rows, "completion": ["c"] * rows,
                      "avg_q": [1.0] * rows, "source": ["s"] * rows})
    with write_artifact(str(path), kind="sft_data", stage="select", context=CTX) as d:
        write_table(table, d / "sft_data.parquet", SFT_DATA)
    return str(path)


@pytest.fixture
def problems_uri(tmp_path):
    table = pa.table({"problem_id": ["p0"], "question": ["What is 6 * 7?"], "answer": ["42"], "source": ["times"],
                      "level": pa.array([None], pa.int32())})
    with write_artifact(str(tmp_path / "problems"), kind="problems", stage="intake", context=CTX) as d:
        write_table(table, d / "problems.parquet", PROBLEMS)
    return str(tmp_path / "problems")


def _engine() -> ScriptedEngine:
    wordings = itertools.cycle(["The answer is \\boxed{{{}}}", "So it is \\boxed{{{}}}"])

    def script(prompt: str) -> list[str]:
        if "<output>" not in prompt:
            return [code(step) for step in FIRST_STEPS]
        return [f"<answer>{next(wordings).format(last_output(prompt))}<end_of_answer>"]

    return ScriptedEngine(script)


@pytest.mark.parametrize(("target", "kept"), [(5, 2), (1, 1)])
def test_rejection_keeps_distinct_correct_solutions_cut_to_the_matched_size(problems_uri, tiny_model_dir, tmp_path,
                                                                           target, kept):
    """Five samples: 6 * 7 twice (answers worded differently: one solution), 7 * 6, 6 + 7 (wrong), 42.
    Two distinct correct ones are kept (sft_per_problem), then cut to the size of the matched data."""
    config = load_config("smoke", ["search.rollouts=[5]", "select.sft_per_problem=2"])
    out = tmp_path / "rejection"
    with ExecutorPool(SandboxLimits(timeout_s=2.0), workers=1) as executor:
        size = rejection_sampled_data(problems_uri, str(tiny_model_dir), _sft(tmp_path / "match", target), str(out),
                                      config=config, round=1, context=CTX, engine=_engine(), executor=executor)
    rows = read_artifact_table(str(out), SFT_DATA).to_pylist()
    assert size == len(rows) == kept
    solutions = [r["completion"].split("\n")[1] for r in rows]
    assert len(set(solutions)) == kept and set(solutions) <= {"print(6 * 7)", "print(7 * 6)"}
    assert all(r["prompt"] == "<question>\nWhat is 6 * 7?\n<end_of_question>\n" for r in rows)
    assert {r["source"] for r in rows} == {"times"}


def test_a_control_the_config_leaves_out_writes_no_rows_and_trains_nothing(problems_uri, tiny_model_dir, tmp_path):
    """The pipeline starts a task per known control; one the run does not ask for only records that."""
    from rstar_math.data.schemas import METRICS
    from rstar_math.stages.controls import run_control

    config = load_config("smoke", ["evaluate.controls=[rejection]"])
    corpus, match = _sft(tmp_path / "corpus", 3), _sft(tmp_path / "match", 2)
    args = (problems_uri, problems_uri, str(tiny_model_dir), str(tiny_model_dir), corpus, match)
    rows = run_control("continued", *args, str(tmp_path / "continued"), str(tmp_path / "continued-data"),
                       config=config, round=1, context=CTX)
    assert rows == [] and read_artifact_table(str(tmp_path / "continued"), METRICS).num_rows == 0
    assert read_artifact_table(str(tmp_path / "continued-data"), SFT_DATA).num_rows == 0
    with pytest.raises(ValueError, match="unknown control 'replay'"):
        run_control("replay", *args, str(tmp_path / "replay"), str(tmp_path / "replay-data"), config=config, round=1,
                    context=CTX)
