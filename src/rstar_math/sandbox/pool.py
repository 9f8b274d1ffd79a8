"""ExecutorPool: warm sandbox workers that run policy-written Python steps, in batches.

    from rstar_math.sandbox import ExecRequest, ExecutorPool, SandboxLimits

    with ExecutorPool(SandboxLimits(timeout_s=5)) as pool:
        [result] = pool.run_batch([ExecRequest(code="print(x * 2)", prefix="x = 21")])
        result.status, result.stdout          # ExecStatus.OK, "42\\n"
        pool.isolation.active()               # the layers this machine enforces
        pool.stats                            # executions, cache hits, workers replaced, time

The pool starts N workers of each tier (`python -m rstar_math.sandbox.worker`, default N
= one per CPU core): full workers hold numpy and sympy, light ones only the standard
library and fork in about half the time; a program runs on the tier its text asks for
(`protocol.tier_of`: does it name numpy, sympy or mpmath?). N threads drive them, so a
batch keeps every core busy and never runs more than N executions at once; results
come back in input order. A worker that dies, hangs past timeout + a grace period, or
breaks the protocol is killed and replaced; the request it held is retried once on the
fresh worker and then reported as `killed`, and the pool keeps serving.

Results are deterministic (fixed hash seed, seeded random/numpy, a pristine forked
interpreter per execution), so an in-run cache keyed by sha256(prefix, code, limits)
answers repeated programs, also duplicates within one batch; `cache_size=0` turns it off.

Output: stdout is returned cut to `max_output_chars` (with `truncated=True`). A step
only gets `output_limit` when it keeps printing past a hard cap,
`SandboxLimits.output_cap_bytes` = max(64 x max_output_chars, 1 MiB) bytes; it is killed
there, so printing 100 MB costs milliseconds, not the timeout.

Running as root, each worker gets its own unprivileged uid (60000 and up, claimed as an
abstract unix-socket name, so pools on one host never share one and a dead pool's claim
goes with it). Execution dirs live under one dir per pool in `tmp_root`; a pool that died
without closing leaves it behind, and the next pool started there removes it. See the
package docstring for what each isolation layer does and does not cover.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import queue
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rstar_math.sandbox import isolation
from rstar_math.sandbox.protocol import (
    FRAME,
    ExecRequest,
    ExecResult,
    ExecStatus,
    SandboxLimits,
    Tier,
    encode_frame,
    tier_of,
)

if TYPE_CHECKING:
    from rstar_math.config import SandboxConfig

log = logging.getLogger(__name__)

_MAX_REPLY_BYTES = 16 << 20
_UID_SEARCH = 4096
_BASE_PREFIX = "rstar-sandbox-"
CLOSE_TIMEOUT_S = 5.0


class SandboxError(RuntimeError):
    """The pool could not start (or restart) its workers."""


@dataclass(frozen=True)
class Isolation:
    """Which isolation layers are in force, on every worker and every execution."""

    rlimits: bool = False
    clean_env: bool = False
    no_new_privs: bool = False
    parent_death_signal: bool = False
    no_capabilities: bool = False
    child_subreaper: bool = False
    network_namespace: bool = False
    dedicated_uid: bool = False
    landlock_fs: bool = False
    landlock_net: bool = False
    landlock_scope: bool = False
    landlock_abi: int = 0
    """The kernel's Landlock ABI (0: none), whether or not the layers applied."""
    sandbox_uids: tuple[int, ...] = ()

    def active(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if f.type == "bool" and getattr(self, f.name))

    @classmethod
    def from_reports(cls, reports: Iterable[dict[str, Any]]) -> Isolation:
        reports = list(reports)
        layers = set.intersection(*(set(r["layers"]) for r in reports)) if reports else set()
        flags = {f.name: f.name in layers for f in dataclasses.fields(cls) if f.type == "bool"}
        return cls(**flags, landlock_abi=min((r["landlock_abi"] for r in reports), default=0),
                   sandbox_uids=tuple(sorted(r["uid"] for r in reports if r["uid"] is not None)))


@dataclass(frozen=True)
class PoolStats:
    executions: int  # executions workers completed (a retry after a lost worker counts once)
    cache_hits: int
    workers_replaced: int
    exec_time_s: float  # summed duration of those executions


class _WorkerLost(Exception):
    """The worker died, hung or broke the protocol."""


