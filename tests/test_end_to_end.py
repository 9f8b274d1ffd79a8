"""The README's main command, end to end: the smoke preset of the self-evolution pipeline with kfp.local.

Bootstrap of a minuscule embedded model, two rounds of sharded rollout and verify,
select, PPM and policy training, the three controls, evaluation and the run summary, all
through the same pipeline definition that compiles for a cluster. A rerun with the
same inputs must come entirely from the cache.
"""

from __future__ import annotations

import io
import re

import pytest

from rstar_math.config import load_config
from rstar_math.data.schemas import METRICS, SFT_DATA, read_table
from rstar_math.lineage import audit
from rstar_math.lineage.record import LINEAGE_FILE, LineageRecord
from rstar_math.orchestration.local import run_locally



@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke-run")
    console = io.StringIO()
    first = run_locally("smoke", [], root=root, run_id="e2e-1", console=console)
    return root, first, console.getvalue()


def _history(root) -> list[dict]:
    (path,) = sorted((root / "kfp").glob("*/round-report*/history*/history.parquet"), key=lambda p: p.stat().st_mtime)[-1:]
    return read_table(path, METRICS).to_pylist()


def _stage(task: str) -> str:
    """'for-loop-1-iteration-1/rollout-2' (round 2's rollout of the second shard) -> 'rollout'."""
    return re.sub(r"-\d+$", "", task.rsplit("/", 1)[-1])


def test_every_stage_of_every_round_runs(smoke):
    root, run, console = smoke
    assert not run.failed
    stages = [_stage(task) for task in run.executed]
    assert {"prepare-problems", "prepare-base-model", "rollout", "verify", "select", "train-ppm", "train-policy",
            "control", "loop-control", "evaluate", "evaluate-shard", "merge-evaluation", "summarize"} <= set(stages)
    assert stages.count("rollout") == stages.count("verify") == 2 * 2  # two rounds, two shards each
    assert stages.count("train-policy") == 2 and stages.count("evaluate") == 1  # the base model, in one task
    assert stages.count("evaluate-shard") == 2 * 2 and stages.count("merge-evaluation") == 2  # rounds 1 and 2
    assert stages.count("control") == 2 * 2  # two rounds, rejection and continued side by side
    assert stages.count("loop-control") == 2  # and the outcome-only line beside them
    assert "train-policy" in console and "summarize" in console  # one console line per task


def test_the_summary_reports_each_round_by_method_and_the_controls(smoke):
    root, run, _ = smoke
    table = run.summary.split("Held-out accuracy", 1)[1]
    for row in ("| 0 |", "| 1 |", "| 2 |"):
        assert row in table
    for method in ("greedy", "majority_vote@2", "mcts_ppm@2", "control_rejection", "control_outcome_loop",
                   "control_continued"):
        assert method in table
    rows = _history(root)
    rounds = {r["round"] for r in rows if r["benchmark"] == "held_out" and r["metric"] == "accuracy"}
    assert rounds == {0, 1, 2}
    measured = {(r["method"], r["metric"]) for r in rows if r["round"] == 2}
    # (A minuscule model solves little, so training may have had nothing to learn from: not asserted here.)
    assert {("search", "solved_share"), ("select", "sft_examples"), ("verify", "terminals"), ("search", "seconds")} <= measured
    # what each way of finding data spent sampling, side by side
    assert {("search", "generated_tokens"), ("control_rejection", "generated_tokens"),
            ("control_outcome_loop", "generated_tokens")} <= measured
    assert "control_rejection.generated_tokens" in run.summary.split("Search, data and time per round", 1)[1]
    assert "all hashes verified" in run.summary
    # every round's methods and controls compared problem by problem (the controls keep their answers)
    compared = {(r["round"], r["method"]) for r in rows if r["metric"] == "paired_difference"}
    for rnd in (1, 2):
        assert {(rnd, "mcts_ppm@2 vs majority_vote@2"), (rnd, "mcts_ppm@2 vs greedy"),
                (rnd, "greedy vs control_rejection"), (rnd, "greedy vs control_outcome_loop"),
                (rnd, "greedy vs control_continued")} <= compared
    assert "greedy vs control_rejection" in run.summary.split("Paired differences", 1)[1]
    per_source = run.summary.split("Greedy accuracy (%) per source and round", 1)[1]
    for module in load_config("smoke").data.generator.modules:  # one held-out problem each
        assert f"| {module} |" in per_source


