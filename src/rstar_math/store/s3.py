"""Store backend for s3:// URIs (AWS S3, MinIO, Ceph, rclone serve s3, ...).

Connection settings come from the standard AWS configuration, nothing of our own:
credentials from the usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a
profile, or a pod identity), region from AWS_REGION / AWS_DEFAULT_REGION, and the
endpoint of an S3-compatible server from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL.

Writes go to a temporary key under `.staging/` in the same bucket and are then
copied server-side to their final key, so a crash mid-upload never leaves a partial
object at the final key. A bucket lifecycle rule expiring `.staging/` after a day
cleans up after writers that were killed between the two steps.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from rstar_math.store.base import IncompleteArtifactError, Store
from rstar_math.store.uri import S3Location, parse_s3

STAGING_PREFIX = ".staging/"
# S3's single-request CopyObject limit; larger objects are copied part by part.
_MAX_SINGLE_COPY = 5 * 1024**3


def make_client():
    """A boto3 S3 client configured from the environment, tolerant of S3-compatible servers."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        # Newer botocore adds CRC checksums that many S3-compatible servers reject;
        # only send them where the API requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Custom endpoints (MinIO, rclone) rarely have wildcard DNS for bucket subdomains.
        s3={"addressing_style": "path"} if endpoint else {},
        retries={"max_attempts": 5, "mode": "standard"},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


class S3Store(Store):
    def __init__(self, client=None, *, multipart_threshold: int = 64 * 1024**2, multipart_chunksize: int = 64 * 1024**2):
        from boto3.s3.transfer import TransferConfig

        self._client = client
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize)

    @property
    def client(self):
        if self._client is None:  # created lazily: importing the store must not need credentials
            self._client = make_client()
        return self._client

    # -- reading ------------------------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        from botocore.exceptions import ClientError

        loc = parse_s3(uri)
        try:
            self.client.head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def is_dir(self, uri: str) -> bool:
        loc = parse_s3(uri)
        page = self.client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.as_prefix(), MaxKeys=1)
        return page.get("KeyCount", 0) > 0

    def read_bytes(self, uri: str) -> bytes:
        loc = parse_s3(uri)
        return self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()

    def open_read(self, uri: str) -> BinaryIO:
        loc = parse_s3(uri)
        return self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]

    def _keys(self, loc: S3Location) -> list[str]:
        prefix = loc.as_prefix()
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return [k for k in keys if not k.endswith("/")]  # skip "directory marker" objects some tools create

    def list_files(self, uri: str) -> list[str]:
        loc = parse_s3(uri)
        prefix = loc.as_prefix()
        return sorted(key[len(prefix) :] for key in self._keys(loc))

    def download_file(self, uri: str, local: str | os.PathLike) -> Path:
        loc, target = parse_s3(uri), Path(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            self.client.download_file(loc.bucket, loc.key, str(tmp), Config=self.transfer)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def download_dir(self, uri: str, local_dir: str | os.PathLike, *, commit: str | None = None) -> Path:
        loc, target = parse_s3(uri), Path(local_dir)
        files = self.list_files(uri)
        if not files:
            raise FileNotFoundError(f"{uri}: no such directory")
        if commit and commit not in files:
            raise IncompleteArtifactError(f"{uri}: incomplete artefact, {commit!r} is missing")
        if target.exists():
            raise FileExistsError(f"{target}: download target already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            for rel in files:
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(loc.bucket, loc.child(rel).key, str(dest), Config=self.transfer)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return target

    # -- writing ------------------------------------------------------------------------------

    def _staging_key(self, loc: S3Location) -> str:
        return f"{STAGING_PREFIX}{uuid.uuid4().hex}/{loc.key}"

    def _publish(self, bucket: str, staging_key: str, final_key: str) -> None:
        """Server-side copy of a staged object to its final key, then drop the staged one."""
        size = self.client.head_object(Bucket=bucket, Key=staging_key)["ContentLength"]
        source = {"Bucket": bucket, "Key": staging_key}
        if size <= _MAX_SINGLE_COPY:
            self.client.copy_object(Bucket=bucket, Key=final_key, CopySource=source)
        else:
            self.client.copy(source, bucket, final_key, Config=self.transfer)  # multipart copy
        self.client.delete_object(Bucket=bucket, Key=staging_key)

    def write_bytes(self, uri: str, data: bytes) -> None:
        loc = parse_s3(uri)
        staging = self._staging_key(loc)
        self.client.put_object(Bucket=loc.bucket, Key=staging, Body=data)
        self._publish(loc.bucket, staging, loc.key)

    def upload_file(self, local: str | os.PathLike, uri: str) -> None:
        loc = parse_s3(uri)
        staging = self._staging_key(loc)
        self.client.upload_file(str(local), loc.bucket, staging, Config=self.transfer)
        self._publish(loc.bucket, staging, loc.key)

    def upload_dir(self, local_dir: str | os.PathLike, uri: str, *, commit: str | None = None) -> None:
        source, loc = Path(local_dir), parse_s3(uri)
        rels = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
        if commit and commit not in rels:
            raise FileNotFoundError(f"{source}: commit file {commit!r} is missing; refusing to publish")
        existing = self.list_files(uri)
        if existing and (commit is None or commit in existing):
            raise FileExistsError(f"{uri}: artefact already exists (artefacts are written once)")
        if existing:
            self.delete(uri)  # an uncommitted leftover of a crashed writer
        # Stage everything first, so nothing reaches the final prefix until all bytes are uploaded.
        staging_root = f"{STAGING_PREFIX}{uuid.uuid4().hex}/{loc.key}"
        staged = {}
        for rel in rels:
            staged[rel] = posixpath.join(staging_root, rel)
            self.client.upload_file(str(source / rel), loc.bucket, staged[rel], Config=self.transfer)
        ordered = [r for r in rels if r != commit] + ([commit] if commit else [])
        for rel in ordered:
            self._publish(loc.bucket, staged[rel], loc.child(rel).key)

    def delete(self, uri: str) -> None:
        loc = parse_s3(uri)
        keys = [loc.child(rel).key for rel in self.list_files(uri)]
        if not keys and loc.key:
            keys = [loc.key]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True})
