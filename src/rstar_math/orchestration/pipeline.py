"""The self-evolution pipeline: N rounds of rollout -> verify -> select -> train-PPM -> train-policy -> evaluate.

    rstar compile                 # writes pipelines/self_evolution.yaml and components/*/component.yaml
    rstar run                     # runs it locally with kfp.local on the embedded default

Shape (what the Kubeflow UI shows):
  resolve-config -> prepare-problems -> prepare-base-model -> evaluate (round 0) -> round-report
  round r (a sub-pipeline, r = 1..MAX_ROUNDS, run while r <= `rounds`):
      ParallelFor shard: rollout (GPU) -> verify (CPU)
      select (merges the shards' verified trees; CPU)
      train-ppm (GPU) from the round's search policy; train-policy (GPU) from the base model
      ParallelFor control: rejection, continued (GPU; compute-matched baselines, when configured)
      loop-control: outcome_loop (GPU; a baseline with its own line of policies, carried like the
      round's policy)
      ParallelFor shard: evaluate (GPU), then merge-evaluation (CPU) -> round-report (CPU, the run's
      metrics so far)
  summarize (after the last round): per-round accuracy by method, data sizes, stage
  times, and the lineage of the final policy and PPM.
Round r searches with round r-1's policy and PPM (PPM-guided from search.ppm_from_round);
the outcome_loop control samples from its own round r-1 policy.
Rounds are nested conditions on the `rounds` parameter, so one compiled pipeline runs
1 to MAX_ROUNDS rounds.

Placement (kfp-kubernetes): rollout, training, the controls and evaluate request
accelerators and get the GPU pool's node selector and tolerations; the rest run on
the CPU pool. Every task gets S3 credentials from a Kubernetes secret and the
endpoint from a ConfigMap (never from parameters), and its run id from the pod's
`pipeline/runid` label (kept out of task inputs so caching works across runs).
"""


import contextlib
import copy
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Model

from rstar_math.config import CONTROLS, LOOP_CONTROLS
from rstar_math.orchestration import components as c

