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

The pipeline fans evaluation out like the search: `evaluate_shard` answers one shard of
every benchmark's problems (answers.jsonl and tokens.json), and `merge_evaluation` turns the
shards into the artefact above. Every metric follows from the per-problem answers, so the
merged metrics equal those of one `evaluate` over all problems.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow as pa

from rstar_math.artifacts import ArtifactRef, open_artifact, write_artifact
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
from rstar_math.stages.rollout import search_settings, shard_of

METRICS_FILE = "metrics.parquet"
ANSWERS_FILE = "answers.jsonl"
REPORT_FILE = "report.html"
TOKENS_FILE = "tokens.json"
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
class Outcomes:
    """What an evaluation found, problem by problem: the metrics are computed from this alone,
    so the outcomes of shards add up to those of the whole benchmark."""

    answers: list[dict] = field(default_factory=list)
    """One per problem, method and N: benchmark, problem_id, source, method, n, answer, correct."""
    tokens: list[dict] = field(default_factory=list)
    """Generated tokens per benchmark, method and N, with the number of problems they were spent on."""

    def __iadd__(self, other: "Outcomes") -> "Outcomes":
        self.answers += other.answers
        self.tokens += other.tokens
        return self

    def rows(self, run_id: str, round: int) -> list[MetricRow]:
        """Accuracy (with its interval, and per source where a benchmark has several) and tokens per problem."""
        groups: dict[tuple, list[dict]] = defaultdict(list)  # insertion order: methods as evaluated
        for a in self.answers:
            groups[(a["benchmark"], a["method"], a["n"])].append(a)
        spent: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
        for t in self.tokens:
            key = (t["benchmark"], t["method"], t["n"])
            spent[key][0] += t["tokens"]
            spent[key][1] += t["problems"]
        rows = []
        for (benchmark, method, n), answers in groups.items():
            rows.append(accuracy_row(run_id, round, benchmark, method, n, [a["correct"] for a in answers]))
            by_source: dict[str, list[bool]] = defaultdict(list)
            for a in answers:
                if a.get("source"):
                    by_source[a["source"]].append(a["correct"])
            if len(by_source) > 1:
                for source, oks in sorted(by_source.items()):
                    rows.append(accuracy_row(run_id, round, per_source(benchmark, source), method, n, oks))
            tokens, problems = spent[(benchmark, method, n)]
            rows.append(MetricRow(run_id, round, benchmark, method, "tokens_per_problem", tokens / max(1, problems), n,
                                  count=problems))
        return rows


@dataclass
class _Recorder:
    """Grades each method's chosen answers into Outcomes."""

    benchmark: str
    problems: list[Problem]
    sources: Mapping[str, str]
    """problem_id -> source; accuracy is also reported per source when there are several."""
    outcomes: Outcomes = field(default_factory=Outcomes)

    def record(self, method: str, n: int | None, chosen: dict[str, str | None], tokens: int) -> None:
        for problem in self.problems:
            answer = chosen.get(problem.problem_id)
            ok = answer is not None and answers_match(answer, problem.answer)
            self.outcomes.answers.append({"benchmark": self.benchmark, "problem_id": problem.problem_id,
                                          "source": self.sources.get(problem.problem_id), "method": method, "n": n,
                                          "answer": answer, "correct": ok})
        self.outcomes.tokens.append({"benchmark": self.benchmark, "method": method, "n": n, "tokens": tokens,
                                     "problems": len(self.problems)})


def evaluate_problems(
    problems: list[Problem],
    benchmark: str,
    *,
    engine,
    executor,
    value_model,
    config: RunConfig,
    round: int,
    sources: Mapping[str, str] | None = None,
) -> Outcomes:
    """Every configured method on one benchmark's problems. `sources` (problem_id -> source)
    adds accuracy rows per source."""
    methods = [m for m in config.evaluate.methods if value_model is not None or m not in PPM_METHODS]
    ns = sorted(set(config.evaluate.n))
    recorder = _Recorder(benchmark, problems, sources or {})
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
        # The later rounds' width in every round (and round 0), so the column measures policies, not widths.
        settings = replace(search_settings(config, candidates=config.search.candidates[-1], use_ppm=True),
                           terminal_reward="ppm", temperature=config.evaluate.temperature)
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
    return recorder.outcomes


def _any_correct(trajectories, problem: Problem) -> str | None:
    """The first correct answer among the samples (for pass@N), else the first answer."""
    answers = [t.answer for t in trajectories if t.answer is not None]
    for answer in answers:
        if answers_match(answer, problem.answer):
            return answer
    return answers[0] if answers else None


def metrics_table(rows: list[MetricRow]) -> pa.Table:
    return pa.Table.from_pylist([asdict(r) for r in rows], schema=METRICS.schema)


