"""Training data for the compute-matched controls each round is measured against.

  rejection     outcome-only data: the round's search policy samples N whole solutions per
                problem (N = the round's rollout budget, raised until the samples have
                generated about as many tokens as the round's search did), and those with a
                correct final answer are kept, up to `sft_per_problem` distinct solutions per
                problem (data.selection.solution_key), whatever their steps;
  outcome_loop  the same recipe as a loop of its own: round r samples from the line's round
                r-1 policy (the model the run starts from in round 1) instead of the search's,
                so round r's control is what outcome-only self-training, with no tree and no
                PPM, reaches after r rounds at the same cost; its policy goes on to its next
                round (the pipeline carries it like the round's policy);
  continued     more of the seed corpus the base model was pre-trained on.

All are cut to exactly as many examples as the round's MCTS-selected SFT data (a
seeded sample), and all are trained from the base model with the same settings,
so the only difference from the round's policy is where the data came from; the
sampled controls also spend what the search spent on generation, so a wider
search (more candidates per expansion) does not win by sampling more. Round 1's
rejection and outcome_loop controls sample from the same model, so they are the
same control there. A control's data is kept as an artefact, so the comparison can
be audited example by example; its policy is scratch, except outcome_loop's.
"""

from __future__ import annotations

import dataclasses
import random

import pyarrow as pa

from rstar_math.artifacts import ArtifactRef, write_artifact
from rstar_math.config import CONTROLS, LOOP_CONTROLS, RunConfig
from rstar_math.data.schemas import SFT_DATA, write_table
from rstar_math.data.selection import solution_key
from rstar_math.grading import answers_match
from rstar_math.lineage import RunContext
from rstar_math.search.mcts import Problem, SearchStats
from rstar_math.search.sampling import SamplingSettings, sample_trajectories
from rstar_math.stages.io import read_artifact_json, read_artifact_table, read_problem_set
from rstar_math.stages.rollout import select_shard
from rstar_math.stages.select import REPORT_FILE as SELECT_REPORT
from rstar_math.steps import render_prompt

DATA_FILE = "sft_data.parquet"


def _write_data(out: str | ArtifactRef, rows: list[dict], *, control: str, round: int, context: RunContext,
                inputs: dict, params: dict) -> int:
    """One control's training data as an sft_data artefact; returns its number of examples."""
    with write_artifact(out, kind="sft_data", stage=f"control_{control}", context=context, round=round,
                        inputs=inputs, params=params) as out_dir:
        write_table(pa.Table.from_pylist(rows, schema=SFT_DATA.schema), out_dir / DATA_FILE, SFT_DATA)
    return len(rows)


def _sized(rows: list[dict], size: int, seed: int) -> list[dict]:
    if len(rows) <= size:
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), size))
    return [rows[i] for i in picked]


def rejection_sampled_data(
    problems: str | ArtifactRef,
    policy: str | ArtifactRef,
    match: str | ArtifactRef,
    out: str | ArtifactRef,
    *,
    config: RunConfig,
    round: int,
    context: RunContext,
    control: str = "rejection",
    engine=None,
    executor=None,
) -> tuple[int, int]:
    """Outcome-only SFT data sampled from `policy`, of the same size as `match`; returns its
    number of examples and the tokens its sampling generated (to set beside the search's)."""
    from rstar_math.models.factory import make_engine
    from rstar_math.sandbox import ExecutorPool

    target = read_artifact_table(match, SFT_DATA).num_rows
    rows = select_shard(read_problem_set(problems), 0, 1, config.data.max_train_problems)
    todo = [Problem(r["problem_id"], r["question"], r["answer"], 0) for r in rows]
    sources = {r["problem_id"]: r["source"] for r in rows}
    search = config.search
    settings = SamplingSettings(n=search.rollouts_for(round), temperature=search.temperature, top_p=search.top_p,
                                max_depth=search.max_depth, max_consecutive_errors=search.max_consecutive_errors,
                                max_step_tokens=search.max_step_tokens)
    policy_ref = ArtifactRef.of(policy)
    engine = engine or make_engine(policy_ref.path or policy_ref.uri, config.model, seed=config.seed + 31 * round)
    own_pool = executor is None
    executor = executor or ExecutorPool.from_config(config.sandbox)
    stats = SearchStats()
    budget = search_tokens(match)
    try:
        samples = sample_trajectories(todo, engine, executor, settings, stats=stats)
        total = matched_samples(settings.n, stats.generated_tokens, budget)
        if total > settings.n:
            more = sample_trajectories(todo, engine, executor, dataclasses.replace(settings, n=total - settings.n),
                                       stats=stats)
            for problem_id, trajectories in more.items():
                samples[problem_id] += trajectories
    finally:
        if own_pool:
            executor.close()
    kept = []
    for problem in todo:
        correct = [t for t in samples[problem.problem_id] if t.answer is not None and answers_match(t.answer, problem.answer)]
        seen: set[tuple[str, ...]] = set()
        for trajectory in correct:  # distinct solutions, by the same rule as the search's selection
            key = solution_key(trajectory.steps)
            if key in seen:
                continue
            seen.add(key)
            kept.append({"problem_id": problem.problem_id, "prompt": render_prompt(trajectory.question),
                         "completion": trajectory.completion, "avg_q": 0.0, "source": sources[problem.problem_id]})
            if len(seen) >= config.select.sft_per_problem:
                break
    size = _write_data(out, _sized(kept, target, config.seed + round), control=control, round=round,
                       context=context, inputs={"problems": problems, "policy": policy, "matched_to": match},
                       params={"samples_per_problem": total, "target": target,
                               "generated_tokens": stats.generated_tokens, "search_tokens": budget})
    return size, stats.generated_tokens