MAX_ROUNDS = 4
PIPELINE_NAME = "rstar-self-evolution"
NIGHTLY_PIPELINE_NAME = "rstar-nightly-re-evolution"
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
S3_CONFIG_KEYS = {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION"}
RETRIES = {"rollout": 2, "train": 2, "default": 1}
# Labels the cluster side keys on: the NetworkPolicy (helm/, manifests/) limits the egress of
# pods that run model-written code to DNS and the object store.
PART_OF = ("app.kubernetes.io/part-of", "rstar-math")
STAGE_LABEL = "rstar-math.io/stage"
MODEL_CODE_LABEL = ("rstar-math.io/executes-model-code", "true")
MODEL_CODE_STAGES = frozenset({"rollout", "verify", "evaluate", "evaluate-base-model", "control", "loop-control"})
NON_ROOT_UID = 1000
ROUND_CONTROLS = tuple(kind for kind in CONTROLS if kind not in LOOP_CONTROLS)
(LOOP_CONTROL,) = LOOP_CONTROLS  # the round sub-pipelines carry one control line


class Placement(NamedTuple):
    """Pipeline parameters that place tasks on node pools (pipeline channels inside a pipeline)."""

    cpu_image: object
    gpu_image: object
    train_image: object
    accelerator_type: object
    rollout_gpus: object
    train_gpus: object
    gpu_node_selector: object
    gpu_tolerations: object
    cpu_node_selector: object
    cpu_tolerations: object
    s3_secret: object
    s3_config_map: object


def _common(task: dsl.PipelineTask, stage: str, p: Placement, retries: int = RETRIES["default"]) -> dsl.PipelineTask:
    task.set_display_name(stage)
    kubernetes.add_pod_label(task, *PART_OF)
    kubernetes.add_pod_label(task, STAGE_LABEL, stage)
    if stage in MODEL_CODE_STAGES:
        kubernetes.add_pod_label(task, *MODEL_CODE_LABEL)
    kubernetes.set_security_context(task, run_as_user=NON_ROOT_UID, run_as_group=NON_ROOT_UID, run_as_non_root=True)
    kubernetes.use_secret_as_env(task, secret_name=p.s3_secret, secret_key_to_env=S3_SECRET_KEYS)
    kubernetes.use_config_map_as_env(task, config_map_name=p.s3_config_map, config_map_key_to_env=S3_CONFIG_KEYS)
    kubernetes.use_field_path_as_env(task, env_name="RSTAR_RUN_ID", field_path="metadata.labels['pipeline/runid']")
    task.set_caching_options(True)
    task.set_retry(num_retries=retries, backoff_duration="30s")
    return task


def on_cpu(task: dsl.PipelineTask, stage: str, p: Placement, *, cpu: str = "2", memory: str = "8G") -> dsl.PipelineTask:
    task.set_container_image(p.cpu_image)
    # Limits equal to requests: the cgroup limit is what backs the sandbox's address-space limit.
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.add_node_selector_json(task, p.cpu_node_selector)
    kubernetes.add_toleration_json(task, p.cpu_tolerations)
    return _common(task, stage, p)


def on_gpu(task: dsl.PipelineTask, stage: str, p: Placement, *, image, gpus, retries: int,
           memory: str = "64G") -> dsl.PipelineTask:
    task.set_container_image(image)
    task.set_accelerator_type(p.accelerator_type).set_accelerator_limit(gpus)
    task.set_cpu_request("8").set_cpu_limit("8").set_memory_request(memory).set_memory_limit(memory)
    kubernetes.add_node_selector_json(task, p.gpu_node_selector)
    kubernetes.add_toleration_json(task, p.gpu_tolerations)
    return _common(task, stage, p, retries)


class RoundOutputs(NamedTuple):
    policy: Model
    ppm: Model
    verified: Dataset
    history: Dataset
    line_policy: Model
    """The loop control's policy of this round."""


def _round(config_yaml, round, shard_ids, base_model, policy, line_policy, train, held_out, seed_corpus, history,
           p: Placement, ppm=None, previous=None) -> RoundOutputs:
    """The tasks of one round; `ppm` and `previous` are absent in round 1."""
    with dsl.ParallelFor(shard_ids, name="shards") as shard:
        search = c.rollout(config_yaml=config_yaml, round=round, shard=shard, problems=train, policy=policy,
                           **({"ppm": ppm, "previous": previous} if ppm is not None else {}))
        on_gpu(search, "rollout", p, image=p.gpu_image, gpus=p.rollout_gpus, retries=RETRIES["rollout"])
        check = c.verify(config_yaml=config_yaml, round=round, trees=search.outputs["trees"], problems=train)
        on_cpu(check, "verify", p, cpu="8", memory="16G")
    chosen = c.select(config_yaml=config_yaml, round=round, verified_shards=dsl.Collected(check.outputs["verified"]),
                      problems=train)
    on_cpu(chosen, "select", p)
    ppm_task = c.train_ppm(config_yaml=config_yaml, round=round, init_model=policy, ppm_pairs=chosen.outputs["ppm_pairs"])
    on_gpu(ppm_task, "train-ppm", p, image=p.train_image, gpus=p.train_gpus, retries=RETRIES["train"])
    policy_task = c.train_policy(config_yaml=config_yaml, round=round, base_model=base_model,
                                 sft_data=chosen.outputs["sft_data"])
    on_gpu(policy_task, "train-policy", p, image=p.train_image, gpus=p.train_gpus,
           retries=RETRIES["train"])
    # One task per known control, side by side (a kind the config leaves out writes no rows):
    # a constant list, because kfp.local cannot collect from a loop over an empty one.
    with dsl.ParallelFor(list(ROUND_CONTROLS), name="controls") as kind:
        control = c.control(config_yaml=config_yaml, round=round, kind=kind, problems=train, held_out=held_out,
                            base_model=base_model, search_policy=policy, seed_corpus=seed_corpus,
                            sft_data=chosen.outputs["sft_data"])
        on_gpu(control, "control", p, image=p.train_image, gpus=p.train_gpus, retries=RETRIES["train"])
    line = c.loop_control(config_yaml=config_yaml, round=round, kind=LOOP_CONTROL, problems=train, held_out=held_out,
                          base_model=base_model, line_policy=line_policy, sft_data=chosen.outputs["sft_data"])
    on_gpu(line, "loop-control", p, image=p.train_image, gpus=p.train_gpus, retries=RETRIES["train"])
    # Evaluation fans out over the same shards as the search and is merged into one metrics artefact.
    with dsl.ParallelFor(shard_ids, name="evaluation-shards") as shard:
        part = c.evaluate_shard(config_yaml=config_yaml, round=round, shard=shard, policy=policy_task.outputs["policy"],
                                held_out=held_out, ppm=ppm_task.outputs["ppm"])
        on_gpu(part, "evaluate", p, image=p.gpu_image, gpus=p.rollout_gpus, retries=RETRIES["default"])
    evaluation = c.merge_evaluation(config_yaml=config_yaml, round=round, shards=dsl.Collected(part.outputs["answers"]))
    on_cpu(evaluation, "merge-evaluation", p, cpu="1", memory="2G")
    report = c.round_report(config_yaml=config_yaml, round=round, evaluation=evaluation.outputs["evaluation"],
                            sft_data=chosen.outputs["sft_data"], policy=policy_task.outputs["policy"],
                            ppm=ppm_task.outputs["ppm"], controls=dsl.Collected(control.outputs["results"]),
                            loop_control=line.outputs["results"], previous_history=history)
    on_cpu(report, "round-report", p, cpu="1", memory="2G")
    return RoundOutputs(policy_task.outputs["policy"], ppm_task.outputs["ppm"], chosen.outputs["verified"],
                        report.outputs["history"], line.outputs["policy"])


# Sub-pipelines take the placement as parameters of their own: a pipeline parameter does not
# reach into a sub-pipeline otherwise. (kfp.local also needs one parameter input per sub-pipeline.)
@dsl.pipeline(name="self-evolution-first-round",
              description="Round 1: terminal-guided MCTS with the base model, then the round's PPM and policy.")
def first_round(config_yaml: str, round: int, shard_ids: list, base_model: Model, train: Dataset, held_out: Dataset,
                seed_corpus: Dataset, history: Dataset, cpu_image: str, gpu_image: str, train_image: str,
                accelerator_type: str, rollout_gpus: int, train_gpus: int, gpu_node_selector: dict,
                gpu_tolerations: list, cpu_node_selector: dict, cpu_tolerations: list, s3_secret: str,
                s3_config_map: str) -> RoundOutputs:
    p = Placement(cpu_image, gpu_image, train_image, accelerator_type, rollout_gpus, train_gpus, gpu_node_selector,
                  gpu_tolerations, cpu_node_selector, cpu_tolerations, s3_secret, s3_config_map)
    return _round(config_yaml, round, shard_ids, base_model, base_model, base_model, train, held_out, seed_corpus,
                  history, p)


@dsl.pipeline(name="self-evolution-round",
              description="A later round: MCTS with the previous round's policy and PPM, then this round's PPM and policy.")
def later_round(config_yaml: str, round: int, shard_ids: list, base_model: Model, policy: Model, ppm: Model,
                previous: Dataset, line_policy: Model, train: Dataset, held_out: Dataset, seed_corpus: Dataset,
                history: Dataset, cpu_image: str, gpu_image: str, train_image: str, accelerator_type: str,
                rollout_gpus: int, train_gpus: int, gpu_node_selector: dict, gpu_tolerations: list,
                cpu_node_selector: dict, cpu_tolerations: list, s3_secret: str, s3_config_map: str) -> RoundOutputs:
    p = Placement(cpu_image, gpu_image, train_image, accelerator_type, rollout_gpus, train_gpus, gpu_node_selector,
                  gpu_tolerations, cpu_node_selector, cpu_tolerations, s3_secret, s3_config_map)
    return _round(config_yaml, round, shard_ids, base_model, policy, line_policy, train, held_out, seed_corpus,
                  history, p, ppm=ppm, previous=previous)


class Start(NamedTuple):
    """Models a run continues from instead of the base model (nightly runs)."""

    policy: Model
    ppm: Model
    previous: Dataset


def _evolve(*, rounds, config_yaml, shard_ids, base_model, train, held_out, seed_corpus, history, p: Placement,
            finish, start: Start | None = None) -> None:
    """Round 1..MAX_ROUNDS as nested conditions on `rounds`; `finish(round_task)` runs after the last one."""
    placement = dict(p._asdict())
    state = None
    with contextlib.ExitStack() as nesting:
        for r in range(1, MAX_ROUNDS + 1):
            nesting.enter_context(dsl.If(rounds >= r, name=f"round-{r}"))
            common = dict(config_yaml=config_yaml, round=r, shard_ids=shard_ids, base_model=base_model, train=train,
                          held_out=held_out, seed_corpus=seed_corpus, **placement)
            if state is not None:
                step = later_round(policy=state.outputs["policy"], ppm=state.outputs["ppm"],
                                   previous=state.outputs["verified"], line_policy=state.outputs["line_policy"],
                                   history=state.outputs["history"], **common)
            elif start is not None:  # the control line starts where the run does
                step = later_round(policy=start.policy, ppm=start.ppm, previous=start.previous,
                                   line_policy=start.policy, history=history, **common)
            else:
                step = first_round(history=history, **common)
            step.set_display_name(f"round {r}")
            state = step
            with dsl.If(rounds == r, name=f"after-round-{r}"):
                finish(step)


def _resolve(p: Placement, **params) -> dsl.PipelineTask:
    resolved = c.resolve_config(**params)
    return on_cpu(resolved, "resolve-config", p, cpu="1", memory="1G")


def _base_model(p: Placement, config_yaml, train, held_out) -> dsl.PipelineTask:
    base = c.prepare_base_model(config_yaml=config_yaml, train=train, held_out=held_out)
    return on_gpu(base, "prepare-base-model", p, image=p.train_image, gpus=p.train_gpus, retries=RETRIES["train"])


def _own_executor(component, name: str):
    """The same component under another name, hence with its own executor.

    kfp-kubernetes keeps pod settings (labels, secret and node-selector parameters) per
    executor, and KFP gives one executor to every use of an identical component. A
    component used both inside a round sub-pipeline and outside it would share one set of
    settings, naming parameters of one scope only, and which scope won varied from one
    compilation to the next."""
    clone = copy.deepcopy(component)
    clone.component_spec.name = name
    return clone


# Round 0's use, outside the round sub-pipelines ("-0": the stage is still round-report).
_round_zero_report = _own_executor(c.round_report, "round-report-0")


def _round_zero(p: Placement, config_yaml, policy, held_out, ppm=None) -> dsl.PipelineTask:
    """Held-out accuracy of the models the run starts from: round 0 of the history.

    One task over every problem: kfp.local cannot run GPU tasks in a loop of the root DAG (it
    finds their accelerator settings only through an enclosing condition, as in the rounds)."""
    baseline = c.evaluate(config_yaml=config_yaml, round=0, policy=policy, held_out=held_out,
                          **({"ppm": ppm} if ppm is not None else {}))
    on_gpu(baseline, "evaluate-base-model", p, image=p.gpu_image, gpus=p.rollout_gpus, retries=RETRIES["default"])
    history = _round_zero_report(config_yaml=config_yaml, round=0, evaluation=baseline.outputs["evaluation"])
    return on_cpu(history, "round-report", p, cpu="1", memory="2G")


def _summarize(p: Placement, config_yaml, step) -> dsl.PipelineTask:
    summary = c.summarize(config_yaml=config_yaml, history=step.outputs["history"], policy=step.outputs["policy"],
                          ppm=step.outputs["ppm"])
    return on_cpu(summary, "summarize", p, cpu="1", memory="2G")


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="rStar-Math self-evolution: MCTS over code-augmented steps, verification, PPM and policy training, "
    "evaluation, for 1 to 4 rounds.",
)
def self_evolution(
    preset: str = "paper",
    config_overrides: str = "",
    base_model: str = "",
    train_problems: str = "",
    eval_problems: str = "",
    storage_root: str = "",
    rounds: int = MAX_ROUNDS,
    shards: int = 0,
    cpu_image: str = c.CPU_IMAGE,
    gpu_image: str = c.GPU_IMAGE,
    train_image: str = c.TRAIN_IMAGE,
    accelerator_type: str = "nvidia.com/gpu",
    rollout_gpus: int = 1,
    train_gpus: int = 8,
    gpu_node_selector: dict = {},
    gpu_tolerations: list = [],
    cpu_node_selector: dict = {},
    cpu_tolerations: list = [],
    s3_secret: str = "rstar-s3",
    s3_config_map: str = "rstar-s3",
):
    """Parameters: `preset` (paper, default, smoke), `config_overrides` (key=value lines), the base model and
    problem files (URIs; empty = the preset's), `rounds` (1-4), `shards` (0 = the preset's), and placement."""
    p = Placement(cpu_image, gpu_image, train_image, accelerator_type, rollout_gpus, train_gpus, gpu_node_selector,
                  gpu_tolerations, cpu_node_selector, cpu_tolerations, s3_secret, s3_config_map)
    resolved = _resolve(p, preset=preset, overrides=config_overrides, base_model=base_model,
                        train_problems=train_problems, eval_problems=eval_problems, storage_root=storage_root,
                        shards=shards, rounds=rounds)
    config_yaml = resolved.outputs["config_yaml"]
    problems = on_cpu(c.prepare_problems(config_yaml=config_yaml), "prepare-problems", p)
    train, held_out = problems.outputs["train"], problems.outputs["held_out"]
    base = _base_model(p, config_yaml, train, held_out)
    history = _round_zero(p, config_yaml, base.outputs["base_model"], held_out)
    _evolve(rounds=rounds, config_yaml=config_yaml, shard_ids=resolved.outputs["shard_ids"],
            base_model=base.outputs["base_model"], train=train, held_out=held_out,
            seed_corpus=base.outputs["seed_corpus"], history=history.outputs["history"], p=p,
            finish=lambda step: _summarize(p, config_yaml, step))


