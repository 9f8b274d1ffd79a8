"""The data contracts: one pyarrow schema per artefact that stages pass to each other.

Every Parquet artefact in the pipeline is one of the kinds below. Writers go
through `write_table`, readers through `read_table`; both validate, so a stage
never sees a column it did not expect, and a bad file fails with an error that
names the file and the column instead of a KeyError three stages later.

    >>> table = read_table("runs/r1/round-1/trees", TREES)   # file or directory of parts

Column meanings are in each schema's field metadata (`describe(KIND)` prints them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "ArtifactKind",
    "SchemaError",
    "PROBLEMS",
    "TREES",
    "VERIFIED_TREES",
    "SFT_DATA",
    "PPM_PAIRS",
    "METRICS",
    "KINDS",
    "validate",
    "read_table",
    "write_table",
    "empty_table",
    "describe",
]


class SchemaError(ValueError):
    """A table does not match its artefact's contract. The message names the file and column."""


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


@dataclass(frozen=True)
class ArtifactKind:
    """A named artefact contract: the schema its Parquet files must have."""

    name: str
    schema: pa.Schema
    description: str

    @property
    def columns(self) -> list[str]:
        return self.schema.names


PROBLEMS = ArtifactKind(
    "problems",
    pa.schema(
        [
            _field("problem_id", pa.string(), "stable id: hash of the normalised question text"),
            _field("question", pa.string(), "problem statement as shown to the policy"),
            _field("answer", pa.string(), "ground-truth final answer (what the grader compares against)"),
            _field("source", pa.string(), "origin: data set name, or generator module"),
            _field("level", pa.int32(), "difficulty level where the source has one", nullable=True),
        ]
    ),
    "One row per problem.",
)

_TREE_FIELDS = [
    _field("problem_id", pa.string(), "the problem this tree searched"),
    _field("node_id", pa.int32(), "node id, unique within the tree; the root is 0"),
    _field("parent_id", pa.int32(), "parent's node_id; null for the root", nullable=True),
    _field("depth", pa.int32(), "steps from the root (root = 0)"),
    _field("text", pa.string(), "the step exactly as the policy wrote it (no output block); empty for the root"),
    _field("code", pa.string(), "Python code of the step; empty for answer steps and the root"),
    _field("output", pa.string(), "what executing the trajectory's cumulative code printed for this step"),
    _field("exec_status", pa.string(), "executor status of the step: ok, error, timeout, memory, output_limit, or none"),
    _field("is_terminal", pa.bool_(), "no children can follow: answer given, depth limit or too many errors"),
    _field("answer", pa.string(), "final answer extracted from \\boxed{} for answer steps", nullable=True),
    _field("reward", pa.float64(), "terminal reward: +1 correct, -1 wrong; null for inner nodes", nullable=True),
    _field("q_value", pa.float64(), "mean backed-up value of the node"),
    _field("visits", pa.int32(), "number of rollouts through the node"),
    _field("ppm_score", pa.float64(), "PPM score in [-1, 1] of the partial trajectory, if a PPM was used", nullable=True),
]

TREES = ArtifactKind("trees", pa.schema(_TREE_FIELDS), "One row per search-tree node, as the rollout stage left it.")

VERIFIED_TREES = ArtifactKind(
    "verified_trees",
    pa.schema(
        _TREE_FIELDS
        + [
            _field(
                "verdict",
                pa.string(),
                "verify stage's verdict for terminals: correct, wrong or exec_failure; null for inner nodes",
                nullable=True,
            ),
            _field("search_reward", pa.float64(), "the reward the search assigned, kept for comparison", nullable=True),
        ]
    ),
    "Trees whose terminal rewards, Q values and visits come from the verify stage's re-execution.",
)

SFT_DATA = ArtifactKind(
    "sft_data",
    pa.schema(
        [
            _field("problem_id", pa.string(), "the solved problem"),
            _field("prompt", pa.string(), "rendered question: the model is conditioned on it, no loss"),
            _field("completion", pa.string(), "rendered trajectory: steps with their output blocks"),
            _field("avg_q", pa.float64(), "mean Q value of the trajectory's steps (selection score)"),
            _field("source", pa.string(), "problem source, used to balance the mix across sources"),
        ]
    ),
    "Policy fine-tuning examples.",
)

