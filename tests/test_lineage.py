"""Lineage records and the audit walk, on local paths and on the S3 server."""

from __future__ import annotations

import json

import pytest

from rstar_math.artifacts import ArtifactRef, TamperedArtifactError, open_artifact, pin, write_artifact
from rstar_math.lineage import LINEAGE_FILE, RunContext, audit, read_record
from rstar_math.lineage.record import LineageError, LineageRecord, content_digest
from rstar_math.store import IncompleteArtifactError, join, normalize, store_for

CTX = RunContext(run_id="run-1", config_hash="c0ffee", image="registry/rstar-cpu:1.0")


def _chain(root_uri: str) -> dict[str, str]:
    """problems file (root) -> problems artefact -> trees artefact <- base model (root)."""
    store = store_for(root_uri)
    uris = {
        "raw": join(root_uri, "inbox", "problems.jsonl"),
        "base": join(root_uri, "models", "base"),
        "problems": join(root_uri, "run", "problems"),
        "trees": join(root_uri, "run", "round-1", "trees"),
    }
    store.write_bytes(uris["raw"], b'{"question": "1+1?", "answer": "2"}\n')
    store.write_bytes(join(uris["base"], "config.json"), b'{"model_type": "qwen2"}')
    store.write_bytes(join(uris["base"], "model.safetensors"), b"weights")
    with write_artifact(uris["problems"], kind="problems", stage="intake", context=CTX, inputs={"source": uris["raw"]}) as d:
        (d / "problems.parquet").write_bytes(b"table")
    with write_artifact(
        uris["trees"],
        kind="trees",
        stage="rollout",
        context=CTX,
        round=1,
        inputs={"problems": uris["problems"], "policy": uris["base"]},
        params={"shard": 0},
    ) as d:
        (d / "trees.parquet").write_bytes(b"nodes")
        (d / "stats.json").write_bytes(b"{}")
    return uris


def test_record_names_everything_an_auditor_asks_for(root_uri):
    uris = _chain(root_uri)
    record = read_record(uris["trees"])
    assert record.uri == normalize(uris["trees"])
    assert (record.kind, record.stage, record.round, record.run_id) == ("trees", "rollout", 1, "run-1")
    assert record.config_hash == "c0ffee" and record.image == "registry/rstar-cpu:1.0"
    assert record.package_version
    assert [f.path for f in record.files] == ["stats.json", "trees.parquet"]
    assert {(i.role, i.uri) for i in record.inputs} == {
        ("problems", normalize(uris["problems"])),
        ("policy", normalize(uris["base"])),
    }
    policy = next(i for i in record.inputs if i.role == "policy")
    assert policy.sha256 == content_digest(uris["base"])  # a root is pinned by its content
    assert record.params == {"shard": 0}


def test_audit_of_an_untouched_chain_passes_and_finds_the_roots(root_uri):
    uris = _chain(root_uri)
    report = audit(uris["trees"])
    assert report.ok, report.problems
    assert set(report.roots) == {normalize(uris["raw"]), normalize(uris["base"])}
    assert list(report.nodes)[0] == normalize(uris["trees"])
    text = report.render()
    assert "trees from rollout, round 1" in text and "inputs: problems=#2, policy=#3" in text
    assert "#4 root" in text and "all hashes verified" in text


def test_a_modified_file_is_reported(root_uri):
    uris = _chain(root_uri)
    store_for(root_uri).write_bytes(join(uris["problems"], "problems.parquet"), b"tampered")
    report = audit(uris["trees"])
    assert not report.ok
    assert any("problems.parquet was modified" in p for p in report.problems)


def test_a_replaced_root_input_is_reported(root_uri):
    uris = _chain(root_uri)
    store_for(root_uri).write_bytes(uris["raw"], b'{"question": "1+1?", "answer": "3"}\n')
    report = audit(uris["trees"])
    assert [p for p in report.problems if "changed since" in p and "problems.jsonl" in p]


def test_a_consistently_rewritten_artefact_is_caught_by_its_consumer(root_uri):
    """Change the data AND regenerate its record: the consumer's pinned hash still disagrees."""
    uris = _chain(root_uri)
    store = store_for(root_uri)
    store.delete(uris["problems"])
    with write_artifact(uris["problems"], kind="problems", stage="intake", context=CTX, inputs={"source": uris["raw"]}) as d:
        (d / "problems.parquet").write_bytes(b"other table")
    report = audit(uris["trees"])
    assert any("changed since" in p and normalize(uris["trees"]) in p for p in report.problems)