@dsl.pipeline(
    name=NIGHTLY_PIPELINE_NAME,
    description="Nightly re-evolution: new problem files under a prefix, continuing from the last promoted policy "
    "and PPM, promoted only if held-out accuracy holds.",
)
def nightly_re_evolution(
    problem_prefix: str,
    registry: str,
    promotion_gate: float = 0.0,
    preset: str = "paper",
    config_overrides: str = "",
    base_model: str = "",
    eval_problems: str = "",
    storage_root: str = "",
    rounds: int = 1,
    shards: int = 0,
    cpu_image: str = c.CPU_IMAGE,
    gpu_image: str = c.GPU_IMAGE,
    train_image: str = c.TRAIN_IMAGE,
    accelerator_type: str = "nvidia.com/gpu",
    rollout_gpus: int = 1,
    train_gpus: int = 8,
    gpu_node_selector: dict = {},
    gpu_tolerations: list = [],
    cpu_node_selector: dict = {},
    cpu_tolerations: list = [],
    s3_secret: str = "rstar-s3",
    s3_config_map: str = "rstar-s3",
):
    """`problem_prefix`: where new problem files arrive; `registry`: the pointer to the promoted models;
    `promotion_gate`: how far below the promoted held-out accuracy a run may be and still be promoted."""
    p = Placement(cpu_image, gpu_image, train_image, accelerator_type, rollout_gpus, train_gpus, gpu_node_selector,
                  gpu_tolerations, cpu_node_selector, cpu_tolerations, s3_secret, s3_config_map)
    resolved = _resolve(p, preset=preset, overrides=config_overrides, base_model=base_model, train_problems="",
                        eval_problems=eval_problems, storage_root=storage_root, shards=shards, rounds=rounds)
    config_yaml = resolved.outputs["config_yaml"]
    intake = c.nightly_intake(config_yaml=config_yaml, problem_prefix=problem_prefix, registry=registry)
    on_cpu(intake, "nightly-intake", p).set_caching_options(False)  # new files arrive under the same prefix
    train, held_out = intake.outputs["train"], intake.outputs["held_out"]
    with dsl.If(intake.outputs["Output"] > 0, name="new-problems"):
        base = _base_model(p, config_yaml, train, held_out)
        start = c.registry_start(config_yaml=config_yaml, registry=registry, base_model=base.outputs["base_model"])
        on_gpu(start, "registry-start", p, image=p.train_image, gpus=p.train_gpus,
               retries=RETRIES["default"]).set_caching_options(False)
        history = _round_zero(p, config_yaml, start.outputs["policy"], held_out, ppm=start.outputs["ppm"])

        def finish(step):
            _summarize(p, config_yaml, step)
            decision = c.promote(config_yaml=config_yaml, registry=registry, promotion_gate=promotion_gate,
                                 history=step.outputs["history"], policy=step.outputs["policy"],
                                 ppm=step.outputs["ppm"], verified=step.outputs["verified"], train=train)
            on_cpu(decision, "promote", p, cpu="1", memory="2G").set_caching_options(False)

        _evolve(rounds=rounds, config_yaml=config_yaml, shard_ids=resolved.outputs["shard_ids"],
                base_model=base.outputs["base_model"], train=train, held_out=held_out,
                seed_corpus=base.outputs["seed_corpus"], history=history.outputs["history"], p=p, finish=finish,
                start=Start(start.outputs["policy"], start.outputs["ppm"], start.outputs["previous"]))
    with dsl.If(intake.outputs["Output"] == 0, name="empty-night"):
        on_cpu(c.no_new_problems(problem_prefix=problem_prefix), "no-new-problems", p, cpu="1", memory="1G")
