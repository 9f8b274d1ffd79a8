"""Select and train stages as the pipeline calls them: artefacts in, artefacts with lineage out."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from transformers import AutoModelForCausalLM

from rstar_math.artifacts import write_artifact
from rstar_math.config import SelectConfig, load_config
from rstar_math.data.schemas import PPM_PAIRS, PROBLEMS, SFT_DATA, VERIFIED_TREES, write_table
from rstar_math.lineage import RunContext, audit
from rstar_math.models.ppm import PPMScorer
from rstar_math.search.tree import trees_table
from rstar_math.stages.io import read_artifact_table
from rstar_math.stages.select import select
from rstar_math.stages.train import train_policy, train_ppm

from test_selection import known_tree

CTX = RunContext(run_id="stages-test")


def _verified_artefact(path, tree):
    table = trees_table([tree])
    table = table.append_column("verdict", pa.array([("correct" if r and r > 0 else "wrong") if r is not None else None
                                                      for r in table.column("reward").to_pylist()]))
    table = table.append_column("search_reward", table.column("reward"))
    with write_artifact(str(path), kind="verified_trees", stage="verify", context=CTX, round=1) as d:
        write_table(table, d / "verified_trees.parquet", VERIFIED_TREES)
    return str(path)


@pytest.fixture
def selected(tmp_path):
    tree = known_tree()
    problems = pa.table({"problem_id": ["p1"], "question": [tree.question], "answer": ["42"], "source": ["toy/mul"],
                         "level": pa.array([1], pa.int32())})
    with write_artifact(str(tmp_path / "problems"), kind="problems", stage="intake", context=CTX) as d:
        write_table(problems, d / "problems.parquet", PROBLEMS)
    verified = _verified_artefact(tmp_path / "verified-0", tree)
    result = select([verified], str(tmp_path / "problems"), str(tmp_path / "sft"), str(tmp_path / "pairs"),
                    config=SelectConfig(), context=CTX, round=1)
    return tmp_path, result


def test_select_writes_sft_data_and_pairs_with_a_report(selected):
    tmp_path, result = selected
    assert (result.problems, result.solved, result.contributed, result.sft_examples) == (1, 1, 1, 2)
    assert (result.step_pairs, result.final_pairs, result.contributed_share) == (5, 4, 1.0)
    sft = read_artifact_table(str(tmp_path / "sft"), SFT_DATA)
    assert sft.column("source").to_pylist() == ["toy/mul", "toy/mul"]
    assert read_artifact_table(str(tmp_path / "pairs"), PPM_PAIRS).num_rows == 9
    report = json.loads((tmp_path / "sft" / "select_report.json").read_text())
    assert report["per_problem"][0]["step_pairs"] == 5
    assert audit(str(tmp_path / "pairs")).ok


def test_select_is_deterministic(selected, tmp_path):
    first_dir, _ = selected
    again = tmp_path / "again"
    select([str(first_dir / "verified-0")], str(first_dir / "problems"), str(again / "sft"), str(again / "pairs"),
           config=SelectConfig(), context=CTX, round=1)
    for name in ("sft", "pairs"):
        kind = SFT_DATA if name == "sft" else PPM_PAIRS
        assert read_artifact_table(str(again / name), kind).equals(read_artifact_table(str(first_dir / name), kind))


def test_train_stages_publish_loadable_checkpoints_with_lineage(selected, tiny_model_dir):
    tmp_path, _ = selected
    config = load_config("smoke", ["train.policy.batch_size=2", "train.policy.micro_batch_size=2",
                                   "train.ppm.batch_size=2", "train.ppm.micro_batch_size=2",
                                   "train.ppm.holdout_fraction=0.0"])
    policy = train_policy(str(tiny_model_dir), str(tmp_path / "sft"), str(tmp_path / "policy"), config=config,
                          context=CTX, round=1, checkpoint_uri=str(tmp_path / "ckpt" / "policy"))
    assert policy["steps"] >= 1
    AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    ppm = train_ppm(str(tiny_model_dir), str(tmp_path / "pairs"), str(tmp_path / "ppm"), config=config, context=CTX,
                    round=1)
    assert ppm["steps"] >= 1
    scores = PPMScorer.from_pretrained(str(tmp_path / "ppm")).score(["<question>\nq\n<end_of_question>\n"])
    assert -1.0 <= scores[0] <= 1.0
    report = audit(str(tmp_path / "policy"))
    assert report.ok and {"base_model", "sft_data"} == {i.role for i in report.nodes[report.target].record.inputs}
    assert str(tiny_model_dir) in report.roots


def test_a_round_without_examples_publishes_the_starting_model(tmp_path, tiny_model_dir):
    with write_artifact(str(tmp_path / "sft"), kind="sft_data", stage="select", context=CTX) as d:
        write_table(SFT_DATA.schema.empty_table(), d / "sft_data.parquet", SFT_DATA)
    result = train_policy(str(tiny_model_dir), str(tmp_path / "sft"), str(tmp_path / "policy"),
                          config=load_config("smoke"), context=CTX, round=1)
    assert result["skipped"] == "no training examples"
    assert (tmp_path / "policy" / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
