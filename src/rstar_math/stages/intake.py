"""Intake stage: problem files or the generator in, one deduplicated problems artefact out.

    intake(["s3://bucket/inbox/gsm8k.jsonl", "math500.json"], "s3://bucket/runs/r1/problems", context=ctx)
    generate(cfg.data.generator, train_out, eval_out, context=ctx)     # the embedded default

Problem files are roots of the lineage graph: their hashes are pinned in the
record of the artefact made from them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Sequence

import pyarrow as pa

from rstar_math.artifacts import ArtifactRef, write_artifact
from rstar_math.config import GeneratorConfig
from rstar_math.data.problems import IntakeReport, load_problems_with_report, merge_problem_sets
from rstar_math.data.schemas import PROBLEMS, write_table
from rstar_math.lineage import RunContext

PROBLEMS_FILE = "problems.parquet"


@dataclass(frozen=True)
class IntakeResult:
    problems: int
    rows_read: int
    duplicates: int
    malformed: int


def _write_problems(table: pa.Table, out, *, context: RunContext, inputs, params, report: dict) -> None:
    with write_artifact(out, kind="problems", stage="intake", context=context, inputs=inputs, params=params) as out_dir:
        write_table(table, out_dir / PROBLEMS_FILE, PROBLEMS)
        (out_dir / "intake_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))


def intake(sources: Sequence[str], out: str | ArtifactRef, *, context: RunContext) -> IntakeResult:
    """Load, validate and deduplicate problem files (first occurrence wins across files)."""
    if not sources:
        raise ValueError("intake needs at least one problem file")
    tables, reports = [], []
    for source in sources:
        table, report = load_problems_with_report(source)
        tables.append(table)
        reports.append(report)
    merged = merge_problem_sets(tables)
    kept_per_file = sum(r.rows_kept for r in reports)
    result = IntakeResult(
        problems=merged.num_rows,
        rows_read=sum(r.rows_read for r in reports),
        duplicates=sum(r.duplicates for r in reports) + kept_per_file - merged.num_rows,
        malformed=sum(len(r.malformed) for r in reports),
    )
    _write_problems(
        merged,
        out,
        context=context,
        inputs={f"source-{i}": s for i, s in enumerate(sources)},
        params={"sources": list(sources)},
        report={"result": asdict(result), "files": [_report_dict(r) for r in reports]},
    )
    return result


def _report_dict(report: IntakeReport) -> dict:
    return {
        "path": str(report.path),
        "layout": report.layout,
        "rows_read": report.rows_read,
        "rows_kept": report.rows_kept,
        "duplicates": report.duplicates,
        "malformed": [list(m) for m in report.malformed[:100]],
    }


def generate(
    generator: GeneratorConfig,
    train_out: str | ArtifactRef,
    eval_out: str | ArtifactRef,
    *,
    context: RunContext,
) -> tuple[int, int]:
    """Generated train and held-out problem sets (no question in both); returns their sizes."""
    from rstar_math.data.generate import split_train_eval

    if not generator.modules:
        raise ValueError("the generator config names no modules (data.generator.modules)")
    train, held_out = split_train_eval(
        list(generator.modules),
        generator.train_per_module,
        generator.eval_per_module,
        difficulty=generator.difficulty,
        seed=generator.seed,
        max_composed_modules=generator.max_composed_modules,
    )
    params = asdict(generator)
    for table, out, split in ((train, train_out, "train"), (held_out, eval_out, "held_out")):
        _write_problems(table, out, context=context, inputs={}, params={**params, "split": split},
                        report={"result": {"problems": table.num_rows, "split": split}})
    return train.num_rows, held_out.num_rows


def prepare_problem_sets(config, train_out: str | ArtifactRef, eval_out: str | ArtifactRef, *, context: RunContext):
    """The run's training and held-out problems: from `data.train` / `data.eval` files, or generated."""
    data = config.data
    if not data.train:
        return generate(data.generator, train_out, eval_out, context=context)
    if not data.eval:
        raise ValueError("data.train is set but data.eval is empty: name the held-out problem files too")
    train = intake(list(data.train), train_out, context=context)
    held_out = intake(list(data.eval), eval_out, context=context)
    return train.problems, held_out.problems
