"""Select stage: verified trees in, policy SFT data and PPM preference pairs out.

    result = select([verified_shard_0, verified_shard_1], problems_uri, sft_out, pairs_out,
                    config=cfg.select, context=ctx, round=2)

The rules are METHOD.md's, in data/selection.py: top-2 correct trajectories per solved
problem by average step Q; per shared prefix the 2 best correct-leading against the 2
worst wrong-leading siblings; full correct against full wrong trajectories for the
final step. Deterministic for the same input (ties by node id, problems in id order).
Each output carries select_report.json: totals, the share of problems that contributed
data, and the counts of every problem.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import pyarrow as pa

from rstar_math.artifacts import ArtifactRef, open_artifact, write_artifact
from rstar_math.config import SelectConfig
from rstar_math.data.schemas import PPM_PAIRS, SFT_DATA, VERIFIED_TREES, read_table, write_table
from rstar_math.data.selection import select_from_tree
from rstar_math.lineage import RunContext
from rstar_math.stages.io import read_problem_set
from rstar_math.stages.verify import load_trees

SFT_FILE = "sft_data.parquet"
PAIRS_FILE = "ppm_pairs.parquet"
REPORT_FILE = "select_report.json"


@dataclass(frozen=True)
class SelectResult:
    problems: int
    solved: int
    contributed: int
    """Problems that gave at least one SFT example or preference pair."""
    sft_examples: int
    step_pairs: int
    final_pairs: int

    @property
    def contributed_share(self) -> float:
        return self.contributed / self.problems if self.problems else 0.0


def merge_verified(
    shards: Sequence[str | ArtifactRef], out: str | ArtifactRef, *, context: RunContext, round: int | None = None
) -> int:
    """One verified-trees artefact from the shards (the next round reads it to find hard problems)."""
    from rstar_math.stages.verify import REPORT_FILE as VERIFY_REPORT
    from rstar_math.stages.verify import VERIFIED_FILE, merge_reports

    tables, reports = [], []
    for shard in shards:
        with open_artifact(shard) as (path, _):
            tables.append(read_table(path, VERIFIED_TREES))
            reports.append(json.loads((path / VERIFY_REPORT).read_text()))
    table = pa.concat_tables(tables) if tables else VERIFIED_TREES.schema.empty_table()
    with write_artifact(out, kind="verified_trees", stage="merge_verified", context=context, round=round,
                        inputs={f"shard-{i}": s for i, s in enumerate(shards)}) as out_dir:
        write_table(table, out_dir / VERIFIED_FILE, VERIFIED_TREES)
        (out_dir / VERIFY_REPORT).write_text(json.dumps(merge_reports(reports), indent=2, sort_keys=True))
    return table.num_rows


def select(
    verified: Sequence[str | ArtifactRef],
    problems: str | ArtifactRef,
    sft_out: str | ArtifactRef,
    pairs_out: str | ArtifactRef,
    *,
    config: SelectConfig,
    context: RunContext,
    round: int | None = None,
) -> SelectResult:
    from rstar_math.stages.verify import REPORT_FILE as VERIFY_REPORT
    from rstar_math.stages.verify import merge_reports

    started = time.monotonic()
    problem_table = read_problem_set(problems)
    sources = dict(zip(problem_table.column("problem_id").to_pylist(), problem_table.column("source").to_pylist()))
    trees, verify_reports = [], []
    for shard in verified:
        ref = ArtifactRef.of(shard)
        with open_artifact(ref) as (path, _):
            trees += load_trees(read_table(path, VERIFIED_TREES), problem_table, ref.uri)
            if (path / VERIFY_REPORT).exists():
                verify_reports.append(json.loads((path / VERIFY_REPORT).read_text()))
    trees.sort(key=lambda t: t.problem_id)

    sft_rows, pair_rows, counts = [], [], []
    for tree in trees:
        chosen = select_from_tree(tree, sft_per_problem=config.sft_per_problem, sft_max_q_gap=config.sft_max_q_gap,
                                  positives=config.ppm_positives, negatives=config.ppm_negatives)
        sft_rows += [{**asdict(e), "source": sources[e.problem_id]} for e in chosen.sft]
        pair_rows += [asdict(p) for p in chosen.pairs]
        counts += chosen.counts

    result = SelectResult(
        problems=len(trees),
        solved=sum(c.solved for c in counts),
        contributed=sum(1 for c in counts if c.sft_examples or c.step_pairs or c.final_pairs),
        sft_examples=len(sft_rows),
        step_pairs=sum(c.step_pairs for c in counts),
        final_pairs=sum(c.final_pairs for c in counts),
    )
    report = json.dumps({"totals": {**asdict(result), "contributed_share": result.contributed_share},
                         "verify": merge_reports(verify_reports), "seconds": time.monotonic() - started,
                         "per_problem": [asdict(c) for c in counts]}, indent=1)
    inputs = {**{f"verified-{i}": v for i, v in enumerate(verified)}, "problems": problems}
    params = asdict(config)
    with write_artifact(sft_out, kind="sft_data", stage="select", context=context, round=round, inputs=inputs,
                        params=params) as out_dir:
        write_table(pa.Table.from_pylist(sft_rows, schema=SFT_DATA.schema), out_dir / SFT_FILE, SFT_DATA)
        (out_dir / REPORT_FILE).write_text(report)
    with write_artifact(pairs_out, kind="ppm_pairs", stage="select", context=context, round=round, inputs=inputs,
                        params=params) as out_dir:
        write_table(pa.Table.from_pylist(pair_rows, schema=PPM_PAIRS.schema), out_dir / PAIRS_FILE, PPM_PAIRS)
        (out_dir / REPORT_FILE).write_text(report)
    return result
