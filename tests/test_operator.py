"""`rstar kfp` against an in-process HTTP server that speaks the subset of the KFP v2beta1 REST API it uses.

No Kubeflow cluster can run here, so this is a contract test: the real kfp client
talks HTTP to a server that keeps pipelines, versions, experiments and runs in
memory, and the test asserts on what reached the API (names, cron, concurrency,
parameters). What a real KFP server does beyond accepting these calls is not tested.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from rstar_math.cli import main

ROOT = Path(__file__).resolve().parents[1]


class FakeKfp:
    def __init__(self):
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []


def _handler(state: FakeKfp):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, body: dict, status: int = 200):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _filter_name(self, query) -> str | None:
            raw = query.get("filter", [None])[0]
            if not raw:
                return None
            predicates = json.loads(raw)["predicates"]
            return next((p.get("string_value") or p.get("stringValue") for p in predicates), None)

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            state.requests.append(("GET", url.path))
            if url.path == "/apis/v2beta1/healthz":
                return self._send({"multi_user": False})
            if url.path == "/apis/v2beta1/pipelines":
                name = self._filter_name(query)
                found = [p for p in state.pipelines.values() if name is None or p["display_name"] == name]
                return self._send({"pipelines": found, "total_size": len(found)})
            if match := re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", url.path):
                versions = sorted(state.versions.get(match.group(1), []), key=lambda v: v["created_at"], reverse=True)
                return self._send({"pipeline_versions": versions, "total_size": len(versions)})
            if url.path == "/apis/v2beta1/experiments":
                name = self._filter_name(query)
                found = [e for e in state.experiments.values() if name is None or e["display_name"] == name]
                return self._send({"experiments": found, "total_size": len(found)})
            if url.path == "/apis/v2beta1/recurringruns":
                return self._send({"recurringRuns": list(state.recurring.values())})
            if url.path == "/apis/v2beta1/runs":
                return self._send({"runs": list(state.runs.values())})
            return self._send({"error": f"unknown path {url.path}"}, 404)

        def do_POST(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            body = self._body()
            state.requests.append(("POST", url.path))
            now = f"2026-11-23T00:00:{len(state.requests):02d}Z"
            if url.path in ("/apis/v2beta1/pipelines/upload", "/apis/v2beta1/pipelines/upload_version"):
                assert b"pipelineInfo" in body  # the compiled pipeline travelled in the multipart body
                if url.path.endswith("/upload"):
                    pid = uuid.uuid4().hex
                    state.pipelines[pid] = {"pipeline_id": pid, "display_name": query["name"][0], "created_at": now}
                    state.versions[pid] = []
                    name = query["name"][0]
                else:
                    pid, name = query["pipelineid"][0], query["name"][0]
                version = {"pipeline_id": pid, "pipeline_version_id": uuid.uuid4().hex, "display_name": name,
                           "created_at": now}
                state.versions[pid].append(version)
                return self._send(state.pipelines[pid] if url.path.endswith("/upload") else version)
            payload = json.loads(body or b"{}")
            if url.path == "/apis/v2beta1/experiments":
                eid = uuid.uuid4().hex
                state.experiments[eid] = {"experiment_id": eid, **payload}
                return self._send(state.experiments[eid])
            if url.path == "/apis/v2beta1/recurringruns":
                rid = uuid.uuid4().hex
                state.recurring[rid] = {"recurring_run_id": rid, **payload}
                return self._send(state.recurring[rid])
            if url.path == "/apis/v2beta1/runs":
                rid = uuid.uuid4().hex
                state.runs[rid] = {"run_id": rid, "state": "PENDING", "created_at": now, **payload}
                return self._send(state.runs[rid])
            return self._send({"error": f"unknown path {url.path}"}, 404)

        def do_DELETE(self):
            state.requests.append(("DELETE", urlparse(self.path).path))
            rid = urlparse(self.path).path.rsplit("/", 1)[-1]
            state.recurring.pop(rid, None)
            return self._send({})

    return Handler


@pytest.fixture
def kfp_server(monkeypatch):
    state = FakeKfp()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("KFP_HOST", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("KFP_TOKEN", "test-token")
    yield state
    server.shutdown()


PIPELINE = str(ROOT / "pipelines" / "self_evolution.yaml")


def test_upload_creates_the_pipeline_then_adds_versions(kfp_server):
    assert main(["kfp", "upload", "--pipeline-file", PIPELINE, "--name", "rstar-self-evolution"]) == 0
    assert main(["kfp", "upload", "--pipeline-file", PIPELINE, "--name", "rstar-self-evolution", "--version", "0.2.0"]) == 0
    [pipeline] = kfp_server.pipelines.values()
    assert pipeline["display_name"] == "rstar-self-evolution"
    assert [v["display_name"] for v in kfp_server.versions[pipeline["pipeline_id"]]] == ["rstar-self-evolution", "0.2.0"]


def test_schedule_replaces_the_recurring_run_with_no_overlap(kfp_server):
    main(["kfp", "upload", "--pipeline-file", PIPELINE, "--name", "rstar-self-evolution"])
    args = ["kfp", "schedule", "--name", "nightly", "--cron", "0 0 2 * * *", "--experiment", "rstar",
            "--param", "preset=paper", "--param", "rounds=2", "--param", 'gpu_tolerations=[{"key": "gpu", "operator": "Exists"}]',
            "--param", "config_overrides=search.candidates=4\nrounds=2", "--param", "flag=yes"]
    assert main(args) == 0
    assert main(args[:5] + ["0 30 3 * * *"] + args[6:]) == 0  # an update: the old one goes
    [run] = kfp_server.recurring.values()
    assert run["display_name"] == "nightly" and run["max_concurrency"] in ("1", 1)
    assert run["trigger"]["cron_schedule"]["cron"] == "0 30 3 * * *"
    params = run["runtime_config"]["parameters"]
    assert params["rounds"] == 2 and params["preset"] == "paper"
    assert params["gpu_tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert params["config_overrides"] == "search.candidates=4\nrounds=2" and params["flag"] == "yes"  # strings stay strings
    assert [e["display_name"] for e in kfp_server.experiments.values()] == ["rstar"]
    deleted = [path for method, path in kfp_server.requests if method == "DELETE"]
    assert len(deleted) == 1 and not deleted[0].endswith(run["recurring_run_id"])


def test_uploading_an_existing_version_is_a_no_op(kfp_server):
    for _ in range(2):
        assert main(["kfp", "upload", "--pipeline-file", PIPELINE, "--name", "p", "--version", "1.0.0-r1"]) == 0
    [versions] = kfp_server.versions.values()
    assert [v["display_name"] for v in versions] == ["p", "1.0.0-r1"]


def test_submit_and_list_runs(kfp_server, capsys):
    main(["kfp", "upload", "--pipeline-file", PIPELINE, "--name", "rstar-self-evolution"])
    assert main(["kfp", "submit", "--run-name", "try-1", "--param", "rounds=1"]) == 0
    [run] = kfp_server.runs.values()
    assert run["display_name"] == "try-1" and run["runtime_config"]["parameters"]["rounds"] == 1
    assert main(["kfp", "runs"]) == 0
    assert "try-1" in capsys.readouterr().out


def test_scheduling_an_unknown_pipeline_is_a_clear_error(kfp_server, capsys):
    assert main(["kfp", "schedule", "--name", "n", "--cron", "0 0 2 * * *"]) == 2
    assert "rstar kfp upload" in capsys.readouterr().err
