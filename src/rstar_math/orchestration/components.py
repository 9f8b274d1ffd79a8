"""Kubeflow components: thin, typed wrappers that map KFP artifacts onto the stage functions.

Each component imports inside its body (how KFP lightweight components work) and
calls one function of rstar_math.stages through rstar_math.orchestration.glue; no
algorithm lives here. The package is installed in the images (images/), so no
component pip-installs anything at run time. Images are set per task by the
pipeline from its parameters; the defaults below are what `rstar compile` writes.

Compiled specs: components/<name>/component.yaml (see orchestration/compile.py).
"""


import functools
from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

# The images carry the package and kfp itself: nothing is pip-installed when a task starts.
component = functools.partial(dsl.component, install_kfp_package=False)

CPU_IMAGE = "ghcr.io/rstar-math/rstar-cpu:0.1.0"
GPU_IMAGE = "ghcr.io/rstar-math/rstar-gpu-rollout:0.1.0"
TRAIN_IMAGE = "ghcr.io/rstar-math/rstar-train:0.1.0"


@component(base_image=CPU_IMAGE)
def resolve_config(
    preset: str,
    overrides: str,
    base_model: str,
    train_problems: str,
    eval_problems: str,
    storage_root: str,
    shards: int,
    rounds: int,
) -> NamedTuple("Outputs", config_yaml=str, shard_ids=list):
    """Resolve the run config from a preset, key=value overrides (one per line) and the pipeline parameters."""
    from rstar_math.orchestration.glue import resolve_run_config

    return resolve_run_config(preset, overrides, base_model=base_model, train_problems=train_problems,
                              eval_problems=eval_problems, storage_root=storage_root, shards=shards, rounds=rounds)


@component(base_image=TRAIN_IMAGE)
def prepare_base_model(config_yaml: str, train: Input[Dataset], held_out: Input[Dataset], base_model: Output[Model],
                       seed_corpus: Output[Dataset]):
    """The base policy: bootstrapped from scratch for the embedded default (never on a run problem), else the given checkpoint."""
    from rstar_math.orchestration.glue import ref, setup
    from rstar_math.stages.base_model import prepare_base_model

    config, context = setup(config_yaml)
    prepare_base_model(ref(base_model), ref(seed_corpus), config=config, context=context,
                       problems=[ref(train), ref(held_out)])


@component(base_image=CPU_IMAGE)
def prepare_problems(config_yaml: str, train: Output[Dataset], held_out: Output[Dataset]):
    """Training and held-out problem sets: generated (embedded default) or read from the given files."""
    from rstar_math.orchestration.glue import ref, setup
    from rstar_math.stages.intake import prepare_problem_sets

    config, context = setup(config_yaml)
    prepare_problem_sets(config, ref(train), ref(held_out), context=context)


@component(base_image=GPU_IMAGE)
def rollout(
    config_yaml: str,
    round: int,
    shard: int,
    problems: Input[Dataset],
    policy: Input[Model],
    trees: Output[Dataset],
    ppm: Input[Model] = None,
    previous: Input[Dataset] = None,
) -> dict:
    """Batched MCTS over one shard of the training problems; resumes from its checkpoint chunks."""
    from rstar_math.orchestration.glue import checkpoint_uri, num_shards, ref, setup
    from rstar_math.stages.rollout import rollout

    config, context = setup(config_yaml)
    result = rollout(
        ref(problems), ref(policy), ref(trees), config=config, round=round, context=context,
        ppm=ref(ppm) if ppm is not None else None, previous=ref(previous) if previous is not None else None,
        shard=shard, num_shards=num_shards(config),
        checkpoint_uri=checkpoint_uri(config, "rollout", round, ref(problems), ref(policy), shard=shard),
    )
    return result.stats


@component(base_image=CPU_IMAGE)
def verify(config_yaml: str, round: int, trees: Input[Dataset], problems: Input[Dataset],
           verified: Output[Dataset]) -> dict:
    """Re-execute every terminal trajectory in the sandbox, regrade it, rebuild Q values."""
    from dataclasses import asdict

    from rstar_math.orchestration.glue import ref, setup
    from rstar_math.stages.verify import verify

    config, context = setup(config_yaml)
    counts = verify(ref(trees), ref(problems), ref(verified), sandbox=config.sandbox, context=context, round=round)
    return asdict(counts)


@component(base_image=CPU_IMAGE)
def select(
    config_yaml: str,
    round: int,
    verified_shards: Input[list[Dataset]],
    problems: Input[Dataset],
    verified: Output[Dataset],
    sft_data: Output[Dataset],
    ppm_pairs: Output[Dataset],
    metrics: Output[Metrics],
):
    """Merge the verified shards; choose the SFT trajectories and the PPM preference pairs."""
    from rstar_math.orchestration.glue import log_metrics, ref, setup
    from rstar_math.stages.select import merge_verified, select

    config, context = setup(config_yaml)
    merge_verified([ref(s) for s in verified_shards], ref(verified), context=context, round=round)
    result = select([ref(verified)], ref(problems), ref(sft_data), ref(ppm_pairs), config=config.select,
                    context=context, round=round)
    log_metrics(metrics, result)


