"""Artefact locations: a local path or an s3://bucket/key URI, parsed once."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # no leading slash; may be "" for the bucket root

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, relpath: str) -> "S3Location":
        return S3Location(self.bucket, posixpath.join(self.key, relpath) if self.key else relpath)

    def as_prefix(self) -> str:
        """The key as a directory prefix ("a/b/"), so listing does not match "a/bc"."""
        return self.key.rstrip("/") + "/" if self.key else ""


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def parse_s3(uri: str) -> S3Location:
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return S3Location(bucket, key.strip("/"))


def local_path(uri: str | os.PathLike) -> Path:
    """A local URI (plain path or file://) as an absolute Path."""
    text = str(uri)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if is_s3(text):
        raise ValueError(f"not a local path: {text!r}")
    return Path(text).expanduser().absolute()


def normalize(uri: str | os.PathLike) -> str:
    """Canonical string form used in lineage records: s3 URIs as given (no trailing slash), paths absolute."""
    if is_s3(uri):
        return parse_s3(str(uri)).uri.rstrip("/")
    return str(local_path(uri))


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Join path segments onto a local path or an s3 URI."""
    if is_s3(uri):
        return posixpath.join(str(uri).rstrip("/"), *parts)
    return str(Path(uri).joinpath(*parts))


def parent(uri: str | os.PathLike) -> str:
    """The directory (or prefix) that holds `uri`."""
    if is_s3(uri):
        return posixpath.dirname(str(uri).rstrip("/"))
    return str(local_path(uri).parent)
