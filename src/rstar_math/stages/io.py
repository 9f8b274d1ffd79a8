"""Reading stage inputs: validated tables from artefacts, problem sets from artefacts or plain files."""

from __future__ import annotations

import json

import pyarrow as pa

from rstar_math.artifacts import ArtifactRef, open_artifact
from rstar_math.data.schemas import PROBLEMS, ArtifactKind, read_table
from rstar_math.lineage import read_record


def read_artifact_table(ref: str | ArtifactRef, kind: ArtifactKind) -> pa.Table:
    """Every Parquet part of a committed, hash-checked artefact, validated against `kind`."""
    with open_artifact(ref) as (path, _):
        return read_table(path, kind)


def read_artifact_json(ref: str | ArtifactRef | None, name: str) -> dict:
    """A JSON file a stage wrote beside its tables ({} when there is no artefact or no such file)."""
    if ref is None:
        return {}
    with open_artifact(ref) as (path, _):
        file = path / name
        return json.loads(file.read_text()) if file.exists() else {}


def read_problem_set(ref: str | ArtifactRef) -> pa.Table:
    """A problems artefact, or a plain JSONL/JSON/Parquet problem file (a benchmark someone dropped in)."""
    ref = ArtifactRef.of(ref)
    if read_record(ref.path or ref.uri) is not None:
        return read_artifact_table(ref, PROBLEMS)
    from rstar_math.data.problems import load_problems

    return load_problems(ref.path or ref.uri)