@component(base_image=TRAIN_IMAGE)
def train_ppm(config_yaml: str, round: int, init_model: Input[Model], ppm_pairs: Input[Dataset],
              ppm: Output[Model], metrics: Output[Metrics]):
    """Train the round's process preference model (pairwise ranking loss) from the search policy."""
    from rstar_math.orchestration.glue import checkpoint_uri, log_metrics, ref, setup
    from rstar_math.stages.train import train_ppm

    config, context = setup(config_yaml, alone=True)
    result = train_ppm(ref(init_model), ref(ppm_pairs), ref(ppm), config=config, context=context, round=round,
                       checkpoint_uri=checkpoint_uri(config, "train-ppm", round, ref(init_model), ref(ppm_pairs)))
    log_metrics(metrics, result)


@component(base_image=TRAIN_IMAGE)
def train_policy(config_yaml: str, round: int, base_model: Input[Model], sft_data: Input[Dataset],
                 policy: Output[Model], metrics: Output[Metrics]):
    """Fine-tune the base model (not the previous policy) on the round's SFT data."""
    from rstar_math.orchestration.glue import checkpoint_uri, log_metrics, ref, setup
    from rstar_math.stages.train import train_policy

    config, context = setup(config_yaml, alone=True)
    result = train_policy(ref(base_model), ref(sft_data), ref(policy), config=config, context=context, round=round,
                          checkpoint_uri=checkpoint_uri(config, "train-policy", round, ref(base_model), ref(sft_data)))
    log_metrics(metrics, result)


@component(base_image=TRAIN_IMAGE)
def control(
    config_yaml: str,
    round: int,
    kind: str,
    problems: Input[Dataset],
    held_out: Input[Dataset],
    base_model: Input[Model],
    search_policy: Input[Model],
    seed_corpus: Input[Dataset],
    sft_data: Input[Dataset],
    results: Output[Dataset],
    control_data: Output[Dataset],
):
    """A compute-matched control (rejection: outcome-only data from the search policy; continued: seed corpus), of the SFT data's size, trained and evaluated."""
    from rstar_math.orchestration.glue import ref, setup
    from rstar_math.stages.controls import run_control

    config, context = setup(config_yaml)
    run_control(kind, ref(problems), ref(held_out), ref(base_model), ref(search_policy), ref(seed_corpus),
                ref(sft_data), ref(results), ref(control_data), config=config, round=round, context=context)


@component(base_image=TRAIN_IMAGE)
def loop_control(
    config_yaml: str,
    round: int,
    kind: str,
    problems: Input[Dataset],
    held_out: Input[Dataset],
    base_model: Input[Model],
    line_policy: Input[Model],
    sft_data: Input[Dataset],
    results: Output[Dataset],
    control_data: Output[Dataset],
    policy: Output[Model],
):
    """A control with a line of its own (outcome_loop: outcome-only self-training), sampling from its previous round's policy; its policy goes on to the next round."""
    from rstar_math.orchestration.glue import ref, setup
    from rstar_math.stages.controls import run_control

    # Alone in its pod (and under kfp.local): every core, as the trainings (on 2 cores 1.4x the
    # sampling and 1.6x the training of one thread, the sandbox beside it notwithstanding).
    config, context = setup(config_yaml, alone=True)
    run_control(kind, ref(problems), ref(held_out), ref(base_model), ref(line_policy), None, ref(sft_data),
                ref(results), ref(control_data), config=config, round=round, context=context, policy_out=ref(policy))


@component(base_image=GPU_IMAGE)
def evaluate(
    config_yaml: str,
    round: int,
    policy: Input[Model],
    held_out: Input[Dataset],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    ppm: Input[Model] = None,
):
    """Held-out accuracy of the policy by every method: greedy, majority vote, best-of-N and MCTS with the PPM."""
    from rstar_math.orchestration.glue import log_metrics, publish_report, ref, setup
    from rstar_math.stages.evaluate import evaluate

    config, context = setup(config_yaml, alone=True)  # round 0: one task over every problem
    result = evaluate(ref(policy), {"held_out": ref(held_out)}, ref(evaluation), config=config, round=round,
                      context=context, ppm=ref(ppm) if ppm is not None else None)
    log_metrics(metrics, result)
    publish_report(ref(evaluation), report)


@component(base_image=GPU_IMAGE)
def evaluate_shard(
    config_yaml: str,
    round: int,
    shard: int,
    policy: Input[Model],
    held_out: Input[Dataset],
    answers: Output[Dataset],
    ppm: Input[Model] = None,
) -> int:
    """One shard of the held-out problems, answered by every method (merge-evaluation turns the shards into metrics)."""
    from rstar_math.orchestration.glue import num_shards, ref, setup
    from rstar_math.stages.evaluate import evaluate_shard

    config, context = setup(config_yaml)
    return evaluate_shard(ref(policy), {"held_out": ref(held_out)}, ref(answers), config=config, round=round,
                          context=context, shard=shard, num_shards=num_shards(config),
                          ppm=ref(ppm) if ppm is not None else None)


