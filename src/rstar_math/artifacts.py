"""Writing and reading artefacts: a directory, its payload files, and its lineage record.

A stage writes an output like this; nothing appears at `uri` unless the block
finishes, and the lineage record is published last:

    with write_artifact(out_uri, kind="trees", stage="rollout", context=ctx, round=2,
                        inputs={"problems": problems_uri, "policy": policy_uri}) as out_dir:
        write_table(trees, out_dir / "trees.parquet", TREES)

and reads an input with `open_artifact(uri)`, which materialises it locally and
refuses one whose lineage record is missing (half-written) or whose files no
longer match their recorded hashes.

Inside a Kubeflow component the launcher moves bytes: it downloads inputs to
local paths before the component runs and uploads outputs after. Stages then get
`ArtifactRef(uri=artifact.uri, path=artifact.path)`: they read and write at
`path` while lineage records name `uri`. A plain string is both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from rstar_math.lineage.record import (
    LINEAGE_FILE,
    FileDigest,
    InputRef,
    LineageRecord,
    RunContext,
    build_record,
    input_ref,
    read_record,
    sha256_stream,
)
from rstar_math.store import IncompleteArtifactError, is_s3, local_copy, local_path, normalize, store_for


class TamperedArtifactError(ValueError):
    """An artefact's files do not match the hashes in its lineage record."""


@dataclass(frozen=True)
class ArtifactRef:
    """An artefact's canonical URI, and optionally a local directory that holds (or will hold) it."""

    uri: str
    path: str | None = None

    @classmethod
    def of(cls, value: "str | os.PathLike | ArtifactRef") -> "ArtifactRef":
        return value if isinstance(value, ArtifactRef) else cls(str(value))


def pin(ref: "str | ArtifactRef | InputRef", role: str = "") -> InputRef:
    """An input as it is now (URI and hash), for the lineage record of what is made from it."""
    if isinstance(ref, InputRef):
        return ref
    ref = ArtifactRef.of(ref)
    if ref.path is None:
        return input_ref(ref.uri, role)
    local = input_ref(ref.path, role)  # hashes (or the record) of the local copy
    return InputRef(normalize(ref.uri), local.sha256, role)


def _digest_local(directory: Path) -> tuple[FileDigest, ...]:
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel == LINEAGE_FILE:
            continue
        with open(path, "rb") as handle:
            sha, size = sha256_stream(iter(lambda: handle.read(1 << 20), b""))
        files.append(FileDigest(rel, sha, size))
    return tuple(files)


Inputs = Mapping[str, "str | ArtifactRef | InputRef"] | Sequence["str | ArtifactRef | InputRef"]


def _resolve_inputs(inputs: Inputs) -> list[InputRef]:
    items = inputs.items() if isinstance(inputs, Mapping) else [("", i) for i in inputs]
    return [pin(value, role) for role, value in items]


@contextlib.contextmanager
def write_artifact(
    out: "str | ArtifactRef",
    *,
    kind: str,
    stage: str,
    context: RunContext,
    round: int | None = None,
    inputs: Inputs = (),
    params: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield an empty local directory; on success, record lineage and publish it at `out`.

    Inputs are pinned (hashed) before the body runs, so a record always names the
    inputs as they were read. On an exception nothing is published. With a local
    `out.path` the directory is written in place (the KFP launcher publishes it).
    """
    ref = ArtifactRef.of(out)
    uri = ref.uri
    pinned = _resolve_inputs(inputs)
    if ref.path is not None:
        staging, publish = Path(ref.path), False
        staging.mkdir(parents=True, exist_ok=True)
    elif is_s3(uri):
        staging, publish = Path(tempfile.mkdtemp(prefix="rstar-out-")), True
    else:
        final = local_path(uri)
        if (final / LINEAGE_FILE).exists():
            raise FileExistsError(f"{final}: artefact already exists (artefacts are written once)")
        final.parent.mkdir(parents=True, exist_ok=True)
        staging, publish = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"), True
        staging.mkdir()
    try:
        yield staging
        record = build_record(
            uri, _digest_local(staging), kind=kind, stage=stage, context=context, round=round, inputs=pinned, params=params
        )
        (staging / LINEAGE_FILE).write_text(record.to_json())
        if publish:
            if is_s3(uri):
                store_for(uri).upload_dir(staging, uri, commit=LINEAGE_FILE)
            else:
                final = local_path(uri)
                if final.exists():  # an uncommitted leftover of a crashed writer
                    shutil.rmtree(final)
                os.rename(staging, final)
    finally:
        if publish and staging.exists():
            shutil.rmtree(staging)


def verify_local(directory: Path, record: LineageRecord, source: str) -> None:
    """Raise TamperedArtifactError when the directory's files differ from the record."""
    actual = {f.path: f for f in _digest_local(directory)}
    expected = {f.path: f for f in record.files}
    problems = [f"{p}: missing" for p in sorted(expected.keys() - actual.keys())]
    problems += [f"{p}: not in the record" for p in sorted(actual.keys() - expected.keys())]
    problems += [
        f"{p}: sha256 {actual[p].sha256[:12]} != recorded {expected[p].sha256[:12]}"
        for p in sorted(expected.keys() & actual.keys())
        if actual[p].sha256 != expected[p].sha256
    ]
    if problems:
        raise TamperedArtifactError(f"{source}: contents do not match the lineage record: " + "; ".join(problems))


@contextlib.contextmanager
def open_artifact(ref: "str | ArtifactRef", *, verify: bool = True) -> Iterator[tuple[Path, LineageRecord]]:
    """Yield (local directory, lineage record) of a committed artefact, hash-checked by default."""
    ref = ArtifactRef.of(ref)
    where = ref.path or ref.uri
    record = read_record(where)
    if record is None:
        raise IncompleteArtifactError(f"{ref.uri}: no {LINEAGE_FILE}; not an artefact, or its writer did not finish")
    with local_copy(where, commit=LINEAGE_FILE) as path:
        if verify:
            verify_local(path, record, source=ref.uri)
        yield path, record
