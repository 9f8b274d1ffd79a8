"""Shared fixtures: a real S3 server (rclone serve s3) for the whole session, and store roots."""

from __future__ import annotations

import uuid

import pytest

from rstar_math.store import reset_clients
from rstar_math.store.s3server import S3Server

BUCKET = "test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    with S3Server.start(tmp_path_factory.mktemp("s3"), buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 at the test server for one test."""
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    reset_clients()
    yield s3_server
    reset_clients()


@pytest.fixture
def s3_root(s3_env) -> str:
    """A fresh s3:// prefix for one test."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["local", "s3"])
def root_uri(request, tmp_path) -> str:
    """Run a test once against a local directory and once against the S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_root")
