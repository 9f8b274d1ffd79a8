"""The warm sandbox worker: preloads the math libraries once, then forks a fresh child per execution.

A worker is of one tier (`protocol.Tier`): light workers preload the standard library's
math modules (PRELOAD) and refuse numpy, sympy and mpmath; full workers also hold those
(PRELOAD_FULL). The pool sends each program to the tier its text asks for.

Started only by ExecutorPool, as

    python -s -m rstar_math.sandbox.worker '<settings json>'

in its own session, with the environment of `isolation.sandbox_env` (fixed PYTHONHASHSEED,
numeric libraries single-threaded) and pipes on stdin/stdout. Protocol: frames of a
4-byte big-endian length and a UTF-8 JSON object; the worker first sends
`{"ready": true, "pid": ..., "isolation": {...}}`, then answers every request
`{"code": ..., "prefix": ...}` with one result `{"status", "stdout", "error",
"duration_s", "truncated"}`, and exits at end of input. Nothing is ever unpickled, and
whatever a child sends back is parsed with a size bound.

Once, at start: become a child subreaper, enter an empty network namespace, import
the stdlib math modules (full tier: also sympy/numpy, warming sympy.solve/simplify so lazy
submodules are loaded before any child loses the right to read them, and seeding numpy's
global generator, which numpy does not reseed at fork), drop to the allow-listed
environment, kill whatever a predecessor left on this worker's uid, open the Landlock
read-only paths, freeze the heap for the GC and fold it into huge pages (cheaper forks),
then run one probe execution: the layers it manages to apply become required, and a later
child that cannot apply one of them refuses to run its code (fail closed).

Per execution: a fresh temp dir, a forked child (new session; isolation layers; `prefix`
run with stdout/stderr on /dev/null, then `code` with stdout on a pipe, both in one fresh
`__main__` namespace, random seeded with 0), the child's stdout read with a byte
cap, its structured result read from a second pipe, a wall-clock deadline, then SIGKILL for
its process group. The worker is a child subreaper, so any process that outlived the group
(a setsid() escape, a double fork) is still its descendant: while waitpid(-1) finds one, a
reaper that setuid()s to the worker's sandbox uid kill(-1)s everything of that uid (without
a dedicated uid: SIGKILL to each child of the worker), and every zombie is reaped. Then the
temp dir is removed. Needs Linux >= 5.3 (pidfd_open).

Outcomes: ok; error (an exception, as Python prints its last line, e.g.
"NameError: name 'x' is not defined"; SystemExit with a non-zero code); timeout (wall
clock, or the CPU limit); memory (MemoryError, or death by signal at the memory limit);
output_limit (more than `SandboxLimits.output_cap_bytes` printed); killed (death by a
signal, an exit without a result such as os._exit, a closed result pipe, or isolation that
could not be applied). A step that prints nothing is ok with empty stdout.
"""

from __future__ import annotations

import builtins
import ctypes
import gc
import importlib
import io
import json
import logging
import math
import os
import random
import select
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
import types
from typing import Any, NoReturn

from rstar_math.sandbox import isolation
from rstar_math.sandbox.protocol import FRAME, FULL_TIER_MODULES, ExecStatus, SandboxLimits, Tier, encode_frame

log = logging.getLogger("rstar_math.sandbox.worker")

PRELOAD = (
    "math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "collections", "re",
    "random", "string", "heapq", "bisect", "operator", "copy", "datetime", "calendar", "json", "dataclasses",
    "numbers", "typing", "array", "struct", "textwrap", "pprint",
    "os", "time", "signal", "threading", "socket",
)
"""Imported by every worker before any child exists: children find them in memory and never
read them from disk. The math modules policy code uses, and the system modules a step (or a
hostile one) reaches for, so that on a host where the step's uid cannot read the Python
installation, isolation, not a missing module, is what stops it."""
PRELOAD_FULL = ("numpy", "numpy.linalg", "numpy.random", "numpy.polynomial", "sympy")
"""Imported by full-tier workers only."""

MAX_REQUEST_BYTES = 64 << 20
_MADV_COLLAPSE = 25
_MAX_FD = 1 << 20  # above any RLIMIT_NOFILE a worker inherits; closerange stops at the last open fd
CLEANUP_S = 5.0
"""How long the worker keeps killing an execution's leftover processes before giving up."""

_CHILD_STATUSES = {ExecStatus.OK.value, ExecStatus.ERROR.value, ExecStatus.MEMORY.value, ExecStatus.KILLED.value}


