"""Sandboxed execution of policy-written Python steps: warm workers, one forked, isolated child per step.

    from rstar_math.sandbox import ExecRequest, ExecutorPool

    with ExecutorPool.from_config(cfg.sandbox) as pool:
        results = pool.run_batch([ExecRequest(code=step_code, prefix=earlier_ok_code)])
        pool.isolation.active()   # the layers enforced on this machine

Every line the policy writes is untrusted and runs thousands of times per problem, so a
step costs a fork of a warm interpreter, not a new Python: a full-tier worker (numpy and
sympy preloaded) for programs that name numpy or sympy, a light one (the standard library's
math modules) for the rest, whose fork costs about half.

Enforced in-process, everywhere (any user; Linux >= 5.3):
  - a fresh forked child per step: nothing a step does survives it; its own session and
    process group; its own temp dir as cwd/HOME/TMPDIR, removed afterwards
  - a wall-clock timeout, then SIGKILL for the process group (and, with a dedicated uid,
    every process of that uid); the worker is a child subreaper, so orphans and setsid()
    escapes come back to it and are killed and reaped: no process outlives its step
  - rlimits: address space (memory_mb beyond the preloaded worker), CPU seconds, file size,
    open files, no core files, processes+threads (RLIMIT_NPROC: exact only with a dedicated
    uid; the kernel never applies it to uid 0)
  - stdout read through a pipe with a byte cap (the step is killed past it) and returned cut
    to max_output_chars; the prefix's output discarded; the structured result on a second
    pipe, size-bounded, never unpickled
  - an allow-listed environment (no AWS_*, tokens or anything else of the parent's)
  - PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG (a step dies with its worker), no capabilities
  - fail closed: a layer that applied at worker start-up but fails for one step makes that
    step refuse to run (status killed)
  - determinism: fixed PYTHONHASHSEED, random and numpy's global RNG seeded with 0,
    single-threaded BLAS/OpenMP

Enforced only where privileges or the kernel allow (each is reported by `pool.isolation`):
  - dedicated uid (root only): each worker's steps setuid to their own unprivileged uid
    (60000 and up, claimed per host) with no groups: no root file access, no signals to the
    pool or other workers, RLIMIT_NPROC counts only that worker's step, and after each step a
    reaper that becomes that uid kill(-1)s whatever is left
  - network namespace: unshare(CLONE_NEWNET) as root, or inside a user namespace where
    unprivileged ones are allowed; steps see only a loopback that is down (no TCP, UDP, DNS,
    no cloud metadata endpoint)
  - Landlock (ABI 1, Linux >= 5.13): read-only access to the Python installation, sys.path
    and the loaded shared libraries; read-write only to the step's own temp dir; everything
    else (/etc, /proc, /tmp, home directories, other steps) denied. ABI >= 4 (Linux 6.7): TCP
    bind/connect denied even without a network namespace. ABI >= 6 (Linux 6.12): signals and
    abstract unix sockets confined to the step's own processes, so a step cannot kill its
    worker even without a dedicated uid

Added by the Kubernetes side (helm/, manifests/, the pipeline's pod settings; not this
package): a NetworkPolicy that limits the egress of the pods that run steps to DNS, the
object store and the KFP services their launcher needs (steps themselves have no network
at all where the network namespace applies); a non-root user; seccomp RuntimeDefault and
no privilege escalation (KFP's defaults); a read-only root filesystem where the platform
sets one; a pod pids limit (the real process bound where there is no dedicated uid);
memory and CPU limits equal to the requests (the cgroup OOM killer behind RLIMIT_AS);
optionally a gVisor runtimeClass (docs/deploy.md).

Not covered:
  - this is not a security boundary against kernel exploits: steps share the host kernel and
    can make any syscall seccomp allows (ctypes is importable); for hostile code use gVisor
    or a VM
  - no seccomp filter or per-step cgroup of its own: memory is bounded as address space, not
    resident memory; disk only per file (max_file_mb) and by the timeout; CPU by time, so a
    step may saturate its worker's core until the timeout
  - side channels (timing, caches) and anything a step prints about itself
  - without Landlock a step reads what its uid may read (without a dedicated uid, that is
    everything the pool's user may read, /proc/<pool pid>/environ included); without a
    network namespace only Landlock's TCP rule remains (UDP open)
  - as root with sandbox_uid_base=None steps run as uid 0 without capabilities: they own
    root's files and RLIMIT_NPROC does not bind them; keep the default
  - a step can import only what its uid can read: where Python lives in a private directory
    (pyenv under a 0700 /root) only the preloaded modules are importable; the worker warns.
    Light workers preload fewer standard-library modules than full ones (numpy and sympy
    import many), so there a module such as hashlib may import on one tier and not the
    other; where the installation is readable (the image) both import it
  - determinism stops at id()/default reprs (they differ between workers), unseeded
    generators (numpy.random.default_rng()) and the clock
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rstar_math.sandbox.pool import ExecutorPool, Isolation, PoolStats, SandboxError
    from rstar_math.sandbox.protocol import ExecRequest, ExecResult, ExecStatus, SandboxLimits, Tier

# Resolved on first use: the worker imports this package, and every module it holds makes
# each execution's fork dearer (pool.py brings subprocess, sockets and threads).
_EXPORTS = {
    "ExecRequest": "protocol",
    "ExecResult": "protocol",
    "ExecStatus": "protocol",
    "SandboxLimits": "protocol",
    "Tier": "protocol",
    "ExecutorPool": "pool",
    "Isolation": "pool",
    "PoolStats": "pool",
    "SandboxError": "pool",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
