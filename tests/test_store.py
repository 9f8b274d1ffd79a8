"""The artefact store against a local directory and a real S3 server (rclone serve s3)."""

from __future__ import annotations

import os

import pytest

from rstar_math.store import IncompleteArtifactError, S3Store, join, local_copy, parse_s3, store_for
from rstar_math.store.s3 import STAGING_PREFIX


def _make_dir(path, files: dict[str, bytes]):
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


def test_bytes_round_trip_and_replace(root_uri):
    store, uri = store_for(root_uri), join(root_uri, "a", "b.txt")
    assert not store.exists(uri)
    store.write_bytes(uri, b"first")
    store.write_bytes(uri, b"second")
    assert store.exists(uri)
    assert store.read_bytes(uri) == b"second"
    assert b"".join(store.iter_chunks(uri, chunk_size=2)) == b"second"


def test_file_upload_download(root_uri, tmp_path):
    store, uri = store_for(root_uri), join(root_uri, "data.bin")
    payload = os.urandom(300_000)
    (tmp_path / "src.bin").write_bytes(payload)
    store.upload_file(tmp_path / "src.bin", uri)
    out = store.download_file(uri, tmp_path / "nested" / "out.bin")
    assert out.read_bytes() == payload


def test_directory_upload_download_whole(root_uri, tmp_path):
    store, uri = store_for(root_uri), join(root_uri, "ckpt")
    files = {"config.json": b"{}", "model.safetensors": os.urandom(50_000), "tok/vocab.json": b"[1]", "_COMMIT": b"x"}
    store.upload_dir(_make_dir(tmp_path / "src", files), uri, commit="_COMMIT")
    assert store.list_files(uri) == sorted(files)
    assert store.is_dir(uri) and not store.exists(uri)
    out = store.download_dir(uri, tmp_path / "dst", commit="_COMMIT")
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_directory_is_written_once(root_uri, tmp_path):
    store, uri = store_for(root_uri), join(root_uri, "once")
    src = _make_dir(tmp_path / "src", {"f": b"1", "_COMMIT": b""})
    store.upload_dir(src, uri, commit="_COMMIT")
    with pytest.raises(FileExistsError):
        store.upload_dir(src, uri, commit="_COMMIT")


def test_directory_without_commit_file_is_refused_and_replaced(root_uri, tmp_path):
    """A crashed writer leaves files but no commit marker: readers refuse it, the next writer replaces it."""
    store, uri = store_for(root_uri), join(root_uri, "crashed")
    store.write_bytes(join(uri, "half.bin"), b"partial")
    with pytest.raises(IncompleteArtifactError):
        store.download_dir(uri, tmp_path / "dst", commit="_COMMIT")
    store.upload_dir(_make_dir(tmp_path / "src", {"whole.bin": b"w", "_COMMIT": b""}), uri, commit="_COMMIT")
    assert store.list_files(uri) == ["_COMMIT", "whole.bin"]


def test_upload_dir_refuses_a_source_without_its_commit_file(root_uri, tmp_path):
    store = store_for(root_uri)
    with pytest.raises(FileNotFoundError, match="commit file"):
        store.upload_dir(_make_dir(tmp_path / "src", {"f": b"1"}), join(root_uri, "x"), commit="_COMMIT")


def test_delete_file_and_directory(root_uri, tmp_path):
    store = store_for(root_uri)
    store.write_bytes(join(root_uri, "d", "1"), b"1")
    store.write_bytes(join(root_uri, "d", "sub", "2"), b"2")
    store.write_bytes(join(root_uri, "keep"), b"k")
    store.delete(join(root_uri, "d"))
    store.delete(join(root_uri, "missing"))  # not an error
    assert store.list_files(root_uri) == ["keep"]
    store.delete(join(root_uri, "keep"))
    assert not store.exists(join(root_uri, "keep"))


def test_listing_a_prefix_does_not_match_longer_names(root_uri):
    store = store_for(root_uri)
    store.write_bytes(join(root_uri, "run", "a"), b"")
    store.write_bytes(join(root_uri, "run-2", "b"), b"")
    assert store.list_files(join(root_uri, "run")) == ["a"]


def test_local_copy_of_file_and_directory(root_uri, tmp_path):
    store = store_for(root_uri)
    store.write_bytes(join(root_uri, "one.txt"), b"one")
    store.write_bytes(join(root_uri, "dir", "two.txt"), b"two")
    with local_copy(join(root_uri, "one.txt")) as path:
        assert path.read_bytes() == b"one"
    with local_copy(join(root_uri, "dir")) as path:
        assert (path / "two.txt").read_bytes() == b"two"
    with pytest.raises(FileNotFoundError):
        with local_copy(join(root_uri, "nothing")):
            pass


def test_s3_write_leaves_no_staging_objects(s3_root):
    store = store_for(s3_root)
    store.write_bytes(join(s3_root, "x"), b"x")
    bucket = parse_s3(s3_root).bucket
    assert store.list_files(f"s3://{bucket}/{STAGING_PREFIX.rstrip('/')}") == []


def test_s3_crash_mid_upload_never_shows_a_partial_object(s3_root, tmp_path, monkeypatch):
    """Kill the upload after the staged bytes land: the final key must not exist."""
    store = S3Store()
    uri = join(s3_root, "big.bin")
    (tmp_path / "f").write_bytes(os.urandom(1000))

    def crash(*args, **kwargs):
        raise ConnectionError("pod killed")

    monkeypatch.setattr(store, "_publish", crash)  # a fault we cannot cause otherwise: dying between steps
    with pytest.raises(ConnectionError):
        store.upload_file(tmp_path / "f", uri)
    assert not store.exists(uri)


def test_s3_multipart_upload(s3_root, tmp_path):
    """Files above the threshold go up in parts (5 MiB is S3's minimum part size)."""
    store = S3Store(multipart_threshold=5 * 1024**2, multipart_chunksize=5 * 1024**2)
    parts = []
    store.client.meta.events.register("before-call.s3.UploadPart", lambda params, **kw: parts.append(int(params["query_string"]["partNumber"])))
    payload = os.urandom(12 * 1024**2)
    (tmp_path / "big").write_bytes(payload)
    uri = join(s3_root, "big")
    store.upload_file(tmp_path / "big", uri)
    assert sorted(parts) == [1, 2, 3]
    assert store.download_file(uri, tmp_path / "back").read_bytes() == payload


def test_s3_credentials_come_from_the_environment(s3_root, monkeypatch):
    from rstar_math.store import reset_clients

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-wrong-secret")
    reset_clients()
    with pytest.raises(Exception, match="(?i)signature|denied|forbidden"):
        store_for(s3_root).write_bytes(join(s3_root, "x"), b"x")
