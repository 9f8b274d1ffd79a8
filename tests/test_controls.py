"""The rejection-sampling control's data, on a scripted policy: which samples it keeps and how many."""

from __future__ import annotations

import itertools
import json

import pyarrow as pa
import pytest

from rstar_math.artifacts import write_artifact
from rstar_math.config import load_config
from rstar_math.data.schemas import PROBLEMS, SFT_DATA, write_table
from rstar_math.lineage import RunContext, read_record
from rstar_math.sandbox import ExecutorPool, SandboxLimits
from rstar_math.stages.controls import matched_samples, rejection_sampled_data
from rstar_math.stages.io import read_artifact_table

from scripted import ScriptedEngine, code, last_output

CTX = RunContext(run_id="controls-test")
FIRST_STEPS = ["print(6 * 7)", "print(6 * 7)", "print(7 * 6)", "print(6 + 7)", "print(42)"]


def _sft(path, rows: int, search_tokens: int | None = None) -> str:
    """Selected data of `rows` examples; with `search_tokens`, the select report a search leaves beside it."""
    table = pa.table({"problem_id": [f"x{i}" for i in range(rows)], "prompt": ["q"] * rows, "completion": ["c"] * rows,
                      "avg_q": [1.0] * rows, "source": ["s"] * rows})
    with write_artifact(str(path), kind="sft_data", stage="select", context=CTX) as d:
        write_table(table, d / "sft_data.parquet", SFT_DATA)
        if search_tokens is not None:
            (d / "select_report.json").write_text(json.dumps({"verify": {"search": {"generated_tokens": search_tokens}}}))
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

    return _CountingEngine(script)


class _CountingEngine(ScriptedEngine):
    tokens_handed_out = 0

    def generate(self, prompts, params):
        out = super().generate(prompts, params)
        self.tokens_handed_out += sum(c.token_count for group in out for c in group)
        return out


@pytest.mark.parametrize(("target", "kept"), [(5, 2), (1, 1)])
def test_rejection_keeps_distinct_correct_solutions_cut_to_the_matched_size(problems_uri, tiny_model_dir, tmp_path,
                                                                           target, kept):
    """Five samples: 6 * 7 twice (answers worded differently: one solution), 7 * 6, 6 + 7 (wrong), 42.
    Two distinct correct ones are kept (sft_per_problem), then cut to the size of the matched data."""
    config = load_config("smoke", ["search.rollouts=[5]", "select.sft_per_problem=2"])
    out = tmp_path / "rejection"
    engine = _engine()
    with ExecutorPool(SandboxLimits(timeout_s=2.0), workers=1) as executor:
        size, tokens = rejection_sampled_data(problems_uri, str(tiny_model_dir), _sft(tmp_path / "match", target),
                                              str(out), config=config, round=1, context=CTX, engine=engine,
                                              executor=executor)
    rows = read_artifact_table(str(out), SFT_DATA).to_pylist()
    assert size == len(rows) == kept
    assert tokens == engine.tokens_handed_out > 0  # every sample counts, kept or not
    solutions = [r["completion"].split("\n")[1] for r in rows]
    assert len(set(solutions)) == kept and set(solutions) <= {"print(6 * 7)", "print(7 * 6)"}
    assert all(r["prompt"] == "<question>\nWhat is 6 * 7?\n<end_of_question>\n" for r in rows)
    assert {r["source"] for r in rows} == {"times"}


def test_rejection_samples_until_it_has_spent_what_the_search_spent(problems_uri, tiny_model_dir, tmp_path):
    """The search's report says it generated three times what 5 samples cost: the control draws 15."""
    config = load_config("smoke", ["search.rollouts=[5]", "select.sft_per_problem=2"])

    def sample(match: str, out: str) -> int:
        with ExecutorPool(SandboxLimits(timeout_s=2.0), workers=1) as executor:
            return rejection_sampled_data(problems_uri, str(tiny_model_dir), match, out, config=config, round=1,
                                          context=CTX, engine=_engine(), executor=executor)[1]

    spent = sample(_sft(tmp_path / "plain", 2), str(tmp_path / "five"))
    assert read_record(str(tmp_path / "five")).params["samples_per_problem"] == 5
    tokens = sample(_sft(tmp_path / "searched", 2, search_tokens=3 * spent), str(tmp_path / "fifteen"))
    params = read_record(str(tmp_path / "fifteen")).params
    assert params["samples_per_problem"] == 15 and params["search_tokens"] == 3 * spent
    assert tokens == params["generated_tokens"] == 3 * spent  # the scripted steps cycle: 15 samples cost 3x five


def test_matched_samples_never_falls_below_the_rollout_budget():
    assert matched_samples(4, 100, None) == 4  # data not from a search: the rollout budget
    assert matched_samples(4, 0, 100) == 4
    assert matched_samples(4, 100, 90) == 4  # the search spent less: still the rollout budget
    assert matched_samples(4, 100, 220) == 9  # 8.8 samples' worth, to the nearest whole sample


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
    rows = run_control("outcome_loop", *args, str(tmp_path / "line"), str(tmp_path / "line-data"), config=config,
                       round=1, context=CTX, policy_out=str(tmp_path / "line-policy"))
    assert rows == [] and read_record(str(tmp_path / "line-policy")).params == {"trained": False}
    with pytest.raises(ValueError, match="needed by, and only by, outcome_loop"):  # the line's policy goes on
        run_control("outcome_loop", *args, str(tmp_path / "l2"), str(tmp_path / "l2-data"), config=config, round=1,
                    context=CTX)
    with pytest.raises(ValueError, match="unknown control 'replay'"):
        run_control("replay", *args, str(tmp_path / "replay"), str(tmp_path / "replay-data"), config=config, round=1,
                    context=CTX)
