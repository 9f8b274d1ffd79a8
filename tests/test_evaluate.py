"""Evaluation on a scripted policy and a scripted PPM: every number equals a hand-computed value."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from rstar_math.artifacts import write_artifact
from rstar_math.config import load_config
from rstar_math.data.schemas import METRICS, PROBLEMS, write_table
from rstar_math.evaluation.answers import best_scored, majority_vote, weighted_vote
from rstar_math.evaluation.metrics import wilson_interval
from rstar_math.evaluation.report import render_report
from rstar_math.lineage import RunContext
from rstar_math.sandbox import ExecutorPool, SandboxLimits
from rstar_math.stages.evaluate import evaluate, evaluate_shard, merge_evaluation
from rstar_math.stages.io import read_artifact_table

from scripted import ScriptedEngine, answer, code, last_output

CTX = RunContext(run_id="eval-test")
# question -> (truth, the candidate first steps in sampling order)
WORLD = {
    "What is 6 * 7?": ("42", ["6 + 7", "6 * 7", "6 * 7", "6 - 7"]),
    "What is 6 + 7?": ("13", ["6 + 7", "6 * 7", "6 * 7", "6 + 7"]),
    "What is 6 - 7?": ("-1", ["6 * 7", "6 * 7", "6 + 7", "6 + 7"]),
}


def script(prompt: str) -> list[str]:
    question = prompt.split("<question>\n")[1].split("\n<end_of_question>")[0]
    if "<code>" not in prompt.split("<end_of_question>")[1]:
        return [code(f"print({expr})") for expr in WORLD[question][1]]
    return [answer(last_output(prompt))]


class ScriptedPPM:
    """Prefers multiplication, then addition: right for the first question only."""

    def score(self, texts):
        steps = [t.split("<end_of_question>")[1] for t in texts]
        return [0.8 if "6 * 7" in s else 0.5 if "6 + 7" in s else -0.5 for s in steps]


@pytest.fixture(scope="module")
def executor():
    with ExecutorPool(SandboxLimits(timeout_s=2.0), workers=2) as pool:
        yield pool


@pytest.fixture
def problems_uri(tmp_path):
    table = pa.table({"problem_id": [f"p{i}" for i in range(3)], "question": list(WORLD),
                      "answer": [t for t, _ in WORLD.values()], "source": ["times", "plus_minus", "plus_minus"],
                      "level": pa.array([None] * 3, pa.int32())})
    with write_artifact(str(tmp_path / "problems"), kind="problems", stage="intake", context=CTX) as d:
        write_table(table, d / "problems.parquet", PROBLEMS)
    return str(tmp_path / "problems")


def test_every_method_matches_the_hand_computed_accuracy(problems_uri, tiny_model_dir, tmp_path, executor):
    config = load_config("smoke", ["evaluate.n=[2, 4]", "search.candidates=4", "search.max_depth=4"])
    out = str(tmp_path / "eval")
    result = evaluate(str(tiny_model_dir), {"toy": problems_uri}, out, config=config, round=1, context=CTX,
                      ppm=str(tiny_model_dir), engine=ScriptedEngine(script), executor=executor,
                      value_model=ScriptedPPM())
    expected = {
        ("greedy", None): 1 / 3,          # first candidates: 13 (wrong), 13 (right), 42 (wrong)
        ("pass_at_n", 2): 2 / 3,          # samples [13, 42], [13, 42], [42, 42]
        ("pass_at_n", 4): 2 / 3,
        ("majority_vote", 2): 1 / 3,      # ties go to the first answer: 13, 13, 42
        ("majority_vote", 4): 2 / 3,      # 42 (2 of 4), 13 (tie, first), 42
        ("best_of_n_ppm", 2): 1 / 3,      # the PPM always prefers 42
        ("best_of_n_ppm", 4): 1 / 3,
        ("mcts_ppm", 2): 1 / 3,
        ("mcts_ppm", 4): 1 / 3,
        ("mcts_ppm_vote", 4): 1 / 3,
    }
    for (method, n), value in expected.items():
        assert result.accuracy("toy", method, n) == pytest.approx(value), (method, n)
    # and per source: 6 * 7 alone, then 6 + 7 and 6 - 7
    assert (result.accuracy("toy/times", "greedy"), result.accuracy("toy/plus_minus", "greedy")) == (0.0, 0.5)
    assert (result.accuracy("toy/times", "majority_vote", 4), result.accuracy("toy/plus_minus", "majority_vote", 4)) \
        == (1.0, 0.5)

    table = read_artifact_table(out, METRICS)
    greedy = next(r for r in table.to_pylist()
                  if (r["benchmark"], r["method"], r["metric"]) == ("toy", "greedy", "accuracy"))
    assert (greedy["ci_low"], greedy["ci_high"]) == pytest.approx(wilson_interval(1, 3))
    assert greedy["count"] == 3 and greedy["run_id"] == "eval-test" and greedy["round"] == 1
    tokens = [r for r in table.to_pylist() if r["metric"] == "tokens_per_problem" and r["method"] == "greedy"]
    assert tokens[0]["value"] > 0
    answers = [json.loads(line) for line in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    assert {a["answer"] for a in answers if a["method"] == "greedy"} == {"13", "42"}
    assert "<img" in (tmp_path / "eval" / "report.html").read_text()


def test_shards_merge_into_the_metrics_of_one_evaluation(problems_uri, tiny_model_dir, tmp_path, executor):
    config = load_config("smoke", ["evaluate.n=[2, 4]", "search.candidates=4", "search.max_depth=4"])
    kwargs = dict(config=config, round=1, context=CTX, ppm=str(tiny_model_dir), executor=executor,
                  value_model=ScriptedPPM())
    whole = evaluate(str(tiny_model_dir), {"toy": problems_uri}, str(tmp_path / "whole"),
                     engine=ScriptedEngine(script), **kwargs)
    shards = [str(tmp_path / f"shard-{i}") for i in range(3)]  # p0 lands in shard 2, p1 and p2 in shard 0
    answered = [evaluate_shard(str(tiny_model_dir), {"toy": problems_uri}, out, shard=i, num_shards=3,
                               engine=ScriptedEngine(script), **kwargs) for i, out in enumerate(shards)]
    assert answered[1] == 0 and answered[0] == 2 * answered[2] > 0
    merged = merge_evaluation(shards, str(tmp_path / "merged"), round=1, context=CTX)
    assert sorted(merged.rows, key=repr) == sorted(whole.rows, key=repr)
    assert read_artifact_table(str(tmp_path / "merged"), METRICS).num_rows == len(whole.rows)
    answers = [json.loads(line) for line in (tmp_path / "merged" / "answers.jsonl").read_text().splitlines()]
    assert {a["source"] for a in answers} == {"times", "plus_minus"} and len(answers) == sum(answered)


def test_without_a_ppm_the_ppm_methods_are_skipped(problems_uri, tiny_model_dir, tmp_path, executor):
    config = load_config("smoke", ["evaluate.n=[2]"])
    result = evaluate(str(tiny_model_dir), {"toy": problems_uri}, str(tmp_path / "eval"), config=config, round=0,
                      context=CTX, engine=ScriptedEngine(script), executor=executor)
    assert {r.method for r in result.rows} == {"greedy", "pass_at_n", "majority_vote"}


def test_answer_selection_rules():
    assert majority_vote(["1/2", "0.5", "3", None, "3"]) == "1/2"  # 1/2 and 0.5 are one answer; the tie goes first
    assert majority_vote([None, None]) is None
    assert best_scored([("1", 0.1), ("2", 0.9), (None, 1.0)]) == "2"
    assert weighted_vote([("1", 0.9), ("2", 0.5), ("2", 0.5)]) == "2"  # 0.95 against 0.75 + 0.75


def test_wilson_interval_known_values():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)


def test_report_plots_several_rounds():
    rows = []
    for rnd, value in ((0, 0.3), (1, 0.5), (2, 0.7)):
        low, high = wilson_interval(int(value * 100), 100)
        rows.append(dict(run_id="r", round=rnd, benchmark="held_out", method="greedy", metric="accuracy", n=None,
                         value=value, ci_low=low, ci_high=high, count=100))
    rows.append(dict(run_id="r", round=2, benchmark="held_out", method="mcts_ppm@4 vs greedy",
                     metric="paired_difference", n=4, value=0.026, ci_low=0.0031, ci_high=0.0521, count=273))
    html = render_report(rows, title="Self-evolution")
    assert html.count("<img") == 2 and "held_out" in html and "0.700" in html
    other = html.split("Other measurements", 1)[1]
    assert "mcts_ppm@4 vs greedy" in other and "0.003" in other and "0.052" in other  # a difference with its interval


def test_ui_metrics_are_per_whole_benchmark(tmp_path):
    from kfp.dsl import Metrics

    from rstar_math.evaluation.metrics import MetricRow
    from rstar_math.orchestration.glue import log_metrics
    from rstar_math.stages.evaluate import EvalResult

    rows = [MetricRow("r", 1, "held_out", "greedy", "accuracy", 0.5),
            MetricRow("r", 1, "held_out/numbers__gcd", "greedy", "accuracy", 1.0),
            MetricRow("r", 1, "held_out", "majority_vote", "accuracy", 0.75, n=4)]
    one = Metrics(name="metrics", uri=str(tmp_path / "one"), metadata={})
    log_metrics(one, EvalResult(tuple(rows)))
    assert one.metadata == {"greedy": 0.5, "majority_vote@4": 0.75}  # a module's row does not overwrite
    two = Metrics(name="metrics", uri=str(tmp_path / "two"), metadata={})
    log_metrics(two, EvalResult((*rows, MetricRow("r", 1, "gsm8k", "greedy", "accuracy", 0.25))))
    assert two.metadata == {"held_out:greedy": 0.5, "held_out:majority_vote@4": 0.75, "gsm8k:greedy": 0.25}
    assert json.loads((tmp_path / "two").read_text()) == two.metadata
