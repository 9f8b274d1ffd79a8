"""Rollout stage: batched MCTS over one shard of problems with the round's policy (and PPM).

    result = rollout(problems_uri, policy_uri, out_uri, config=cfg, round=3, context=ctx,
                     ppm=ppm_uri, previous=round2_verified_uri, shard=0, num_shards=8,
                     checkpoint_uri="s3://bucket/runs/r1/checkpoints/round-3/rollout-0")

Budgets come from the config: `search.rollouts` for the round, and `search.hard_rollouts`
for problems that the previous round's verified trees left unsolved. Rounds from
`search.ppm_from_round` on seed new nodes with the PPM (when one is given).

Resumable: every `chunk_size` finished trees are written to `checkpoint_uri` as a
Parquet chunk. A rerun of the same shard (a retried pod) reads the chunks, skips
their problems, and assembles the final artefact from old and new chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from rstar_math.artifacts import ArtifactRef, write_artifact
from rstar_math.config import RunConfig
from rstar_math.data.schemas import TREES, VERIFIED_TREES, validate, write_table
from rstar_math.lineage import RunContext
from rstar_math.search.mcts import Problem, SearchSettings, SearchStats, run_search
from rstar_math.search.tree import trees_table
from rstar_math.stages.io import read_artifact_table, read_problem_set
from rstar_math.store import join, local_copy, store_for

log = logging.getLogger(__name__)

TREES_FILE = "trees.parquet"
STATS_FILE = "rollout_stats.json"


@dataclass(frozen=True)
class RolloutResult:
    problems: int
    solved: int
    resumed_problems: int
    """Problems whose trees came from checkpoint chunks of an earlier, interrupted attempt."""
    stats: dict


def shard_of(problem_id: str, num_shards: int) -> int:
    """Stable shard assignment: the same problem lands in the same shard in every round and run."""
    return int(hashlib.sha256(problem_id.encode()).hexdigest()[:8], 16) % num_shards


def select_shard(problems: pa.Table, shard: int, num_shards: int, max_problems: int = 0) -> list[dict]:
    rows = sorted(problems.to_pylist(), key=lambda r: hashlib.sha256(r["problem_id"].encode()).hexdigest())
    if max_problems:
        rows = rows[:max_problems]
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    return [r for r in rows if shard_of(r["problem_id"], num_shards) == shard]


def unsolved_problems(previous: str | ArtifactRef) -> set[str]:
    """Problems present in earlier verified trees with no correct terminal."""
    table = read_artifact_table(previous, VERIFIED_TREES).select(["problem_id", "verdict"]).to_pylist()
    seen, solved = set(), set()
    for row in table:
        seen.add(row["problem_id"])
        if row["verdict"] == "correct":
            solved.add(row["problem_id"])
    return seen - solved


def ppm_is_trained(ppm: str | ArtifactRef) -> bool:
    """False for a PPM whose head was never trained (a round without pairs, or the first night)."""
    ref = ArtifactRef.of(ppm)
    result_uri = join(ref.path or ref.uri, "training_result.json")
    store = store_for(result_uri)
    if not store.exists(result_uri):
        return True
    return json.loads(store.read_bytes(result_uri)).get("steps", 0) > 0


def search_settings(config: RunConfig, *, candidates: int, use_ppm: bool) -> SearchSettings:
    s = config.search
    return SearchSettings(
        candidates=candidates,
        max_depth=s.max_depth,
        max_consecutive_errors=s.max_consecutive_errors,
        c_uct=s.c_uct,
        temperature=s.temperature,
        top_p=s.top_p,
        max_step_tokens=s.max_step_tokens,
        time_limit_s=s.time_limit_s,
        trees_in_flight=s.trees_in_flight,
        use_ppm=use_ppm,
    )


class _Chunks:
    """Finished trees checkpointed as numbered Parquet chunks under a URI (local or s3://)."""

    def __init__(self, uri: str | None):
        self.uri = uri
        self.store = store_for(uri) if uri else None

    def load(self) -> tuple[list[pa.Table], dict]:
        if not self.store:
            return [], {}
        tables, stats = [], {}
        for name in self.store.list_files(self.uri):
            if not name.endswith(".parquet"):
                continue
            with local_copy(join(self.uri, name)) as path:
                tables.append(validate(pq.read_table(path), TREES, source=join(self.uri, name)))
            stats_name = name.replace(".parquet", ".json")
            chunk_stats = json.loads(self.store.read_bytes(join(self.uri, stats_name)))
            for key, value in chunk_stats.items():
                stats[key] = stats.get(key, 0) + value
        return tables, stats

    def save(self, number: int, table: pa.Table, stats: dict) -> None:
        if not self.store:
            return
        import io

        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        # The stats file first: a chunk counts only once its Parquet file exists.
        self.store.write_bytes(join(self.uri, f"chunk-{number:05d}.json"), json.dumps(stats).encode())
        self.store.write_bytes(join(self.uri, f"chunk-{number:05d}.parquet"), buffer.getvalue())


def rollout(
    problems: str | ArtifactRef,
    policy: str | ArtifactRef,
    out: str | ArtifactRef,
    *,
    config: RunConfig,
    round: int,
    context: RunContext,
    ppm: str | ArtifactRef | None = None,
    previous: str | ArtifactRef | None = None,
    shard: int = 0,
    num_shards: int = 1,
    checkpoint_uri: str | None = None,
    chunk_size: int = 32,
    engine=None,
    executor=None,
    value_model=None,
) -> RolloutResult:
    """Search one shard; write its trees artefact (with per-shard statistics)."""
    from rstar_math.models.factory import make_engine, make_value_model
    from rstar_math.sandbox import ExecutorPool

    policy_ref = ArtifactRef.of(policy)
    rows = select_shard(read_problem_set(problems), shard, num_shards, config.data.max_train_problems)
    hard = unsolved_problems(previous) if previous is not None else set()
    budget, hard_budget = config.search.rollouts_for(round), config.search.hard_rollouts_for(round)

    chunks = _Chunks(checkpoint_uri)
    done_tables, stats_so_far = chunks.load()
    done = {pid for t in done_tables for pid in t.column("problem_id").to_pylist()}
    todo = [
        Problem(r["problem_id"], r["question"], r["answer"], hard_budget if r["problem_id"] in hard else budget)
        for r in rows
        if r["problem_id"] not in done
    ]
    if done:
        log.info("resuming shard %d: %d problems already searched, %d to go", shard, len(done), len(todo))

    use_ppm = ppm is not None and round >= config.search.ppm_from_round and ppm_is_trained(ppm)
    settings = search_settings(config, candidates=config.search.candidates_for(round), use_ppm=use_ppm)
    stats = SearchStats()
    new_tables: list[pa.Table] = []
    if todo:
        engine = engine or make_engine(policy_ref.path or policy_ref.uri, config.model, seed=config.seed + 1000 * round + shard)
        if use_ppm and value_model is None:
            ppm_ref = ArtifactRef.of(ppm)
            value_model = make_value_model(ppm_ref.path or ppm_ref.uri, config.model)
        own_pool = executor is None
        executor = executor or ExecutorPool.from_config(config.sandbox)
        try:
            pending = []
            reported = SearchStats()
            for tree in run_search(todo, engine, executor, settings, ppm=value_model if use_ppm else None, stats=stats):
                pending.append(tree)
                if len(pending) >= chunk_size:
                    new_tables.append(_checkpoint(chunks, len(done_tables) + len(new_tables), pending, stats, reported))
                    pending = []
            if pending:
                new_tables.append(_checkpoint(chunks, len(done_tables) + len(new_tables), pending, stats, reported))
        finally:
            if own_pool:
                executor.close()

    totals = dict(stats_so_far)
    for key, value in stats.as_dict().items():
        totals[key] = totals.get(key, 0) + value
    table = pa.concat_tables(done_tables + new_tables) if done_tables or new_tables else TREES.schema.empty_table()
    inputs = {"problems": problems, "policy": policy}
    if use_ppm:
        inputs["ppm"] = ppm
    if previous is not None:
        inputs["previous"] = previous
    params = {"shard": shard, "num_shards": num_shards, "rollouts": budget, "hard_rollouts": hard_budget,
              "hard_problems": len(hard & {r["problem_id"] for r in rows}), "settings": asdict(settings)}
    with write_artifact(out, kind="trees", stage="rollout", context=context, round=round, inputs=inputs,
                        params=params) as out_dir:
        write_table(table, out_dir / TREES_FILE, TREES)
        (out_dir / STATS_FILE).write_text(json.dumps(totals, indent=2, sort_keys=True))
    solved = totals.get("solved", 0)
    return RolloutResult(problems=len(rows), solved=int(solved), resumed_problems=len(done), stats=totals)


def _checkpoint(chunks: _Chunks, number: int, trees, stats: SearchStats, reported: SearchStats) -> pa.Table:
    """Write finished trees as one chunk, with the statistics accrued since the last chunk."""
    table = trees_table(trees)
    now = stats.as_dict()
    delta = {k: now[k] - getattr(reported, k) for k in now}
    for key, value in now.items():
        setattr(reported, key, value)
    chunks.save(number, table, delta)
    return table

