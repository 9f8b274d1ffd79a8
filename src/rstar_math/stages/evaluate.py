"""Evaluate stage: a policy (and PPM) on held-out benchmarks, by every answer-selection method.

    result = evaluate(policy_uri, {"held_out": problems_uri, "gsm8k": "s3://b/gsm8k.jsonl"}, out_uri,
                      config=cfg, round=2, context=ctx, ppm=ppm_uri)

Methods (config.evaluate.methods; N from config.evaluate.n):
  greedy         one trajectory at temperature 0 (pass@1)
  majority_vote  N sampled trajectories, the most frequent answer
  best_of_n_ppm  the same N trajectories, the one the PPM scores highest (its final-step score)
  mcts_ppm       test-time MCTS with N rollouts guided by the PPM, whose score is also the
                 terminal reward (the answer is unknown); answer of the best-scored
                 terminal, and (reported as mcts_ppm_vote) the PPM-weighted vote
pass_at_n (any of the N samples correct) is reported beside them as an upper bound.
Methods that need a PPM are skipped when none is given (the base model in round 0).

Writes one artefact: metrics.parquet (METRICS schema: accuracy with its 95% Wilson
interval, tokens per problem; where a benchmark mixes sources, e.g. generator modules,
also the accuracy per source, as benchmark metrics.per_source(benchmark, source)), answers.jsonl (every
problem's chosen answer per method, for audits) and report.html (plots and tables).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping

import pyarrow as pa

from rstar_math.artifacts import ArtifactRef, write_artifact
from rstar_math.config import RunConfig
from rstar_math.data.schemas import METRICS, write_table
from rstar_math.evaluation.answers import best_scored, majority_vote, weighted_vote
from rstar_math.evaluation.metrics import MetricRow, accuracy_row, per_source
from rstar_math.evaluation.report import render_report
from rstar_math.grading import answers_match
from rstar_math.lineage import RunContext
from rstar_math.search.mcts import Problem, SearchStats, run_search
from rstar_math.search.sampling import SamplingSettings, sample_trajectories
from rstar_math.stages.io import read_problem_set
from rstar_math.stages.rollout import search_settings

METRICS_FILE = "metrics.parquet"
ANSWERS_FILE = "answers.jsonl"
REPORT_FILE = "report.html"
PPM_METHODS = ("best_of_n_ppm", "mcts_ppm")


@dataclass(frozen=True)
class EvalResult:
    rows: tuple[MetricRow, ...]

    def accuracy(self, benchmark: str, method: str, n: int | None = None) -> float:
        for row in self.rows:
            if (row.benchmark, row.method, row.metric) == (benchmark, method, "accuracy") and (n is None or row.n == n):
                return row.value
        raise KeyError(f"no accuracy for {benchmark}/{method}/{n}")


@dataclass
class _Recorder:
    """Collects per-problem outcomes and turns them into metric rows."""

    run_id: str
    round: int
    benchmark: str
    problems: list[Problem]
    sources: Mapping[str, str]
    """problem_id -> source; accuracy is also reported per source when there are several."""
    rows: list[MetricRow] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)

    def record(self, method: str, n: int | None, chosen: dict[str, str | None], tokens: int) -> None:
        correct = []
        by_source: dict[str, list[bool]] = defaultdict(list)
        for problem in self.problems:
            answer = chosen.get(problem.problem_id)
            ok = answer is not None and answers_match(answer, problem.answer)
            correct.append(ok)
            if problem.problem_id in self.sources:
                by_source[self.sources[problem.problem_id]].append(ok)
            self.answers.append({"benchmark": self.benchmark, "problem_id": problem.problem_id, "method": method,
                                 "n": n, "answer": answer, "correct": ok})
        self.rows.append(accuracy_row(self.run_id, self.round, self.benchmark, method, n, correct))
        if len(by_source) > 1:
            for source, oks in sorted(by_source.items()):
                self.rows.append(accuracy_row(self.run_id, self.round, per_source(self.benchmark, source), method, n, oks))
        self.rows.append(MetricRow(self.run_id, self.round, self.benchmark, method, "tokens_per_problem",
                                   tokens / max(1, len(self.problems)), n, count=len(self.problems)))


def evaluate_problems(
    problems: list[Problem],
    benchmark: str,
    *,
    engine,
    executor,
    value_model,
    config: RunConfig,
    round: int,
    run_id: str,
    sources: Mapping[str, str] | None = None,
) -> tuple[list[MetricRow], list[dict]]:
    """Every configured method on one benchmark; returns metric rows and per-problem answers.
    `sources` (problem_id -> source) adds accuracy rows per source."""
    methods = [m for m in config.evaluate.methods if value_model is not None or m not in PPM_METHODS]
    ns = sorted(set(config.evaluate.n))
    recorder = _Recorder(run_id, round, benchmark, problems, sources or {})
    search = config.search
    base = SamplingSettings(max_depth=search.max_depth, max_consecutive_errors=search.max_consecutive_errors,
                            max_step_tokens=search.max_step_tokens)

    if "greedy" in methods:
        stats = SearchStats()
        greedy = sample_trajectories(problems, engine, executor, replace(base, n=1, temperature=0.0), stats=stats)
        recorder.record("greedy", None, {pid: ts[0].answer for pid, ts in greedy.items()}, stats.generated_tokens)

    if ns and {"majority_vote", "best_of_n_ppm"} & set(methods):
        samples = sample_trajectories(
            problems, engine, executor, replace(base, n=max(ns), temperature=config.evaluate.temperature, top_p=search.top_p)
        )
        flat = [t for ts in samples.values() for t in ts]
        scores = dict(zip(map(id, flat), value_model.score([t.text for t in flat]))) if "best_of_n_ppm" in methods else {}
        for n in ns:
            firsts = {pid: ts[:n] for pid, ts in samples.items()}
            tokens = sum(t.tokens for ts in firsts.values() for t in ts)
            recorder.record("pass_at_n", n, {pid: _any_correct(ts, p) for (pid, ts), p in zip(firsts.items(), problems)},
                            tokens)
            if "majority_vote" in methods:
                recorder.record("majority_vote", n, {pid: majority_vote([t.answer for t in ts]) for pid, ts in firsts.items()},
                                tokens)
            if "best_of_n_ppm" in methods:
                chosen = {pid: best_scored([(t.answer, scores[id(t)]) for t in ts]) for pid, ts in firsts.items()}
                recorder.record("best_of_n_ppm", n, chosen, tokens)

    if "mcts_ppm" in methods:
        settings = replace(search_settings(config, round, use_ppm=True), terminal_reward="ppm",
                           temperature=config.evaluate.temperature)
        for n in ns:
            stats = SearchStats()
            budgeted = [replace(p, rollouts=n) for p in problems]
            best, voted = {}, {}
            for tree in run_search(budgeted, engine, executor, settings, ppm=value_model, stats=stats):
                candidates = [(tree.nodes[i].answer, tree.nodes[i].ppm_score) for i in tree.terminals()
                              if tree.nodes[i].answer is not None]
                best[tree.problem_id] = best_scored(candidates)
                voted[tree.problem_id] = weighted_vote(candidates)
            recorder.record("mcts_ppm", n, best, stats.generated_tokens)
            recorder.record("mcts_ppm_vote", n, voted, stats.generated_tokens)
    return recorder.rows, recorder.answers


def _any_correct(trajectories, problem: Problem) -> str | None:
    """The first correct answer among the samples (for pass@N), else the first answer."""
    answers = [t.answer for t in trajectories if t.answer is not None]
    for answer in answers:
        if answers_match(answer, problem.answer):
            return answer
    return answers[0] if answers else None


def metrics_table(rows: list[MetricRow]) -> pa.Table:
    return pa.Table.from_pylist([asdict(r) for r in rows], schema=METRICS.schema)


def evaluate(
    policy: str | ArtifactRef,
    benchmarks: Mapping[str, str | ArtifactRef],
    out: str | ArtifactRef,
    *,
    config: RunConfig,
    round: int,
    context: RunContext,
    ppm: str | ArtifactRef | None = None,
    engine=None,
    executor=None,
    value_model=None,
) -> EvalResult:
    """Evaluate one policy on every benchmark; write metrics, answers and the HTML report."""
    from rstar_math.models.factory import make_engine, make_value_model
    from rstar_math.sandbox import ExecutorPool

    policy_ref = ArtifactRef.of(policy)
    engine = engine or make_engine(policy_ref.path or policy_ref.uri, config.model, seed=config.seed + 7919 * round)
    if ppm is not None and value_model is None:
        ppm_ref = ArtifactRef.of(ppm)
        value_model = make_value_model(ppm_ref.path or ppm_ref.uri, config.model)
    own_pool = executor is None
    executor = executor or ExecutorPool.from_config(config.sandbox)
    rows: list[MetricRow] = []
    answers: list[dict] = []
    try:
        for name, source in benchmarks.items():
            table = read_problem_set(source)
            if config.evaluate.max_problems:
                table = table.slice(0, config.evaluate.max_problems)
            records = table.to_pylist()
            problems = [Problem(r["problem_id"], r["question"], r["answer"], 0) for r in records]
            more_rows, more_answers = evaluate_problems(problems, name, engine=engine, executor=executor,
                                                        value_model=value_model, config=config, round=round,
                                                        run_id=context.run_id,
                                                        sources={r["problem_id"]: r["source"] for r in records})
            rows += more_rows
            answers += more_answers
    finally:
        if own_pool:
            executor.close()
    inputs = {"policy": policy, **{f"benchmark-{name}": source for name, source in benchmarks.items()}}
    if ppm is not None:
        inputs["ppm"] = ppm
    with write_artifact(out, kind="metrics", stage="evaluate", context=context, round=round, inputs=inputs) as out_dir:
        write_table(metrics_table(rows), out_dir / METRICS_FILE, METRICS)
        (out_dir / ANSWERS_FILE).write_text("".join(json.dumps(a) + "\n" for a in answers))
        (out_dir / REPORT_FILE).write_text(render_report(metrics_table(rows), title=f"Evaluation, round {round}"))
    return EvalResult(tuple(rows))