def test_an_extra_or_missing_file_is_reported(root_uri):
    uris = _chain(root_uri)
    store = store_for(root_uri)
    store.write_bytes(join(uris["trees"], "injected.parquet"), b"x")
    store.delete(join(uris["trees"], "stats.json"))
    problems = audit(uris["trees"]).problems
    assert any("injected.parquet is not in the lineage record" in p for p in problems)
    assert any("stats.json is missing" in p for p in problems)


def test_a_lost_input_is_reported(root_uri):
    uris = _chain(root_uri)
    store_for(root_uri).delete(uris["base"])
    assert any("missing" in p for p in audit(uris["trees"]).problems)


def test_an_edited_record_is_reported(root_uri):
    uris = _chain(root_uri)
    store = store_for(root_uri)
    record_uri = join(uris["trees"], LINEAGE_FILE)
    raw = json.loads(store.read_bytes(record_uri))
    raw["files"][0]["sha256"] = "0" * 64
    store.write_bytes(record_uri, json.dumps(raw).encode())
    assert not audit(uris["trees"]).ok


def test_a_failed_writer_publishes_nothing(root_uri):
    uri = join(root_uri, "out")
    with pytest.raises(RuntimeError):
        with write_artifact(uri, kind="trees", stage="rollout", context=CTX) as d:
            (d / "part.parquet").write_bytes(b"half")
            raise RuntimeError("killed")
    assert store_for(root_uri).list_files(uri) == []


def test_artefacts_are_written_once(root_uri):
    uris = _chain(root_uri)
    with pytest.raises(FileExistsError):
        with write_artifact(uris["problems"], kind="problems", stage="intake", context=CTX) as d:
            (d / "x").write_bytes(b"")


def test_open_artifact_verifies_hashes(root_uri):
    uris = _chain(root_uri)
    with open_artifact(uris["trees"]) as (path, record):
        assert (path / "trees.parquet").read_bytes() == b"nodes"
        assert record.stage == "rollout"
    store_for(root_uri).write_bytes(join(uris["trees"], "trees.parquet"), b"evil")
    with pytest.raises(TamperedArtifactError, match="trees.parquet"):
        with open_artifact(uris["trees"]):
            pass


def test_open_artifact_refuses_a_directory_without_record(root_uri):
    uri = join(root_uri, "half")
    store_for(root_uri).write_bytes(join(uri, "part.parquet"), b"x")
    with pytest.raises(IncompleteArtifactError):
        with open_artifact(uri):
            pass


def test_writing_in_place_records_the_given_uri(tmp_path):
    """The KFP launcher uploads the directory; the record names the artefact's final URI."""
    out = ArtifactRef("s3://bucket/pipeline-root/task/trees", str(tmp_path / "out"))
    with write_artifact(out, kind="trees", stage="rollout", context=CTX) as d:
        (d / "trees.parquet").write_bytes(b"n")
    record = json.loads((tmp_path / "out" / LINEAGE_FILE).read_text())
    assert record["uri"] == "s3://bucket/pipeline-root/task/trees"


def test_malformed_record_names_its_file(tmp_path):
    with pytest.raises(LineageError, match="somewhere.json: missing field"):
        LineageRecord.from_json('{"uri": "x"}', source="somewhere.json")
    with pytest.raises(LineageError, match="not valid JSON"):
        LineageRecord.from_json("{", source="f")


def test_a_local_copy_is_read_and_pinned_under_its_canonical_uri(tmp_path):
    """Inside a KFP task the launcher has downloaded the input: read the copy, record the URI."""
    with write_artifact(str(tmp_path / "made"), kind="problems", stage="intake", context=CTX) as d:
        (d / "problems.parquet").write_bytes(b"rows")
    ref = ArtifactRef("s3://bucket/root/task/problems", str(tmp_path / "made"))
    with open_artifact(ref) as (path, record):
        assert (path / "problems.parquet").read_bytes() == b"rows"
    pinned = pin(ref, "problems")
    assert (pinned.uri, pinned.sha256, pinned.role) == ("s3://bucket/root/task/problems", record.sha256, "problems")
