"""The compiled Kubeflow YAML: current with the Python, and shaped as the cluster needs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from rstar_math.config import CONTROLS, LOOP_CONTROLS
from rstar_math.orchestration.compile import COMPONENTS_DIR, PIPELINE_FILE, stale_files
from rstar_math.orchestration.components import COMPONENTS
from rstar_math.orchestration.pipeline import MAX_ROUNDS, ROUND_CONTROLS

ROOT = Path(__file__).resolve().parents[1]
GPU_STAGES = ("rollout", "train-ppm", "train-policy", "control", "loop-control", "evaluate", "evaluate-shard",
              "prepare-base-model")
DAG_COMPONENTS = ("comp-condition", "comp-for-loop", "comp-self-evolution", "comp-round-zero")  # not tasks of a stage
CPU_STAGES = ("verify", "select", "merge-evaluation", "round-report", "summarize", "resolve-config", "prepare-problems")


@pytest.fixture(scope="module")
def compiled():
    spec, platform = yaml.safe_load_all((ROOT / PIPELINE_FILE).read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec):
    """(component name, task spec) of every task in every DAG of the pipeline."""
    yield from (("root", name, task) for name, task in spec["root"]["dag"]["tasks"].items())
    for comp_name, comp in spec["components"].items():
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            yield comp_name, name, task


def _stage(executor_name: str) -> str:
    return re.sub(r"-\d+$", "", executor_name.removeprefix("exec-"))


def test_checked_in_yaml_matches_the_python():
    assert stale_files(ROOT) == [], "run `rstar compile` and commit the result"


def test_every_component_has_its_compiled_spec():
    for name in COMPONENTS:
        component = yaml.safe_load((ROOT / COMPONENTS_DIR / name / "component.yaml").read_text())
        assert component["pipelineInfo"]["name"] == name.replace("_", "-")
        command = " ".join(component["deploymentSpec"]["executors"][f"exec-{name.replace('_', '-')}"]["container"]["command"])
        assert "pip install" not in command  # the package is in the image


def test_rounds_are_nested_so_one_pipeline_runs_one_to_four(compiled):
    spec, _ = compiled
    rounds = [(comp, task) for comp, _, task in _tasks(spec)
              if task["componentRef"]["name"].startswith(("comp-self-evolution-first-round", "comp-self-evolution-round"))]
    assert len(rounds) == MAX_ROUNDS == 4
    conditions = [task["triggerPolicy"]["condition"] for _, _, task in _tasks(spec) if "triggerPolicy" in task]
    for r in range(1, MAX_ROUNDS + 1):
        assert f"int(inputs.parameter_values['pipelinechannel--rounds']) >= {r}" in conditions
        assert f"int(inputs.parameter_values['pipelinechannel--rounds']) == {r}" in conditions
    first = [c for c, t in rounds if t["componentRef"]["name"] == "comp-self-evolution-first-round"]
    assert len(first) == 1


def test_later_rounds_search_with_the_previous_rounds_policy_and_ppm(compiled):
    spec, _ = compiled
    previous_task = {"self-evolution-round": "self-evolution-first-round",
                     "self-evolution-round-2": "self-evolution-round", "self-evolution-round-3": "self-evolution-round-2"}
    later = {name: t for _, name, t in _tasks(spec) if t["componentRef"]["name"].startswith("comp-self-evolution-round")}
    assert sorted(later) == sorted(previous_task)
    for name, task in later.items():
        artifacts = task["inputs"]["artifacts"]
        for given, output in (("policy", "policy"), ("ppm", "ppm"), ("previous", "verified"), ("history", "history"),
                              ("line_policy", "line_policy")):
            channel = artifacts[given]["componentInputArtifact"]
            assert channel == f"pipelinechannel--{previous_task[name]}-{output}", (name, given)
        assert artifacts["base_model"]["componentInputArtifact"].endswith("prepare-base-model-base_model")


def _loops(spec) -> dict[str, tuple[dict, set[str]]]:
    """Each ParallelFor: its iterator and the components it runs (numbered names folded)."""
    iterators = {t["componentRef"]["name"]: t["parameterIterator"] for _, _, t in _tasks(spec) if "parameterIterator" in t}
    return {name: (iterators[name], {re.sub(r"-\d+$", "", t["componentRef"]["name"]) for t in c["dag"]["tasks"].values()})
            for name, c in spec["components"].items() if name.startswith("comp-for-loop")}


def test_rollout_and_verify_fan_out_over_shards(compiled):
    spec, _ = compiled
    loops = [(it, comps) for it, comps in _loops(spec).values() if "comp-rollout" in comps]
    assert len(loops) == MAX_ROUNDS
    for iterator, components in loops:
        assert components == {"comp-rollout", "comp-verify"}
        assert iterator["items"]["inputParameter"] == "pipelinechannel--shard_ids"
    selects = [t for _, _, t in _tasks(spec) if t["componentRef"]["name"].startswith("comp-select")]
    assert all("parameterExpressionSelector" not in str(t) for t in selects)
    assert all(t["inputs"]["artifacts"]["verified_shards"]["taskOutputArtifact"]["producerTask"].startswith("for-loop")
               for t in selects)


def test_the_controls_run_side_by_side_and_the_round_report_collects_them(compiled):
    spec, _ = compiled
    loops = {name: it for name, (it, comps) in _loops(spec).items() if comps == {"comp-control"}}
    assert len(loops) == MAX_ROUNDS
    assert all(json.loads(it["items"]["raw"]) == list(ROUND_CONTROLS) for it in loops.values())
    assert sorted(ROUND_CONTROLS + LOOP_CONTROLS) == sorted(CONTROLS)
    reports = {dag: t for dag, n, t in _tasks(spec) if n.startswith("round-report") and "controls" in t["inputs"]["artifacts"]}
    assert len(reports) == MAX_ROUNDS
    for dag, report in reports.items():
        producer = report["inputs"]["artifacts"]["controls"]["taskOutputArtifact"]["producerTask"]
        assert f"comp-{producer}" in loops
        line = report["inputs"]["artifacts"]["loop_control"]["taskOutputArtifact"]
        assert line == {"producerTask": "loop-control", "outputArtifactKey": "results"}, dag


def test_the_loop_control_samples_from_its_own_previous_policy(compiled):
    """Round 1's line starts from the base model; the round sub-pipeline hands its line's policy on."""
    spec, _ = compiled
    lines = {dag: t for dag, n, t in _tasks(spec) if n == "loop-control"}
    assert sorted(lines) == ["comp-self-evolution-first-round"] + [f"comp-self-evolution-round{s}" for s in
                                                                   ("", "-2", "-3")]
    for dag, task in lines.items():
        assert task["inputs"]["parameters"]["kind"]["runtimeValue"]["constant"] == LOOP_CONTROLS[0]
        source = task["inputs"]["artifacts"]["line_policy"]["componentInputArtifact"]
        assert source == ("base_model" if dag.endswith("first-round") else "line_policy"), dag
        out = spec["components"][dag]["outputDefinitions"]["artifacts"]["line_policy"]
        assert out["artifactType"]["schemaTitle"] == "system.Model"
        assert spec["components"][dag]["dag"]["outputs"]["artifacts"]["line_policy"]["artifactSelectors"] == [
            {"producerSubtask": "loop-control", "outputArtifactKey": "policy"}]


def test_evaluation_fans_out_over_shards_and_each_report_reads_the_merge(compiled):
    spec, _ = compiled
    loops = {name: it for name, (it, comps) in _loops(spec).items() if comps == {"comp-evaluate-shard"}}
    assert len(loops) == MAX_ROUNDS
    assert all(it["items"]["inputParameter"] == "pipelinechannel--shard_ids" for it in loops.values())
    merges = {dag: (name, t) for dag, name, t in _tasks(spec) if t["componentRef"]["name"].startswith("comp-merge-evaluation")}
    assert len(merges) == MAX_ROUNDS  # one in each round's DAG
    for _, merge in merges.values():
        producer = merge["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]["producerTask"]
        assert f"comp-{producer}" in loops
    reports = [(dag, t) for dag, n, t in _tasks(spec) if n.startswith("round-report")]
    assert len(reports) == MAX_ROUNDS + 1
    for dag, report in reports:  # round 0 (the base model) is one evaluate task in the root DAG
        expected = merges[dag][0] if dag != "root" else "evaluate"
        assert report["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]["producerTask"] == expected


def test_gpu_stages_request_accelerators_on_the_gpu_pool(compiled):
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        stage = _stage(name)
        resources = executor["container"].get("resources", {})
        k8s = platform[name]
        if stage in GPU_STAGES:
            assert "accelerator" in resources, name
            assert k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("gpu_node_selector")
            assert k8s["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")
        else:
            assert stage in CPU_STAGES, name
            assert "accelerator" not in resources, name
            assert k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("cpu_node_selector")
        assert executor["container"]["image"].startswith("{{$.inputs.parameters['pipelinechannel--")


def test_s3_credentials_come_from_a_secret_not_parameters(compiled):
    spec, platform = compiled
    for name, k8s in platform.items():
        [secret] = k8s["secretAsEnv"]
        assert {e["envVar"] for e in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert k8s["fieldPathAsEnv"][0]["name"] == "RSTAR_RUN_ID"
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in parameters if re.search(r"access_key|secret_key|password|token", p)]


def test_tasks_cache_and_retry(compiled):
    spec, _ = compiled
    for _, name, task in _tasks(spec):
        if task["componentRef"]["name"].startswith(DAG_COMPONENTS):
            continue
        assert task["cachingOptions"]["enableCache"] is True, name
        retries = task["retryPolicy"]["maxRetryCount"]
        assert retries == (2 if name.startswith(("rollout", "train-", "control", "loop-control", "prepare-base-model")) else 1), name


def test_the_ui_shows_readable_names_and_descriptions(compiled):
    spec, _ = compiled
    assert spec["pipelineInfo"]["name"] == "rstar-self-evolution"
    assert "self-evolution" in spec["pipelineInfo"]["description"]
    display = {t["taskInfo"]["name"] for _, _, t in _tasks(spec)}
    assert {"rollout", "verify", "select", "train-ppm", "train-policy", "evaluate", "summarize"} <= display
    assert {"round 1", "round 4"} <= display


def test_pods_running_model_code_are_labelled_for_the_network_policy(compiled):
    spec, platform = compiled
    labelled = set()
    for name, k8s in platform.items():
        labels = k8s["podMetadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "rstar-math"
        assert k8s["securityContext"]["runAsNonRoot"] is True
        if labels.get("rstar-math.io/executes-model-code") == "true":
            labelled.add(_stage(name))
    assert labelled == {"rollout", "verify", "evaluate", "evaluate-shard", "control", "loop-control"}


@pytest.fixture(scope="module")
def nightly():
    from rstar_math.orchestration.compile import NIGHTLY_FILE

    spec, platform = yaml.safe_load_all((ROOT / NIGHTLY_FILE).read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_nightly_continues_from_the_registry_and_promotes_after_the_last_round(nightly):
    spec, _ = nightly
    assert {"problem_prefix", "registry", "promotion_gate"} <= set(spec["root"]["inputDefinitions"]["parameters"])
    tasks = list(_tasks(spec))
    rounds = [t for _, _, t in tasks if t["componentRef"]["name"].startswith("comp-self-evolution")]
    assert len(rounds) == MAX_ROUNDS and not [t for t in rounds if "first-round" in t["componentRef"]["name"]]
    round_one = next(t for t in rounds if t["inputs"]["artifacts"]["policy"]["componentInputArtifact"].endswith(
        "registry-start-policy"))
    assert round_one["inputs"]["artifacts"]["ppm"]["componentInputArtifact"].endswith("registry-start-ppm")
    promotes = [t for _, _, t in tasks if t["componentRef"]["name"].startswith("comp-promote")]
    assert len(promotes) == MAX_ROUNDS  # one per `rounds == r` branch; exactly one runs
    uncached = {name for _, name, t in tasks if not t.get("cachingOptions", {}).get("enableCache", False)
                and not t["componentRef"]["name"].startswith(DAG_COMPONENTS)}
    assert {"nightly-intake", "registry-start", "promote"} <= {re.sub(r"-\d+$", "", n) for n in uncached}


def test_an_empty_night_trains_nothing(nightly):
    spec, _ = nightly
    conditions = {t["triggerPolicy"]["condition"]: t for _, _, t in _tasks(spec) if "triggerPolicy" in t}
    empty = conditions["int(inputs.parameter_values['pipelinechannel--nightly-intake-Output']) == 0"]
    body = spec["components"][empty["componentRef"]["name"]]["dag"]["tasks"]
    assert [t["componentRef"]["name"] for t in body.values()] == ["comp-no-new-problems"]
    assert "int(inputs.parameter_values['pipelinechannel--nightly-intake-Output']) > 0" in conditions