# -- framing ------------------------------------------------------------------------------


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(fd: int, limit: int) -> dict[str, Any] | None:
    """One frame from a blocking fd; None at end of input. Frames over `limit` are an error."""
    header = _read_exact(fd, FRAME.size)
    if header is None:
        return None
    (size,) = FRAME.unpack(header)
    if size > limit:
        raise ValueError(f"frame of {size} bytes exceeds {limit}")
    body = _read_exact(fd, size)
    if body is None:
        return None
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ValueError("frame is not a JSON object")
    return obj


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- start-up -----------------------------------------------------------------------------


class _FullTierOnly:
    """A meta path finder for light-tier workers: numpy, sympy and mpmath refuse to import
    (a program that names them runs on the full tier; one that imports them under another
    name gets this error on every run, never a slow import from disk)."""

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] in FULL_TIER_MODULES:
            raise ModuleNotFoundError(f"No module named {fullname!r} here: a program that imports it must name it",
                                      name=fullname)


def preload(tier: Tier) -> None:
    """Import and exercise what policy code uses, so children find it in memory."""
    for name in PRELOAD:
        importlib.import_module(name)
    if tier is Tier.LIGHT:
        sys.meta_path.insert(0, _FullTierOnly)  # type: ignore[arg-type]  # a finder need not subclass
        return
    for name in PRELOAD_FULL:
        importlib.import_module(name)
    import numpy
    import sympy

    x = sympy.Symbol("x")
    sympy.solve(2 * x - 4, x)
    sympy.solveset(x**2 - 1, x)
    sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
    sympy.factor(x**2 - 1), sympy.expand((x + 1) ** 3), sympy.nsimplify(0.5), sympy.N(sympy.pi, 20)
    sympy.factorint(360), sympy.isprime(97), sympy.Matrix([[1, 2], [3, 4]]).det(), sympy.summation(x, (x, 1, 10))
    numpy.linalg.solve(numpy.eye(2), numpy.ones(2))
    numpy.random.default_rng(0).random(2)
    numpy.random.seed(0)  # the global state every child starts from (numpy does not reseed at fork)


def collapse_to_huge_pages() -> int:
    """Fold the worker's populated anonymous memory into transparent huge pages
    (MADV_COLLAPSE, Linux >= 6.1), so fork and exit handle one page-table entry per 2 MiB
    instead of 512: about 40% off every execution. Best effort; returns the MiB collapsed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    huge, collapsed = 2 << 20, 0
    with open("/proc/self/maps") as fh:
        regions = [line.split() for line in fh]
    for fields in regions:
        if "w" not in fields[1] or (len(fields) > 5 and fields[5] != "[heap]"):
            continue  # only writable anonymous memory and the malloc heap
        low, high = (int(x, 16) for x in fields[0].split("-"))
        start, end = -(-low // huge) * huge, high // huge * huge
        if end > start and libc.madvise(start, end - start, _MADV_COLLAPSE) == 0:
            collapsed += (end - start) >> 20
    return collapsed


def _warn_if_unreadable(uid: int) -> None:
    """A dedicated uid can only import what "others" may read. Where the interpreter lives in
    a private directory (e.g. pyenv under a 0700 /root), anything not preloaded cannot be
    imported by the children; say so once instead of letting ModuleNotFoundError puzzle."""
    path = sysconfig.get_paths()["stdlib"]
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:
            log.warning("sandbox uid %d cannot traverse %s: only preloaded modules of %s are importable",
                        uid, path, sysconfig.get_paths()["stdlib"])
            return


def _vm_size() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _close_fds_except(keep: set[int]) -> None:
    """Close every fd above 2 but `keep` (close_range(2) between them: no /proc listing)."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _MAX_FD)


def _remove_tree(path: str) -> None:
    """Remove an execution's temp dir, even if the code made parts of it read-only."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    # Only reachable without root: the owner must give itself write permission back.
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            child = os.path.join(root, name)
            if not os.path.islink(child):
                os.chmod(child, 0o700)
    os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("could not remove %s", path)


# -- the child ----------------------------------------------------------------------------


def _describe(exc: BaseException, limit: int) -> str:
    """The last line Python prints for an uncaught exception, e.g. "ZeroDivisionError: division by zero"."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    try:
        message = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    except BaseException:
        message = "<exception str() failed>"
    return (f"{name}: {message}" if message else name)[:limit]