PPM_PAIRS = ArtifactKind(
    "ppm_pairs",
    pa.schema(
        [
            _field("problem_id", pa.string(), "the problem the pair comes from"),
            _field("prefix", pa.string(), "prompt and shared trajectory before the compared steps"),
            _field("chosen", pa.string(), "step (or final trajectory suffix) preferred by Q"),
            _field("rejected", pa.string(), "step (or final trajectory suffix) dispreferred by Q"),
            _field("q_chosen", pa.float64(), "Q of the chosen step"),
            _field("q_rejected", pa.float64(), "Q of the rejected step"),
            _field("depth", pa.int32(), "depth of the compared steps"),
            _field("kind", pa.string(), "'step' for sibling steps, 'final' for full correct vs wrong trajectories"),
        ]
    ),
    "Preference pairs for the process preference model.",
)

METRICS = ArtifactKind(
    "metrics",
    pa.schema(
        [
            _field("run_id", pa.string(), "pipeline run"),
            _field("round", pa.int32(), "self-evolution round (0 = base model)"),
            _field("benchmark", pa.string(), "problem set the metric was measured on"),
            _field("method", pa.string(), "e.g. greedy, majority_vote, best_of_n_ppm, mcts_ppm, or a stage name"),
            _field("metric", pa.string(), "e.g. accuracy, solved_share, ppm_pairwise_accuracy, tokens_per_s"),
            _field("n", pa.int32(), "samples or trajectories per problem, where the method has an N", nullable=True),
            _field("value", pa.float64(), "the measurement"),
            _field("ci_low", pa.float64(), "lower end of the 95% confidence interval", nullable=True),
            _field("ci_high", pa.float64(), "upper end of the 95% confidence interval", nullable=True),
            _field("count", pa.int64(), "how many items the value was computed over", nullable=True),
        ]
    ),
    "Long-format measurements: one row per (round, benchmark, method, metric, n).",
)

KINDS: dict[str, ArtifactKind] = {k.name: k for k in (PROBLEMS, TREES, VERIFIED_TREES, SFT_DATA, PPM_PAIRS, METRICS)}


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Types we accept and cast without loss: exact, or a wider form of the same family."""
    if actual.equals(expected):
        return True
    if pa.types.is_null(actual):  # an all-null column written without a type
        return True
    if pa.types.is_string(expected) or pa.types.is_large_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual) and actual.bit_width <= expected.bit_width
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    return False


def validate(table: pa.Table, kind: ArtifactKind, source: str = "<table>") -> pa.Table:
    """Check `table` against `kind` and return it with exactly the contract's columns and types.

    Extra columns are dropped; missing, mistyped or unexpectedly null columns raise
    SchemaError naming `source` (a file path or URI) and the column.
    """
    out = []
    for field in kind.schema:
        if field.name not in table.column_names:
            raise SchemaError(f"{source}: missing column '{field.name}' required by the {kind.name} schema")
        column = table.column(field.name)
        if not _compatible(column.type, field.type):
            raise SchemaError(
                f"{source}: column '{field.name}' has type {column.type}, the {kind.name} schema expects {field.type}"
            )
        if not field.nullable and column.null_count:
            raise SchemaError(f"{source}: column '{field.name}' has {column.null_count} null value(s); it may not be null")
        out.append(column.cast(field.type) if not column.type.equals(field.type) else column)
    return pa.Table.from_arrays(out, schema=kind.schema)


def _parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
    return [path]


def read_table(path: str | os.PathLike, kind: ArtifactKind) -> pa.Table:
    """Read a Parquet file, or every part of a directory artefact, and validate it against `kind`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {kind.name} artefact")
    files = _parquet_files(path)
    if not files:
        raise SchemaError(f"{path}: directory holds no .parquet files for the {kind.name} artefact")
    tables = []
    for file in files:
        try:
            raw = pq.read_table(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"{file}: not a readable Parquet file ({exc})") from exc
        tables.append(validate(raw, kind, source=str(file)))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def write_table(table: pa.Table, path: str | os.PathLike, kind: ArtifactKind) -> Path:
    """Validate and write `table` to `path` (a .parquet file) atomically: temp file, then rename."""
    path = Path(path)
    table = validate(table, kind, source=f"{path} (being written)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def empty_table(kind: ArtifactKind) -> pa.Table:
    """A zero-row table with the contract's schema (for shards with nothing to report)."""
    return kind.schema.empty_table()


def describe(kind: ArtifactKind) -> str:
    """Human-readable column list for docs and `rstar schema`."""
    lines = [f"{kind.name}: {kind.description}"]
    for field in kind.schema:
        null = " (nullable)" if field.nullable else ""
        lines.append(f"  {field.name:<14} {str(field.type):<8}{null}  {field.metadata[b'doc'].decode()}")
    return "\n".join(lines)
