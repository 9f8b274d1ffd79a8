"""Writing and reading artefacts: a directory, its payload files, and its lineage record.

A stage writes an output like this; nothing appears at `uri` unless the block
finishes, and the lineage record is published last:

    with write_artifact(out_uri, kind="trees", stage="rollout", context=ctx, round=2,
                        inputs={"problems": problems_uri, "policy": policy_uri}) as out_dir:
        write_table(trees, out_dir / "trees.parquet", TREES)

and reads an input with `open_artifact(uri)`, which materialises it locally and
refuses one whose lineage record is missing (half-written) or whose files no
longer match their recorded hashes.

Inside a Kubeflow component the launcher uploads the output directory itself:
pass `local_dir=` (the artifact's .path) and `uri` (its .uri) to record the
final location while writing in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
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
from rstar_math.store import IncompleteArtifactError, is_s3, local_copy, local_path, store_for


class TamperedArtifactError(ValueError):
    """An artefact's files do not match the hashes in its lineage record."""


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


def _resolve_inputs(inputs: Mapping[str, str | InputRef] | Sequence[str | InputRef]) -> list[InputRef]:
    items = inputs.items() if isinstance(inputs, Mapping) else [("", i) for i in inputs]
    return [i if isinstance(i, InputRef) else input_ref(str(i), role) for role, i in items]


@contextlib.contextmanager
def write_artifact(
    uri: str,
    *,
    kind: str,
    stage: str,
    context: RunContext,
    round: int | None = None,
    inputs: Mapping[str, str | InputRef] | Sequence[str | InputRef] = (),
    params: dict[str, Any] | None = None,
    local_dir: str | os.PathLike | None = None,
) -> Iterator[Path]:
    """Yield an empty local directory; on success, record lineage and publish it at `uri`.

    Inputs are pinned (hashed) before the body runs, so a record always names the
    inputs as they were read. On an exception nothing is published.
    """
    pinned = _resolve_inputs(inputs)
    if local_dir is not None:  # written in place; someone else (the KFP launcher) publishes
        staging, publish = Path(local_dir), False
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
def open_artifact(uri: str, *, verify: bool = True) -> Iterator[tuple[Path, LineageRecord]]:
    """Yield (local directory, lineage record) of a committed artefact, hash-checked by default."""
    record = read_record(uri)
    if record is None:
        raise IncompleteArtifactError(f"{uri}: no {LINEAGE_FILE}; not an artefact, or its writer did not finish")
    with local_copy(uri, commit=LINEAGE_FILE) as path:
        if verify:
            verify_local(path, record, source=uri)
        yield path, record
