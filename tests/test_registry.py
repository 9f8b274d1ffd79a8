"""Nightly re-evolution bookkeeping: new files only, dedup across nights, gated promotion, audits of the pointer."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from rstar_math.artifacts import write_artifact
from rstar_math.cli import main
from rstar_math.config import load_config
from rstar_math.data.schemas import METRICS, PROBLEMS, VERIFIED_TREES, write_table
from rstar_math.lineage import RunContext
from rstar_math.stages.io import read_artifact_table
from rstar_math.stages.registry import (
    intake_new_problems,
    new_problem_files,
    promote,
    read_pointer,
    start_from_registry,
)
from rstar_math.stages.rollout import ppm_is_trained
from rstar_math.store import join, store_for


def _jsonl(*pairs) -> bytes:
    return "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs).encode()


@pytest.fixture
def night(root_uri, tmp_path, tiny_model_dir):
    """A bucket layout: an inbox prefix, a registry, a held-out benchmark and a base model artefact."""
    store = store_for(root_uri)
    held_out = join(root_uri, "benchmarks", "held_out.jsonl")
    store.write_bytes(held_out, _jsonl(("What is 9 - 4?", "5")))
    config = load_config("smoke", [f"data.eval=[{held_out}]"])
    base = str(tmp_path / "base")
    with write_artifact(base, kind="policy", stage="bootstrap", context=RunContext("r0")) as d:
        for f in tiny_model_dir.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
    return {"store": store, "inbox": join(root_uri, "inbox"), "registry": join(root_uri, "registry", "promoted.json"),
            "config": config, "base": base, "tmp": tmp_path}


def _history(path, value: float, run: str) -> str:
    row = dict(run_id=run, round=1, benchmark="held_out", method="greedy", metric="accuracy", n=None, value=value,
               ci_low=None, ci_high=None, count=10)
    with write_artifact(str(path), kind="metrics", stage="round_report", context=RunContext(run)) as d:
        write_table(pa.Table.from_pylist([row], schema=METRICS.schema), d / "history.parquet", METRICS)
    return str(path)


def _run_night(n, run, accuracy, gate=0.0):
    """Intake, start, and promote one night with a given final held-out accuracy."""
    ctx = RunContext(run)
    tmp = n["tmp"] / run
    count = intake_new_problems(n["inbox"], n["registry"], str(tmp / "train"), str(tmp / "held_out"),
                                config=n["config"], context=ctx)
    if count == 0:
        return count, None
    had_ppm = start_from_registry(n["registry"], n["base"], str(tmp / "policy"), str(tmp / "ppm"), str(tmp / "prev"),
                                  config=n["config"], context=ctx)
    with write_artifact(str(tmp / "verified"), kind="verified_trees", stage="verify", context=ctx) as d:
        write_table(VERIFIED_TREES.schema.empty_table(), d / "v.parquet", VERIFIED_TREES)
    decision = promote(n["registry"], _history(tmp / "history", accuracy, run), str(tmp / "policy"), str(tmp / "ppm"),
                       str(tmp / "verified"), str(tmp / "train"), str(tmp / "decision"), gate=gate, context=ctx)
    return count, (had_ppm, decision)


def test_first_night_starts_from_the_base_model_and_is_promoted(night):
    night["store"].write_bytes(join(night["inbox"], "a.jsonl"), _jsonl(("What is 1 + 1?", "2"), ("What is 2 + 2?", "4")))
    count, (had_ppm, decision) = _run_night(night, "night-1", 0.4)
    assert count == 2 and had_ppm is False and decision.promoted
    assert not ppm_is_trained(str(night["tmp"] / "night-1" / "ppm"))  # search stays terminal-guided
    pointer = read_pointer(night["registry"])
    assert pointer["metric"]["value"] == 0.4 and pointer["run_id"] == "night-1"


def test_consumed_files_and_seen_problems_are_not_taken_again(night):
    store = night["store"]
    store.write_bytes(join(night["inbox"], "a.jsonl"), _jsonl(("What is 1 + 1?", "2")))
    _run_night(night, "night-1", 0.4)
    assert _run_night(night, "night-2", 0.5)[0] == 0  # nothing new: an empty night
    store.write_bytes(join(night["inbox"], "b.jsonl"), _jsonl(("What is 1 + 1?", "2"), ("What is 3 + 3?", "6")))
    count, (had_ppm, _) = _run_night(night, "night-3", 0.5)
    assert count == 1 and had_ppm is True  # the repeated question was searched on night 1
    train = read_artifact_table(str(night["tmp"] / "night-3" / "train"), PROBLEMS)
    assert train.column("question").to_pylist() == ["What is 3 + 3?"]


def test_a_replaced_file_counts_as_new(night):
    store = night["store"]
    store.write_bytes(join(night["inbox"], "a.jsonl"), _jsonl(("What is 1 + 1?", "2")))
    _run_night(night, "night-1", 0.4)
    store.write_bytes(join(night["inbox"], "a.jsonl"), _jsonl(("What is 5 + 5?", "10")))
    assert [uri.rsplit("/", 1)[-1] for uri, _ in new_problem_files(night["inbox"], night["registry"])] == ["a.jsonl"]


def test_the_gate_keeps_a_worse_night_from_being_promoted(night):
    store = night["store"]
    store.write_bytes(join(night["inbox"], "a.jsonl"), _jsonl(("What is 1 + 1?", "2")))
    _run_night(night, "night-1", 0.60)
    store.write_bytes(join(night["inbox"], "b.jsonl"), _jsonl(("What is 3 + 3?", "6")))
    _, (_, decision) = _run_night(night, "night-2", 0.55, gate=0.02)
    assert not decision.promoted and "below the promoted" in decision.reason
    assert read_pointer(night["registry"])["run_id"] == "night-1"
    store.write_bytes(join(night["inbox"], "c.jsonl"), _jsonl(("What is 4 + 4?", "8")))
    _, (_, decision) = _run_night(night, "night-3", 0.59, gate=0.02)
    assert decision.promoted  # within the gate
    pointer = read_pointer(night["registry"])
    assert pointer["run_id"] == "night-3" and [h["run_id"] for h in pointer["history"]] == ["night-1"]
    assert new_problem_files(night["inbox"], night["registry"]) == []  # night 2's file was consumed all the same


def test_lineage_audits_the_registry_pointer(night, capsys):
    night["store"].write_bytes(join(night["inbox"], "a.jsonl"), _jsonl(("What is 1 + 1?", "2")))
    _run_night(night, "night-1", 0.4)
    assert main(["lineage", night["registry"]]) == 0
    out = capsys.readouterr().out
    assert "== promoted policy" in out and "== promoted ppm" in out and "all hashes verified" in out
    # Tamper with the promoted policy's weights: the audit of the pointer fails.
    policy = read_pointer(night["registry"])["policy"]["uri"]
    store_for(policy).write_bytes(join(policy, "model.safetensors"), b"tampered")
    assert main(["lineage", night["registry"]]) == 1
    assert "model.safetensors was modified" in capsys.readouterr().out


def test_nightly_needs_a_fixed_held_out_benchmark(night):
    with pytest.raises(ValueError, match="held-out benchmark"):
        intake_new_problems(night["inbox"], night["registry"], "x", "y", config=load_config("smoke"),
                            context=RunContext("r"))