def test_the_final_policy_traces_back_to_the_bootstrap_and_the_problems(smoke):
    root, _, _ = smoke
    records = {path.parent: LineageRecord.from_json(path.read_text(), str(path)) for path in root.rglob(LINEAGE_FILE)}
    (policy,) = [where for where, r in records.items() if r.stage == "train_policy" and r.round == 2]
    report = audit(str(policy))
    assert report.ok, report.problems
    stages = {node.record.stage for node in report.nodes.values() if node.record is not None}
    assert {"bootstrap", "select", "verify", "rollout", "train_policy"} <= stages


def test_the_controls_training_data_is_kept_and_traces_back_to_the_rounds_data(smoke):
    """An auditor can compare the round's policy data with its controls' example by example."""
    root, _, _ = smoke
    records = [(path.parent, LineageRecord.from_json(path.read_text(), str(path))) for path in root.rglob(LINEAGE_FILE)]
    by_uri = {r.uri: (where, r) for where, r in records}
    for kind in ("rejection", "outcome_loop", "continued"):
        ((data, record),) = [(where, r) for where, r in records
                             if r.stage == f"control_{kind}" and r.kind == "sft_data" and r.round == 2]
        (matched,) = [i.uri for i in record.inputs if i.role == "matched_to"]
        selected, selected_record = by_uri[matched]
        assert (selected_record.stage, selected_record.round) == ("select", 2)
        control_rows = read_table(data / "sft_data.parquet", SFT_DATA).num_rows
        selected_rows = read_table(selected / "sft_data.parquet", SFT_DATA).num_rows
        # Cut to the selected data's size; rejection sampling may find fewer on a minuscule model.
        assert control_rows == selected_rows if kind == "continued" else control_rows <= selected_rows
        assert audit(str(data)).ok


def test_the_outcome_loop_samples_from_its_own_previous_policy(smoke):
    """Round 2's outcome-only line samples from the policy its round 1 trained, not the search's."""
    root, _, _ = smoke
    records = [LineageRecord.from_json(path.read_text(), str(path)) for path in root.rglob(LINEAGE_FILE)]
    by_uri = {r.uri: r for r in records}

    def data(kind: str, round: int) -> LineageRecord:
        (record,) = [r for r in records if r.stage == f"control_{kind}" and r.kind == "sft_data" and r.round == round]
        return record

    def sampled_from(record: LineageRecord) -> LineageRecord:
        (policy,) = [i.uri for i in record.inputs if i.role == "policy"]
        return by_uri[policy]

    line_policy = sampled_from(data("outcome_loop", 2))
    (trained_on,) = [i.uri for i in line_policy.inputs if i.role == "sft_data"]
    assert (line_policy.kind, line_policy.stage, line_policy.round) == ("policy", "control_outcome_loop", 1)
    assert by_uri[trained_on].uri == data("outcome_loop", 1).uri
    search_policy = sampled_from(data("rejection", 2))
    assert (search_policy.stage, search_policy.round) == ("train_policy", 1)
    assert search_policy.uri != line_policy.uri
    assert sampled_from(data("outcome_loop", 1)).stage == "bootstrap"  # round 1: the base model


def test_a_rerun_with_the_same_inputs_comes_from_the_cache(smoke):
    root, first, _ = smoke
    again = run_locally("smoke", [], root=root, run_id="e2e-2", console=io.StringIO())
    assert first.executed and not again.executed  # nothing ran twice
    assert again.summary == first.summary
