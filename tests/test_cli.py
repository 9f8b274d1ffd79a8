"""The `rstar` command line: intake from S3, lineage audits, the local S3 server, config printing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import boto3
import pytest
import yaml

from rstar_math.cli import main
from rstar_math.data.schemas import PROBLEMS
from rstar_math.stages.io import read_artifact_table
from rstar_math.store import join, store_for

GSM8K = b'{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\\n#### 7"}\n'
MATH = b'[{"problem": "What is $\\\\frac{1}{2} + \\\\frac{1}{2}$?", "solution": "It is $\\\\boxed{1}$.", "level": "Level 1"}]'


def test_intake_from_s3_records_the_files_as_roots(s3_root, capsys):
    store = store_for(s3_root)
    store.write_bytes(join(s3_root, "inbox", "gsm8k.jsonl"), GSM8K)
    store.write_bytes(join(s3_root, "inbox", "math.json"), MATH)
    out = join(s3_root, "run", "problems")
    code = main(["intake", join(s3_root, "inbox", "gsm8k.jsonl"), join(s3_root, "inbox", "math.json"),
                 "--out", out, "--run-id", "r1"])
    assert code == 0 and "2 problems" in capsys.readouterr().out
    table = read_artifact_table(out, PROBLEMS)
    assert sorted(table.column("answer").to_pylist()) == ["1", "7"]
    assert main(["lineage", out]) == 0
    text = capsys.readouterr().out
    assert [line for line in text.splitlines() if " root " in line and line.endswith("gsm8k.jsonl")]
    assert [line for line in text.splitlines() if " root " in line and line.endswith("math.json")]


def test_lineage_command_fails_on_a_tampered_input(tmp_path, capsys):
    source = tmp_path / "p.jsonl"
    source.write_bytes(GSM8K)
    out = str(tmp_path / "problems")
    assert main(["intake", str(source), "--out", out]) == 0
    source.write_bytes(GSM8K.replace(b"#### 7", b"#### 8"))
    assert main(["lineage", out, "--json"]) == 1
    assert "changed since" in capsys.readouterr().out


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert main(["intake", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["config", "nope"]) == 2


def test_config_prints_a_preset_with_overrides(capsys):
    assert main(["config", "paper", "--set", "rounds=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["rounds"] == 2 and printed["search"]["candidates"] == [8]


def test_s3_server_command_serves_until_interrupted(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "rstar_math.cli", "s3-server", "--root", str(tmp_path), "--port", "0",
         "--bucket", "b1", "--access-key", "AKLOCALTEST1", "--secret-key", "secret-local-test"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        first = process.stdout.readline()
        endpoint = re.search(r"http://[\d.:]+", first).group(0)
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="AKLOCALTEST1",
                              aws_secret_access_key="secret-local-test", region_name="us-east-1")
        client.put_object(Bucket="b1", Key="hello.txt", Body=b"hi")
        assert (tmp_path / "b1" / "hello.txt").read_bytes() == b"hi"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    with pytest.raises(Exception):
        client.list_buckets()  # the server is gone with the command