def _flush(stream: io.TextIOBase) -> None:
    try:
        stream.flush()
    except (OSError, ValueError):
        pass  # the code closed its stdout; what got through is its output


def _run_program(code: str, prefix: str, out_w: int, limit: int, main: types.ModuleType,
                 streams: tuple[io.TextIOWrapper, io.TextIOWrapper, io.TextIOWrapper]) -> tuple[str, str]:
    """Run `prefix` silently, then `code` with stdout on `out_w`, both in `main` (a fresh __main__)."""
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
    out = streams[1]
    sys.argv = [""]
    sys.modules["__main__"] = main
    tempfile.tempdir = None  # recomputed from TMPDIR (the execution's own dir)
    random.seed(0)  # after fork: random's at-fork hook has just reseeded it from the OS
    status, error = ExecStatus.OK.value, ""
    try:
        if prefix:
            exec(compile(prefix, "<prefix>", "exec", dont_inherit=True), main.__dict__)
        _flush(out)
        os.dup2(out_w, 1)
        os.close(out_w)
        exec(compile(code, "<step>", "exec", dont_inherit=True), main.__dict__)
    except SystemExit as exc:
        if exc.code is not None and exc.code != 0:
            status, error = ExecStatus.ERROR.value, _describe(exc, limit)
    except MemoryError as exc:
        status, error = ExecStatus.MEMORY.value, _describe(exc, limit)
    except BaseException as exc:
        status, error = ExecStatus.ERROR.value, _describe(exc, limit)
    _flush(out)
    return status, error


# -- the worker ---------------------------------------------------------------------------