def _answer(
    policy: str | ArtifactRef,
    benchmarks: Mapping[str, str | ArtifactRef],
    *,
    config: RunConfig,
    round: int,
    ppm: str | ArtifactRef | None,
    shard: int,
    num_shards: int,
    engine,
    executor,
    value_model,
) -> Outcomes:
    """Every method on one shard of every benchmark (the first evaluate.max_problems of each, if set)."""
    from rstar_math.models.factory import make_engine, make_value_model
    from rstar_math.sandbox import ExecutorPool

    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    policy_ref = ArtifactRef.of(policy)
    engine = engine or make_engine(policy_ref.path or policy_ref.uri, config.model,
                                   seed=config.seed + 7919 * round + shard)
    if ppm is not None and value_model is None:
        ppm_ref = ArtifactRef.of(ppm)
        value_model = make_value_model(ppm_ref.path or ppm_ref.uri, config.model)
    own_pool = executor is None
    executor = executor or ExecutorPool.from_config(config.sandbox)
    outcomes = Outcomes()
    try:
        for name, source in benchmarks.items():
            table = read_problem_set(source)
            if config.evaluate.max_problems:
                table = table.slice(0, config.evaluate.max_problems)
            records = [r for r in table.to_pylist() if shard_of(r["problem_id"], num_shards) == shard]
            problems = [Problem(r["problem_id"], r["question"], r["answer"], 0) for r in records]
            outcomes += evaluate_problems(problems, name, engine=engine, executor=executor, value_model=value_model,
                                          config=config, round=round,
                                          sources={r["problem_id"]: r["source"] for r in records})
    finally:
        if own_pool:
            executor.close()
    return outcomes


def write_answers(directory: Path, answers: Sequence[dict]) -> None:
    """Per-problem answers, one JSON object a line (ANSWERS_FILE)."""
    (directory / ANSWERS_FILE).write_text("".join(json.dumps(a) + "\n" for a in answers))


def read_answers(directory: Path) -> list[dict]:
    """The answers write_answers wrote to `directory`."""
    return [json.loads(line) for line in (directory / ANSWERS_FILE).read_text().splitlines() if line]


def _inputs(policy, benchmarks: Mapping[str, str | ArtifactRef], ppm) -> dict:
    inputs = {"policy": policy, **{f"benchmark-{name}": source for name, source in benchmarks.items()}}
    if ppm is not None:
        inputs["ppm"] = ppm
    return inputs


def _write_evaluation(out: str | ArtifactRef, outcomes: Outcomes, *, round: int, context: RunContext,
                      inputs: dict) -> EvalResult:
    rows = outcomes.rows(context.run_id, round)
    with write_artifact(out, kind="metrics", stage="evaluate", context=context, round=round, inputs=inputs) as out_dir:
        write_table(metrics_table(rows), out_dir / METRICS_FILE, METRICS)
        write_answers(out_dir, outcomes.answers)
        (out_dir / REPORT_FILE).write_text(render_report(metrics_table(rows), title=f"Evaluation, round {round}"))
    return EvalResult(tuple(rows))


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
    """Evaluate one policy on every benchmark in this process; write metrics, answers and the HTML report."""
    outcomes = _answer(policy, benchmarks, config=config, round=round, ppm=ppm, shard=0, num_shards=1, engine=engine,
                       executor=executor, value_model=value_model)
    return _write_evaluation(out, outcomes, round=round, context=context, inputs=_inputs(policy, benchmarks, ppm))


def evaluate_shard(
    policy: str | ArtifactRef,
    benchmarks: Mapping[str, str | ArtifactRef],
    out: str | ArtifactRef,
    *,
    config: RunConfig,
    round: int,
    context: RunContext,
    shard: int,
    num_shards: int,
    ppm: str | ArtifactRef | None = None,
    engine=None,
    executor=None,
    value_model=None,
) -> int:
    """Answer one shard of every benchmark (problems by rollout.shard_of); write its answers and
    token counts for merge_evaluation. Returns the number of answers."""
    outcomes = _answer(policy, benchmarks, config=config, round=round, ppm=ppm, shard=shard, num_shards=num_shards,
                       engine=engine, executor=executor, value_model=value_model)
    with write_artifact(out, kind="evaluation_shard", stage="evaluate", context=context, round=round,
                        inputs=_inputs(policy, benchmarks, ppm),
                        params={"shard": shard, "num_shards": num_shards}) as out_dir:
        write_answers(out_dir, outcomes.answers)
        (out_dir / TOKENS_FILE).write_text(json.dumps(outcomes.tokens, indent=1))
    return len(outcomes.answers)


def merge_evaluation(shards: Sequence[str | ArtifactRef], out: str | ArtifactRef, *, round: int,
                     context: RunContext) -> EvalResult:
    """The evaluation artefact (metrics, answers, report) of every shard's answers together."""
    outcomes = Outcomes()
    for shard in shards:
        with open_artifact(shard) as (path, _):
            outcomes += Outcomes(read_answers(path), json.loads((path / TOKENS_FILE).read_text()))
    return _write_evaluation(out, outcomes, round=round, context=context,
                             inputs={f"shard-{i}": s for i, s in enumerate(shards)})
