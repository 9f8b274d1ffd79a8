"""The store interface: files and directory artefacts addressed by URI, every write atomic.

Two backends implement it: `LocalStore` (paths) and `S3Store` (s3:// URIs through
boto3). Callers rarely pick one; `rstar_math.store.store_for(uri)` does.

Atomicity contract
  - A file write lands at its final name in one step (temp name + rename locally;
    temp key + server-side copy on S3). Readers see the old object or the new one,
    never a prefix of it.
  - A directory upload publishes its `commit` file last. Locally the whole directory
    appears at once (rename); on S3, which has no rename, a directory without its
    commit file is an incomplete artefact that readers refuse and writers replace.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO, Iterator


class IncompleteArtifactError(FileNotFoundError):
    """A directory exists but its commit file does not: a writer crashed or is still writing."""


class Store(ABC):
    """Files and directories under URIs of one scheme."""

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """True when a file (object) exists at `uri`."""

    @abstractmethod
    def is_dir(self, uri: str) -> bool:
        """True when at least one file lies under `uri` as a directory."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Atomically create or replace the file at `uri`."""

    @abstractmethod
    def open_read(self, uri: str) -> BinaryIO:
        """A binary stream of the file at `uri` (for hashing large files without loading them)."""

    @abstractmethod
    def upload_file(self, local: str | os.PathLike, uri: str) -> None:
        """Atomically create or replace `uri` with the contents of the local file."""

    @abstractmethod
    def download_file(self, uri: str, local: str | os.PathLike) -> Path:
        """Copy `uri` to the local path (written atomically); returns the path."""

    @abstractmethod
    def list_files(self, uri: str) -> list[str]:
        """Relative paths (posix, sorted) of every file under the directory `uri`."""

    @abstractmethod
    def upload_dir(self, local_dir: str | os.PathLike, uri: str, *, commit: str | None = None) -> None:
        """Publish a local directory at `uri`, `commit` (a relative path inside it) last.

        Raises FileExistsError when a committed directory is already there: artefacts are
        written once. An uncommitted leftover of a crashed writer is replaced.
        """

    @abstractmethod
    def download_dir(self, uri: str, local_dir: str | os.PathLike, *, commit: str | None = None) -> Path:
        """Copy the directory at `uri` to `local_dir` (which must not exist yet).

        With `commit`, refuse (IncompleteArtifactError) a directory whose commit file is missing.
        """

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Remove a file, or a directory and everything under it. Missing is not an error."""

    def iter_chunks(self, uri: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open_read(uri) as stream:
            while chunk := stream.read(chunk_size):
                yield chunk
