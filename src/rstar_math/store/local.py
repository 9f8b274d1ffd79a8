"""Store backend for local paths: temp file or directory beside the target, then rename."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from rstar_math.store.base import IncompleteArtifactError, Store
from rstar_math.store.uri import local_path


def _temp_sibling(path: Path) -> Path:
    # Same directory as the target so os.replace / os.rename stay on one filesystem (atomic).
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


class LocalStore(Store):
    def exists(self, uri: str) -> bool:
        return local_path(uri).is_file()

    def is_dir(self, uri: str) -> bool:
        path = local_path(uri)
        return path.is_dir() and any(p.is_file() for p in path.rglob("*"))

    def read_bytes(self, uri: str) -> bytes:
        return local_path(uri).read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(path)
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def open_read(self, uri: str) -> BinaryIO:
        return open(local_path(uri), "rb")

    def upload_file(self, local: str | os.PathLike, uri: str) -> None:
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(path)
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def download_file(self, uri: str, local: str | os.PathLike) -> Path:
        target = Path(local)
        self.upload_file(local_path(uri), str(target))  # a copy with the same atomic rename
        return target

    def list_files(self, uri: str) -> list[str]:
        root = local_path(uri)
        if not root.is_dir():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def upload_dir(self, local_dir: str | os.PathLike, uri: str, *, commit: str | None = None) -> None:
        source, target = Path(local_dir), local_path(uri)
        if commit and not (source / commit).is_file():
            raise FileNotFoundError(f"{source}: commit file {commit!r} is missing; refusing to publish")
        if target.exists():
            if commit is None or (target / commit).exists():
                raise FileExistsError(f"{target}: artefact already exists (artefacts are written once)")
            shutil.rmtree(target)  # an uncommitted leftover of a crashed writer
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(target)
        try:
            shutil.copytree(source, tmp)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    def download_dir(self, uri: str, local_dir: str | os.PathLike, *, commit: str | None = None) -> Path:
        source, target = local_path(uri), Path(local_dir)
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: no such directory")
        if commit and not (source / commit).is_file():
            raise IncompleteArtifactError(f"{source}: incomplete artefact, {commit!r} is missing")
        if target.exists():
            raise FileExistsError(f"{target}: download target already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(target)
        try:
            shutil.copytree(source, tmp)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return target

    def delete(self, uri: str) -> None:
        path = local_path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