class Worker:
    """State kept across executions; `execute` is the per-request entry point."""

    def __init__(self, limits: SandboxLimits, slot_dir: str, uid: int | None, tier: Tier):
        self.limits = limits
        self.slot_dir = slot_dir
        self.pid = os.getpid()
        self.layers = {name for name, on in (("child_subreaper", isolation.set_child_subreaper()),
                                             ("network_namespace", isolation.enter_network_namespace())) if on}
        preload(tier)
        if isolation.apply_env(isolation.sandbox_env(slot_dir)):  # children only set HOME and TMPDIR
            self.layers.add("clean_env")
        # Fresh streams for the children (never written here, so their buffers are empty).
        self.streams = (open(0, "r", encoding="utf-8", closefd=False),
                        open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False),
                        open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False))
        self.uid = uid if uid is not None and os.geteuid() == 0 else None
        if self.uid is not None:
            isolation.kill_uid(self.uid)  # whatever a killed predecessor on this uid left running
            _warn_if_unreadable(self.uid)
        for name in os.listdir(slot_dir):
            _remove_tree(os.path.join(slot_dir, name))
        self.landlock_abi = isolation.landlock_abi()
        readable = isolation.landlock_read_paths(exclude=slot_dir) if self.landlock_abi else []
        self.read_only = isolation.open_paths(readable)
        self.address_space = _vm_size() + (limits.memory_mb << 20)
        # Without a dedicated uid, RLIMIT_NPROC counts everything this user runs.
        self.processes = limits.max_processes + (0 if self.uid is not None else isolation.count_own_processes())
        self.count = 0
        self.required: frozenset[str] = frozenset()
        gc.freeze()  # children then never touch the preloaded objects' GC headers (fewer copy-on-write faults)
        collapse_to_huge_pages()
        probe, layers = self._execute("pass", "")
        if probe["status"] != ExecStatus.OK.value:
            raise RuntimeError(f"probe execution failed: {probe}")
        self.required = frozenset(layers)

    def report(self) -> dict[str, Any]:
        return {"layers": sorted(self.required | self.layers), "landlock_abi": self.landlock_abi, "uid": self.uid}

    def execute(self, code: str, prefix: str) -> dict[str, Any]:
        result, _ = self._execute(code, prefix)
        return result

    def _execute(self, code: str, prefix: str) -> tuple[dict[str, Any], list[str]]:
        self.count += 1
        workdir = os.path.join(self.slot_dir, f"x{self.count}")
        os.mkdir(workdir, 0o700)
        if self.uid is not None:
            os.chown(workdir, self.uid, self.uid)
        # Everything that can be prepared before the fork is: the child pays for every page
        # it touches (copy-on-write), the worker does not.
        ruleset = isolation.landlock_ruleset(self.landlock_abi, self.read_only, workdir)
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        out_r, out_w = os.pipe()
        res_r, res_w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self._child(code, prefix, workdir, out_w, res_w, ruleset, main)
        for fd in (out_w, res_w) + ((ruleset.fd,) if ruleset else ()):
            os.close(fd)
        try:
            return self._supervise(pid, out_r, res_r, start)
        finally:
            os.close(out_r)
            os.close(res_r)
            self._end_leftovers()
            _remove_tree(workdir)

    def _child(self, code: str, prefix: str, workdir: str, out_w: int, res_w: int,
               ruleset: isolation.LandlockRuleset | None, main: types.ModuleType) -> NoReturn:
        """The forked child: isolate, run, report through `res_w`, exit. Never returns."""
        me = os.getpid()
        status, error, layers = ExecStatus.KILLED.value, "SandboxError: the sandbox could not be set up", ""
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            _close_fds_except({out_w, res_w} | ({ruleset.fd} if ruleset else set()))
            os.chdir(workdir)
            os.environ["HOME"] = os.environ["TMPDIR"] = workdir  # the rest was scrubbed in the worker
            applied = set(self.layers)
            steps = [
                ("dedicated_uid", lambda: self.uid is not None and isolation.drop_privileges(self.uid)),
                ("parent_death_signal", lambda: isolation.set_parent_death_signal(self.pid)),
                ("no_capabilities", isolation.drop_capabilities),
                ("no_new_privs", isolation.set_no_new_privs),
                ("landlock_fs", lambda: ruleset is not None and isolation.landlock_restrict(ruleset)),
                ("rlimits", lambda: isolation.set_rlimits(
                    address_space_bytes=self.address_space, cpu_s=self.limits.cpu_s, processes=self.processes,
                    file_bytes=self.limits.max_file_mb << 20, open_files=self.limits.max_open_files)),
            ]
            for name, step in steps:
                if step():
                    applied.add(name)
            if "landlock_fs" in applied and ruleset is not None:
                applied.update(name for name, on in (("landlock_net", ruleset.net), ("landlock_scope", ruleset.scope))
                               if on)
            layers = ",".join(sorted(applied))
            missing = self.required - applied
            if missing:
                error = f"SandboxError: isolation layers did not apply: {', '.join(sorted(missing))}"
            else:
                status, error = _run_program(code, prefix, out_w, self.limits.max_output_chars, main, self.streams)
        except BaseException as exc:  # in the sandbox's own set-up: user code is caught in _run_program
            error = f"SandboxError: the sandbox could not be set up ({_describe(exc, 200)})"
        finally:
            if os.getpid() == me:  # processes the code forked end silently: only the child reports
                try:
                    write_all(res_w, f"{status}\0{layers}\0{error}".encode("utf-8", "backslashreplace"))
                except OSError:
                    pass  # the code closed the result pipe: reported as killed
            os._exit(0)

    def _supervise(self, pid: int, out_r: int, res_r: int, start: float) -> tuple[dict[str, Any], list[str]]:
        """Collect stdout and the result until the child exits, the deadline passes or the output cap is hit."""
        limits = self.limits
        keep, cap = 4 * limits.max_output_chars, limits.output_cap_bytes  # 4 bytes: the widest UTF-8 character
        report_cap = 16 * limits.max_output_chars + 4096
        stdout, report = bytearray(), bytearray()
        seen = 0
        reason: ExecStatus | None = None
        pidfd = os.pidfd_open(pid)
        try:
            poller = select.poll()
            for fd in (out_r, res_r, pidfd):
                poller.register(fd, select.POLLIN)
            deadline = start + limits.timeout_s
            exited = False
            while not exited and reason is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = ExecStatus.TIMEOUT
                    break
                for fd, _ in poller.poll(math.ceil(remaining * 1000)):
                    if fd == pidfd:
                        exited = True
                        continue
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        poller.unregister(fd)
                    elif fd == out_r:
                        seen += len(chunk)
                        stdout += chunk[: max(0, keep - len(stdout))]
                        if seen > cap:
                            reason = ExecStatus.OUTPUT_LIMIT
                    else:
                        report += chunk
                        if len(report) > report_cap:
                            poller.unregister(fd)  # not a report we would believe; judged by how it exits
            if reason is not None:
                os.kill(pid, signal.SIGKILL)
            # The child is alive or a zombie, so its pid (= its group id) cannot have been reused.
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, wstatus, rusage = os.wait4(pid, 0)
        finally:
            os.close(pidfd)
        duration = time.monotonic() - start
        if reason is not ExecStatus.OUTPUT_LIMIT:
            seen += _drain(out_r, stdout, keep, cap - seen)
        _drain(res_r, report, report_cap, report_cap)
        status, error, layers = self._classify(reason, wstatus, rusage, bytes(report))
        text = stdout.decode("utf-8", errors="replace")
        truncated = seen > len(stdout) or len(text) > limits.max_output_chars
        result = {"status": status.value, "stdout": text[: limits.max_output_chars], "error": error,
                  "duration_s": duration, "truncated": truncated}
        return result, layers

    def _classify(self, reason: ExecStatus | None, wstatus: int, rusage: Any,
                  report: bytes) -> tuple[ExecStatus, str, list[str]]:
        limits = self.limits
        if reason is ExecStatus.TIMEOUT:
            return reason, f"TimeoutError: the step ran longer than {limits.timeout_s:g} s", []
        if reason is ExecStatus.OUTPUT_LIMIT:
            return reason, f"OutputLimitError: the step printed more than {limits.output_cap_bytes} bytes", []
        parsed = _parse_report(report, limits.max_output_chars)
        if parsed is not None and os.WIFEXITED(wstatus):
            return parsed
        if os.WIFSIGNALED(wstatus):
            sig = os.WTERMSIG(wstatus)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and rusage.ru_utime + rusage.ru_stime >= limits.cpu_s):
                return ExecStatus.TIMEOUT, f"TimeoutError: the step used more than {limits.cpu_s} s of CPU", []
            name = signal.Signals(sig).name
            # At the memory limit: e.g. a C extension that aborts on a failed malloc.
            if rusage.ru_maxrss * 1024 >= 0.9 * (limits.memory_mb << 20):
                return ExecStatus.MEMORY, f"MemoryError: the step died of {name} at the memory limit", []
            return ExecStatus.KILLED, f"Killed: the step died of {name}", []
        code = os.WEXITSTATUS(wstatus)
        return ExecStatus.KILLED, f"Killed: the step exited with code {code} without reporting a result", []

    def _end_leftovers(self) -> None:
        """Kill and reap every process the execution left. As a subreaper, ECHILD from
        waitpid(-1) proves none is left, so the usual case costs one syscall."""
        deadline = time.monotonic() + CLEANUP_S
        while True:
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                return
            if time.monotonic() > deadline:
                log.warning("processes of an execution survived %.0f s of SIGKILL", CLEANUP_S)
                return
            if self.uid is not None:
                isolation.kill_uid(self.uid)
            else:
                isolation.kill_children(self.pid)
            time.sleep(0.001)


