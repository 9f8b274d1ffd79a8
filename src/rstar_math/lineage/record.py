"""Lineage records: where an artefact came from, and the hashes that prove it.

Every artefact is a directory (local or an S3 prefix) whose `_lineage.json` holds
its record: URI, content hash, producing stage, round, run id, config hash, code
version, container image, and the URIs and hashes of the inputs it was made from.
The record is written last, so it doubles as the artefact's commit marker.

Content hash of a directory: sha256 over its sorted manifest lines
`<relative path>\\t<sha256 of the file>\\t<size>\\n`, excluding `_lineage.json`.
A plain file (a problem set dropped into a bucket, say) hashes as its bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from rstar_math.store import join, normalize, store_for

LINEAGE_FILE = "_lineage.json"
RECORD_FORMAT = 1


class LineageError(ValueError):
    """A lineage record is missing a field or is not valid JSON; names the record's URI."""


@dataclass(frozen=True)
class FileDigest:
    path: str  # relative, posix
    sha256: str
    size: int  # bytes


@dataclass(frozen=True)
class InputRef:
    """An input as it was when consumed: its URI and content hash, and its role for the reader."""

    uri: str
    sha256: str
    role: str = ""


@dataclass(frozen=True)
class RunContext:
    """What every record written by one stage execution shares."""

    run_id: str
    config_hash: str | None = None
    image: str | None = field(default_factory=lambda: os.environ.get("RSTAR_IMAGE") or None)


@dataclass(frozen=True)
class LineageRecord:
    uri: str
    sha256: str
    kind: str  # artefact kind: problems, trees, checkpoint, ...
    stage: str
    round: int | None
    run_id: str
    config_hash: str | None
    package_version: str
    git_commit: str | None
    image: str | None
    inputs: tuple[InputRef, ...]
    files: tuple[FileDigest, ...]
    created_at: str
    params: dict[str, Any] = field(default_factory=dict)
    format: int = RECORD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> "LineageRecord":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LineageError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise LineageError(f"{source}: expected a JSON object")
        required = [f for f in cls.__dataclass_fields__ if f not in ("params", "format")]
        missing = [name for name in required if name not in raw]
        if missing:
            raise LineageError(f"{source}: missing field(s) {', '.join(missing)}")
        try:
            raw["inputs"] = tuple(InputRef(**i) for i in raw["inputs"])
            raw["files"] = tuple(FileDigest(**f) for f in raw["files"])
            return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise LineageError(f"{source}: malformed field ({exc})") from exc


# -- hashing ----------------------------------------------------------------------------------


def sha256_stream(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def manifest_digest(files: Iterable[FileDigest]) -> str:
    lines = "".join(f"{f.path}\t{f.sha256}\t{f.size}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(lines.encode()).hexdigest()


def digest_files(uri: str) -> tuple[FileDigest, ...]:
    """Hash every file of the directory at `uri` (local or S3), the lineage record excluded."""
    store = store_for(uri)
    out = []
    for rel in store.list_files(uri):
        if rel == LINEAGE_FILE:
            continue
        sha, size = sha256_stream(store.iter_chunks(join(uri, rel)))
        out.append(FileDigest(rel, sha, size))
    return tuple(out)


def content_digest(uri: str) -> str:
    """Content hash of a file (its bytes) or a directory (its manifest) at `uri`."""
    store = store_for(uri)
    if store.exists(uri):
        return sha256_stream(store.iter_chunks(uri))[0]
    if store.is_dir(uri):
        return manifest_digest(digest_files(uri))
    raise FileNotFoundError(f"{uri}: no such file or directory")


# -- code version -----------------------------------------------------------------------------


def package_version() -> str:
    from rstar_math import __version__

    return __version__


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The code's git commit: RSTAR_GIT_COMMIT (set when images are built), else the checkout's HEAD."""
    if commit := os.environ.get("RSTAR_GIT_COMMIT"):
        return commit
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


# -- reading and building records -------------------------------------------------------------


def read_record(uri: str) -> LineageRecord | None:
    """The lineage record of the artefact at `uri`, or None when it has none (an external input)."""
    record_uri = join(uri, LINEAGE_FILE)
    store = store_for(record_uri)
    if not store.exists(record_uri):
        return None
    return LineageRecord.from_json(store.read_bytes(record_uri).decode(), source=record_uri)


def input_ref(uri: str, role: str = "") -> InputRef:
    """Pin an input for a record: an artefact's recorded hash, or the content hash of an external input."""
    record = read_record(uri)
    sha = record.sha256 if record else content_digest(uri)
    return InputRef(normalize(uri), sha, role)


def build_record(
    uri: str,
    files: tuple[FileDigest, ...],
    *,
    kind: str,
    stage: str,
    context: RunContext,
    round: int | None = None,
    inputs: Iterable[InputRef] = (),
    params: dict[str, Any] | None = None,
) -> LineageRecord:
    return LineageRecord(
        uri=normalize(uri),
        sha256=manifest_digest(files),
        kind=kind,
        stage=stage,
        round=round,
        run_id=context.run_id,
        config_hash=context.config_hash,
        package_version=package_version(),
        git_commit=git_commit(),
        image=context.image,
        inputs=tuple(inputs),
        files=tuple(sorted(files, key=lambda f: f.path)),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        params=params or {},
    )
