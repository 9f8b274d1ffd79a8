"""One interface over local paths and s3:// URIs.

    from rstar_math.store import store_for, local_copy

    store_for("s3://bucket/runs/x/problems.parquet").write_bytes(..., data)
    with local_copy("s3://bucket/models/base") as path:   # a directory, downloaded whole
        model = AutoModelForCausalLM.from_pretrained(path)

Backends: `LocalStore` (local.py) and `S3Store` (s3.py); the atomicity contract is in base.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from rstar_math.store.base import IncompleteArtifactError, Store
from rstar_math.store.local import LocalStore
from rstar_math.store.uri import is_s3, join, local_path, normalize, parent, parse_s3

__all__ = [
    "Store",
    "LocalStore",
    "S3Store",
    "IncompleteArtifactError",
    "store_for",
    "local_copy",
    "is_s3",
    "join",
    "local_path",
    "normalize",
    "parent",
    "parse_s3",
]


def __getattr__(name: str):
    # boto3 is imported only when an S3 store is actually used.
    if name == "S3Store":
        from rstar_math.store.s3 import S3Store

        return S3Store
    raise AttributeError(name)


@functools.lru_cache(maxsize=None)
def _s3_store() -> Store:
    from rstar_math.store.s3 import S3Store

    return S3Store()


def store_for(uri: str | os.PathLike) -> Store:
    """The backend for `uri`: S3 for s3:// URIs, local otherwise."""
    return _s3_store() if is_s3(uri) else LocalStore()


def reset_clients() -> None:
    """Forget cached S3 clients (after the AWS environment changed, e.g. in tests)."""
    _s3_store.cache_clear()


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike, *, commit: str | None = None) -> Iterator[Path]:
    """Yield a local path holding the file or directory at `uri`.

    Local URIs are yielded as they are (no copy). S3 objects are downloaded to a
    temporary directory that is removed afterwards; a prefix with files under it is
    downloaded whole (with `commit`, only if that commit file is there).
    """
    if not is_s3(uri):
        path = local_path(uri)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        yield path
        return
    store = store_for(uri)
    tmp = Path(tempfile.mkdtemp(prefix="rstar-"))
    name = parse_s3(str(uri)).key.rstrip("/").rsplit("/", 1)[-1] or "root"
    try:
        if store.exists(str(uri)):
            yield store.download_file(str(uri), tmp / name)
        elif store.is_dir(str(uri)):
            yield store.download_dir(str(uri), tmp / name, commit=commit)
        else:
            raise FileNotFoundError(f"{uri}: no such object or prefix")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