def _drain(fd: int, into: bytearray, keep: int, budget: int) -> int:
    """Read what is left in a pipe without blocking (descendants may still hold its write end)."""
    os.set_blocking(fd, False)
    read = 0
    while read < budget:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        read += len(chunk)
        into += chunk[: max(0, keep - len(into))]
    return read


def _parse_report(data: bytes, limit: int) -> tuple[ExecStatus, str, list[str]] | None:
    """The child's own report, `status NUL layer,layer NUL error`, if it is one we understand."""
    parts = data.decode("utf-8", errors="replace").split("\0", 2)
    if len(parts) != 3 or parts[0] not in _CHILD_STATUSES:
        return None
    return ExecStatus(parts[0]), parts[2][:limit], [x for x in parts[1].split(",") if x]


def main(argv: list[str]) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="sandbox worker %(process)d: %(message)s")
    settings = json.loads(argv[1])
    # The protocol keeps private copies of stdin/stdout; fds 0 and 1 become /dev/null so a
    # library that prints cannot corrupt it.
    requests, replies = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    sys.stdout = sys.stderr
    if sys.path and sys.path[0] == os.getcwd():  # `-m` puts the slot dir first; children have no use for it
        del sys.path[0]
    worker = Worker(SandboxLimits(**settings["limits"]), settings["slot_dir"], settings["uid"], Tier(settings["tier"]))
    write_all(replies, encode_frame({"ready": True, "pid": os.getpid(), "isolation": worker.report()}))
    while (request := read_frame(requests, MAX_REQUEST_BYTES)) is not None:
        code, prefix = request.get("code"), request.get("prefix", "")
        if not isinstance(code, str) or not isinstance(prefix, str):
            raise ValueError("a request needs string code and prefix")
        write_all(replies, encode_frame(worker.execute(code, prefix)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