@component(base_image=CPU_IMAGE)
def merge_evaluation(
    config_yaml: str,
    round: int,
    shards: Input[List[Dataset]],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Held-out accuracy per method (with 95% intervals, per source) from the evaluation shards' answers."""
    from rstar_math.orchestration.glue import log_metrics, publish_report, ref, setup
    from rstar_math.stages.evaluate import merge_evaluation

    config, context = setup(config_yaml)
    result = merge_evaluation([ref(s) for s in shards], ref(evaluation), round=round, context=context)
    log_metrics(metrics, result)
    publish_report(ref(evaluation), report)


@component(base_image=CPU_IMAGE)
def round_report(
    config_yaml: str,
    round: int,
    evaluation: Input[Dataset],
    history: Output[Dataset],
    sft_data: Input[Dataset] = None,
    policy: Input[Model] = None,
    ppm: Input[Model] = None,
    controls: Input[List[Dataset]] = None,
    loop_control: Input[Dataset] = None,
    previous_history: Input[Dataset] = None,
):
    """The run's metrics so far plus this round's: accuracy, solved share, PPM accuracy, data sizes, stage times."""
    from rstar_math.orchestration.glue import ref, setup
    from rstar_math.stages.summary import round_report

    config, context = setup(config_yaml)
    optional = {name: ref(a) if a is not None else None for name, a in
                (("sft_data", sft_data), ("policy", policy), ("ppm", ppm), ("previous", previous_history))}
    round_report(round, ref(evaluation), ref(history), context=context,
                 controls=[ref(a) for a in (*(controls or ()), *([loop_control] if loop_control else ()))],
                 **optional)


@component(base_image=CPU_IMAGE)
def summarize(config_yaml: str, history: Input[Dataset], policy: Input[Model], ppm: Input[Model],
              summary: Output[Markdown], report: Output[HTML]) -> str:
    """The run summary: accuracy per round and method, data sizes, stage times, lineage of the final models."""
    from rstar_math.orchestration.glue import publish_summary, ref, setup
    from rstar_math.stages.summary import summarize

    config, context = setup(config_yaml)
    table = summarize(ref(history), ref(policy), ref(ppm), summary_path=summary.path, report_path=report.path,
                      config=config)
    publish_summary(config, summary.path)
    return table


@component(base_image=CPU_IMAGE)
def nightly_intake(config_yaml: str, problem_prefix: str, registry: str, train: Output[Dataset],
                   held_out: Output[Dataset]) -> int:
    """Problem files under the prefix not consumed by an earlier night, deduplicated against every earlier night."""
    from rstar_math.orchestration.glue import ref, setup
    from rstar_math.stages.registry import intake_new_problems

    config, context = setup(config_yaml)
    return intake_new_problems(problem_prefix, registry, ref(train), ref(held_out), config=config, context=context)


@component(base_image=TRAIN_IMAGE)
def registry_start(config_yaml: str, registry: str, base_model: Input[Model], policy: Output[Model],
                   ppm: Output[Model], previous: Output[Dataset]) -> bool:
    """The promoted policy, PPM and verified trees to continue from (the base model on the first night)."""
    from rstar_math.orchestration.glue import ref, setup
    from rstar_math.stages.registry import start_from_registry

    config, context = setup(config_yaml)
    return start_from_registry(registry, ref(base_model), ref(policy), ref(ppm), ref(previous), config=config,
                               context=context)


@component(base_image=CPU_IMAGE)
def promote(config_yaml: str, registry: str, promotion_gate: float, history: Input[Dataset], policy: Input[Model],
            ppm: Input[Model], verified: Input[Dataset], train: Input[Dataset], decision: Output[Dataset]) -> str:
    """Move the registry pointer to tonight's models if held-out accuracy passes the gate; mark the files consumed."""
    from rstar_math.orchestration.glue import ref, setup
    from rstar_math.stages.registry import promote

    config, context = setup(config_yaml)
    result = promote(registry, ref(history), ref(policy), ref(ppm), ref(verified), ref(train), ref(decision),
                     gate=promotion_gate, context=context)
    return ("promoted: " if result.promoted else "not promoted: ") + result.reason


@component(base_image=CPU_IMAGE)
def no_new_problems(problem_prefix: str) -> str:
    """An empty night: nothing new under the prefix, so nothing is trained."""
    return f"no new problem files under {problem_prefix}; nothing to do"


COMPONENTS = {
    "resolve_config": resolve_config,
    "prepare_base_model": prepare_base_model,
    "prepare_problems": prepare_problems,
    "rollout": rollout,
    "verify": verify,
    "select": select,
    "train_ppm": train_ppm,
    "train_policy": train_policy,
    "control": control,
    "loop_control": loop_control,
    "evaluate": evaluate,
    "evaluate_shard": evaluate_shard,
    "merge_evaluation": merge_evaluation,
    "round_report": round_report,
    "summarize": summarize,
    "nightly_intake": nightly_intake,
    "registry_start": registry_start,
    "promote": promote,
    "no_new_problems": no_new_problems,
}