def matched_samples(n: int, spent: int, budget: int | None) -> int:
    """Whole samples per problem that generate about `budget` tokens, given that `n` of them
    generated `spent` (never fewer than `n`; `n` without a budget)."""
    if not budget or not spent:
        return n
    return max(n, int(n * budget / spent + 0.5))


def search_tokens(match: str | ArtifactRef) -> int | None:
    """Tokens the round's search generated, from the selected data's report (None where the data
    did not come from a search, e.g. a hand-made artefact)."""
    tokens = read_artifact_json(match, SELECT_REPORT).get("verify", {}).get("search", {}).get("generated_tokens")
    return int(tokens) if tokens else None


def corpus_sample(
    corpus: str | ArtifactRef,
    match: str | ArtifactRef,
    out: str | ArtifactRef,
    *,
    seed: int,
    round: int,
    context: RunContext,
) -> int:
    """A seeded sample of the seed corpus, as many examples as `match`."""
    target = read_artifact_table(match, SFT_DATA).num_rows
    rows = _sized(read_artifact_table(corpus, SFT_DATA).to_pylist(), target, seed + round)
    return _write_data(out, rows, control="continued", round=round, context=context,
                       inputs={"corpus": corpus, "matched_to": match}, params={"target": target})


def run_control(
    kind: str,
    problems: str | ArtifactRef,
    held_out: str | ArtifactRef,
    base_model: str | ArtifactRef,
    sampling_policy: str | ArtifactRef,
    seed_corpus: str | ArtifactRef | None,
    sft_data: str | ArtifactRef,
    out: str | ArtifactRef,
    data_out: str | ArtifactRef,
    *,
    config: RunConfig,
    round: int,
    context: RunContext,
    policy_out: str | ArtifactRef | None = None,
) -> list:
    """Build, train (from the base model, like the round's policy) and evaluate (greedy) one control.

    `sampling_policy` is what the sampled controls sample from: the round's search policy for
    `rejection`, the line's previous policy for `outcome_loop`. A kind the config does not ask
    for (or `continued` without a seed corpus) writes no rows and empty data. Metric rows and
    the per-problem answers (for paired comparisons with the round's policy) are named
    `control_<kind>`; the training data goes to `data_out`; the policy is scratch, except for a
    kind in LOOP_CONTROLS, whose policy goes to `policy_out` (a model artefact marked untrained
    when the config does not ask for the kind).
    """
    import tempfile
    from pathlib import Path

    from rstar_math.data.schemas import METRICS
    from rstar_math.evaluation.metrics import MetricRow
    from rstar_math.stages.evaluate import METRICS_FILE, evaluate, metrics_table, read_answers, write_answers
    from rstar_math.stages.train import train_policy

    if kind not in CONTROLS:
        raise ValueError(f"unknown control {kind!r} (known: {', '.join(CONTROLS)})")
    if (kind in LOOP_CONTROLS) != (policy_out is not None):
        raise ValueError(f"control {kind!r}: a policy_out is needed by, and only by, {', '.join(LOOP_CONTROLS)}")
    rows: list[MetricRow] = []
    answers: list[dict] = []
    wanted = kind in config.evaluate.controls
    if kind == "continued" and wanted and (seed_corpus is None or
                                           read_artifact_table(seed_corpus, SFT_DATA).num_rows == 0):
        wanted = False  # an external base model comes without its pre-training corpus
    if wanted:
        greedy_only = dataclasses.replace(config, evaluate=dataclasses.replace(config.evaluate, methods=("greedy",)))
        if kind == "continued":
            size = corpus_sample(seed_corpus, sft_data, data_out, seed=config.seed, round=round, context=context)
        else:
            size, tokens = rejection_sampled_data(problems, sampling_policy, sft_data, data_out, config=config,
                                                  round=round, context=context, control=kind)
            rows.append(MetricRow(context.run_id, round, "train", f"control_{kind}", "generated_tokens", float(tokens)))
        with tempfile.TemporaryDirectory(prefix=f"rstar-control-{kind}-") as tmp:
            policy = policy_out if policy_out is not None else str(Path(tmp) / "policy")
            evaluation = str(Path(tmp) / "eval")
            train_policy(base_model, data_out, policy, config=config, context=context, round=round,
                         stage=f"control_{kind}")
            result = evaluate(policy, {"held_out": held_out}, evaluation, config=greedy_only, round=round,
                              context=context)
            rows += [dataclasses.replace(r, method=f"control_{kind}") for r in result.rows]
            answers = [{**a, "method": f"control_{kind}"} for a in read_answers(Path(evaluation))]
            rows.append(MetricRow(context.run_id, round, "train", f"control_{kind}", "sft_examples", float(size)))
    else:
        _write_data(data_out, [], control=kind, round=round, context=context, inputs={"matched_to": sft_data},
                    params={"trained": False})
        if policy_out is not None:
            with write_artifact(policy_out, kind="policy", stage=f"control_{kind}", context=context, round=round,
                                params={"trained": False}):
                pass
    inputs = {"problems": problems, "held_out": held_out, "base_model": base_model,
              "sampling_policy": sampling_policy, "seed_corpus": seed_corpus, "sft_data": sft_data}
    with write_artifact(out, kind="metrics", stage=f"control_{kind}", context=context, round=round,
                        inputs={name: ref for name, ref in inputs.items() if ref is not None},
                        params={"control": kind, "trained": wanted}) as out_dir:
        write_table(metrics_table(rows), out_dir / METRICS_FILE, METRICS)
        write_answers(out_dir, answers)
    return rows