class _Worker:
    """One worker process and its pipes. Used by one thread at a time."""

    def __init__(self, slot_dir: str, uid: int | None, limits: SandboxLimits, tier: Tier):
        settings = {"slot_dir": slot_dir, "uid": uid, "limits": dataclasses.asdict(limits), "tier": tier.value}
        env = isolation.sandbox_env(home=slot_dir)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # rstar_math importable even when not installed
        self.proc = subprocess.Popen(
            [sys.executable, "-s", "-m", "rstar_math.sandbox.worker", json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=slot_dir,
            start_new_session=True, close_fds=True, bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self._in, False)  # a hung worker must not block us on a full pipe
        self.report: dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        frame = self._read_frame(time.monotonic() + timeout)
        if frame.get("ready") is not True or not isinstance(frame.get("isolation"), dict):
            raise _WorkerLost(f"unexpected first frame {frame!r:.200}")
        self.report = frame["isolation"]

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        data = memoryview(encode_frame(request))
        while data:
            self._wait(self._in, select.POLLOUT, deadline)
            try:
                data = data[os.write(self._in, data) :]
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _WorkerLost(f"writing the request failed: {exc}") from None
        return self._read_frame(deadline)

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def stop(self, timeout: float) -> None:
        """End of input makes the worker exit after its current execution."""
        self._close_pipes()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        poller = select.poll()
        poller.register(fd, event)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerLost("no answer before the deadline")
            if poller.poll(math.ceil(remaining * 1000)):
                return

    def _read_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self._wait(self._out, select.POLLIN, deadline)
            chunk = os.read(self._out, n - len(buf))
            if not chunk:
                raise _WorkerLost(f"the worker exited (code {self.proc.poll()})")
            buf += chunk
        return bytes(buf)

    def _read_frame(self, deadline: float) -> dict[str, Any]:
        (size,) = FRAME.unpack(self._read_exact(FRAME.size, deadline))
        if size > _MAX_REPLY_BYTES:
            raise _WorkerLost(f"oversized reply ({size} bytes)")
        try:
            frame = json.loads(self._read_exact(size, deadline))
        except ValueError as exc:
            raise _WorkerLost(f"unreadable reply: {exc}") from None
        if not isinstance(frame, dict):
            raise _WorkerLost("reply is not an object")
        return frame


def _result(reply: dict[str, Any]) -> ExecResult:
    try:
        result = ExecResult(ExecStatus(reply["status"]), reply["stdout"], reply["error"], float(reply["duration_s"]),
                            reply["truncated"])
    except (KeyError, ValueError, TypeError) as exc:
        raise _WorkerLost(f"malformed reply: {exc}") from None
    if not (isinstance(result.stdout, str) and isinstance(result.error, str) and isinstance(result.truncated, bool)):
        raise _WorkerLost("malformed reply")
    return result


def _claim(name: str) -> socket.socket | None:
    """Hold `name` in the abstract unix-socket namespace: a lock across the network namespace
    (the host, or the pod) that the kernel releases when its holder dies, with no file left
    behind. None if taken."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0{name}")
    except OSError:
        sock.close()
        return None
    return sock


def _claim_uids(n: int, first: int) -> tuple[list[int], list[socket.socket]]:
    """n sandbox uids that no other pool on this host holds, and the claims that hold them."""
    uids: list[int] = []
    claims: list[socket.socket] = []
    for uid in range(first, first + _UID_SEARCH):
        claim = _claim(f"rstar-sandbox-uid-{uid}")
        if claim is not None:
            uids.append(uid)
            claims.append(claim)
            if len(uids) == n:
                return uids, claims
    for claim in claims:
        claim.close()
    raise SandboxError(f"no {n} free sandbox uids in {first}..{first + _UID_SEARCH}")


def _remove_stale_dirs(tmp_root: str) -> None:
    """Remove the temp dirs of pools that died without closing. A pool creates and flocks
    `<dir>.lock` before its dir exists and removes it after the dir is gone, so a dir whose
    lock is free or missing belongs to no living pool."""
    for entry in os.scandir(tmp_root):
        if not (entry.name.startswith(_BASE_PREFIX) and entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_uid == os.geteuid()):
            continue
        lock = f"{entry.path}.lock"
        try:
            fd: int | None = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        except OSError:
            continue
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a living pool
        log.info("removing %s, left by a pool that died", entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)


def _make_base(tmp_root: str) -> tuple[str, int]:
    """A fresh pool dir and the locked fd of its `.lock`, taken before the dir exists."""
    base = os.path.join(tmp_root, f"{_BASE_PREFIX}{uuid.uuid4().hex[:12]}")
    fd = os.open(f"{base}.lock", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.mkdir(base)
    os.chmod(base, 0o711)  # sandbox uids must traverse to their own dirs, and list nothing
    return base, fd


def _shutdown(workers: list[_Worker], base: str, base_lock: int, uids: list[int | None],
              claims: list[socket.socket]) -> None:
    for worker in workers:
        worker.stop(timeout=CLOSE_TIMEOUT_S)
    for uid in uids:
        if uid is not None:
            isolation.kill_uid(uid)  # leftovers of a worker that was killed mid-execution
    shutil.rmtree(base, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.unlink(f"{base}.lock")
    os.close(base_lock)
    for claim in claims:
        claim.close()


class ExecutorPool:
    """Warm sandbox workers behind a batched, thread-safe API. Use as a context manager."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        workers: int | None = None,
        *,
        cache_size: int = 100_000,
        light_tier: bool = True,
        sandbox_uid_base: int | None = 60000,
        tmp_root: str | None = None,
        start_timeout_s: float = 120.0,
        reply_grace_s: float = 15.0,
    ):
        """`workers`: default one per CPU core. `cache_size`: results kept (LRU), 0 = no cache.
        `light_tier`: next to each full worker (numpy and sympy preloaded) start a light one
        (standard library only) for the programs that never name numpy or sympy, whose forks
        cost about half; at most `workers` executions still run at a time. False: one tier.
        `sandbox_uid_base`: first uid tried for workers when running as root (None: keep the
        pool's uid). `tmp_root`: where execution dirs go (default: the system temp dir).
        `reply_grace_s`: beyond the timeout, how long a worker may take to answer before it
        counts as hung (its own clean-up of leftover processes may take up to 5 s)."""
        self.limits = limits or SandboxLimits()
        n = workers or os.cpu_count() or 1
        self._tiers = [Tier.FULL] * n + ([Tier.LIGHT] * n if light_tier else [])
        self._start_timeout_s = start_timeout_s
        self._reply_timeout_s = self.limits.timeout_s + reply_grace_s
        self._cache_size = cache_size
        self._cache: OrderedDict[str, ExecResult] = OrderedDict()
        self._lock = threading.Lock()
        self._executions = self._cache_hits = self._replaced = 0
        self._exec_time = 0.0
        tmp_root = tmp_root or tempfile.gettempdir()
        _remove_stale_dirs(tmp_root)
        self._base, base_lock = _make_base(tmp_root)
        self._uids: list[int | None] = []
        self._workers: list[_Worker] = []
        claims: list[socket.socket] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._base, base_lock, self._uids, claims)
        try:
            if sandbox_uid_base is not None and os.geteuid() == 0:
                uids, held = _claim_uids(len(self._tiers), sandbox_uid_base)
                self._uids.extend(uids)
                claims.extend(held)
            else:
                self._uids.extend([None] * len(self._tiers))
            self._slots = [os.path.join(self._base, f"{tier.value}{i % n}") for i, tier in enumerate(self._tiers)]
            for slot in self._slots:
                os.mkdir(slot, 0o711)
            self._workers.extend(_Worker(slot, uid, self.limits, tier)
                                 for slot, uid, tier in zip(self._slots, self._uids, self._tiers, strict=True))
            for worker in self._workers:
                worker.wait_ready(start_timeout_s)
        except (_WorkerLost, OSError, SandboxError) as exc:
            self.close()
            raise SandboxError(f"sandbox workers did not start: {exc}") from exc
        self._idle: dict[Tier, queue.SimpleQueue[int]] = {tier: queue.SimpleQueue() for tier in set(self._tiers)}
        for i, tier in enumerate(self._tiers):
            self._idle[tier].put(i)
        # n threads: at most n executions at a time, whichever tier each needs.
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox")
        log.info("sandbox pool: %d workers (%s), isolation: %s", len(self._tiers),
                 ", ".join(sorted({t.value for t in self._tiers})), ", ".join(self.isolation.active()))

    @classmethod
    def from_config(cls, config: SandboxConfig, **kwargs: Any) -> ExecutorPool:
        return cls(SandboxLimits.from_config(config), config.workers or None, **kwargs)

    def __enter__(self) -> ExecutorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers, kill whatever is left on the sandbox uids, remove the temp dirs."""
        if hasattr(self, "_threads"):
            self._threads.shutdown(wait=True)
        self._finalizer()

    @property
    def isolation(self) -> Isolation:
        return Isolation.from_reports(w.report for w in self._workers)

    @property
    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(self._executions, self._cache_hits, self._replaced, self._exec_time)

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(w.proc.pid for w in self._workers)

    def worker_pids_of(self, tier: Tier) -> tuple[int, ...]:
        return tuple(w.proc.pid for w, t in zip(self._workers, self._tiers, strict=True) if t is tier)

    def tier_for(self, request: ExecRequest) -> Tier:
        """The tier whose worker runs `request` (always full without a light tier)."""
        return tier_of(request) if Tier.LIGHT in self._idle else Tier.FULL

    @property
    def workdir_root(self) -> str:
        """The directory under which every execution's temp dir is made (and removed)."""
        return self._base

    def run(self, code: str, prefix: str = "") -> ExecResult:
        return self.run_batch([ExecRequest(code, prefix)])[0]

    def run_batch(self, requests: Sequence[ExecRequest]) -> list[ExecResult]:
        """Run every request; results in input order."""
        if not self._finalizer.alive:
            raise RuntimeError("the pool is closed")
        results: list[ExecResult | None] = [None] * len(requests)
        jobs: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            key = self._key(request) if self._cache_size else str(i)
            cached = self._cache_get(key) if self._cache_size else None
            if cached is not None:
                results[i] = cached
            elif key in jobs:  # a duplicate within the batch (only with the cache on)
                jobs[key].append(i)
                with self._lock:
                    self._cache_hits += 1
            else:
                jobs[key] = [i]
        items = list(jobs.items())
        if len(items) == 1:
            outcomes = [self._run_one(requests[items[0][1][0]])]
        else:
            outcomes = list(self._threads.map(lambda item: self._run_one(requests[item[1][0]]), items))
        for (key, indices), (result, cacheable) in zip(items, outcomes, strict=True):
            for i in indices:
                results[i] = result
            if self._cache_size and cacheable:
                self._cache_put(key, result)
        return results  # type: ignore[return-value]  # every slot is filled above

    # -- internals ----------------------------------------------------------------------------

    def _key(self, request: ExecRequest) -> str:
        text = f"{request.prefix}\0{request.code}\0{self.limits!r}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def _cache_get(self, key: str) -> ExecResult | None:
        with self._lock:
            result = self._cache.get(key)
            if result is not None:
                self._cache.move_to_end(key)
                self._cache_hits += 1
            return result

    def _cache_put(self, key: str, result: ExecResult) -> None:
        with self._lock:
            self._cache[key] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _run_one(self, request: ExecRequest) -> tuple[ExecResult, bool]:
        """Run on an idle worker; retry once on a fresh worker if it is lost. -> (result, cacheable)"""
        idle = self._idle[self.tier_for(request)]
        index = idle.get()
        try:
            payload = {"code": request.code, "prefix": request.prefix}
            for attempt in range(2):
                if not self._workers[index].alive:
                    self._replace(index, "found dead")
                try:
                    result = _result(self._workers[index].call(payload, self._reply_timeout_s))
                except _WorkerLost as exc:
                    self._replace(index, f"lost on attempt {attempt + 1}: {exc}")
                    continue
                with self._lock:
                    self._executions += 1
                    self._exec_time += result.duration_s
                return result, True
            lost = ExecResult(ExecStatus.KILLED, "", "Killed: the sandbox worker died twice running this step",
                              0.0, False)
            return lost, False
        finally:
            idle.put(index)

    def _replace(self, index: int, why: str) -> None:
        """Kill worker `index` and start a fresh one in its place (it takes over the slot once ready)."""
        old = self._workers[index]
        log.warning("sandbox worker %d (pid %d) %s; replacing it", index, old.proc.pid, why)
        old.kill()
        with self._lock:
            self._replaced += 1
        worker = _Worker(self._slots[index], self._uids[index], self.limits, self._tiers[index])
        try:
            worker.wait_ready(self._start_timeout_s)
        except _WorkerLost as exc:
            worker.kill()
            raise SandboxError(f"a replacement sandbox worker did not start: {exc}") from exc
        self._workers[index] = worker
