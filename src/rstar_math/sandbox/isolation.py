"""Isolation layers for sandboxed executions: one small function per layer, Linux only.

Every function tries its layer and reports whether it applied; none raises because a
kernel or a permission does not allow it, so a pool running as an unprivileged user
(Kubernetes without CAP_SYS_ADMIN) degrades layer by layer instead of crashing. The
worker (`worker.py`) uses them like this:

    once, in the worker
      sandbox_env() / apply_env()   an allow-listed environment (the pool starts the worker
                                    with it too); children only set HOME and TMPDIR
      set_child_subreaper()         orphaned descendants come back to the worker
      enter_network_namespace()     every child inherits an empty network namespace
      open_paths(landlock_read_paths())   what children may read, opened as the worker
    per execution, in the worker before the fork
      landlock_ruleset()            built from those fds plus the execution's own dir
    per execution, in the forked child, in this order
      drop_privileges(uid)          root only: the worker's own unprivileged uid
      set_parent_death_signal()     after setuid, which clears it
      drop_capabilities()           nothing left, also inside a user namespace
      set_no_new_privs()            no setuid binaries or file caps; Landlock needs it
      landlock_restrict()           file system, TCP and signal/abstract-socket scoping
      set_rlimits()                 address space, CPU, processes, file size, fds, no cores
    after each execution, in the worker
      kill_uid(uid)                 a reaper that becomes the sandbox uid and kill(-1)s, or
      kill_children(worker pid)     without a dedicated uid: the subreaper's children

Syscall numbers and Landlock constants are the Linux UAPI ones; the Landlock syscalls
(444-446) have the same numbers on every architecture.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000

# Landlock UAPI (include/uapi/linux/landlock.h).
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1  # EXECUTE ... MAKE_SYM
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_FS_FILE_ONLY = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _prctl(option: int, arg: int) -> bool:
    zero = ctypes.c_ulong(0)
    return _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero) == 0


def _syscall(number: int, *args: object) -> int:
    """A raw syscall; every argument is passed as an explicit ctypes value (varargs are not widened)."""
    return int(_libc.syscall(ctypes.c_long(number), *args))


# -- process limits -------------------------------------------------------------------------


def set_rlimits(*, address_space_bytes: int, cpu_s: int, processes: int, file_bytes: int, open_files: int) -> bool:
    """Lower the resource limits of this process (inherited by everything it starts).

    RLIMIT_AS turns runaway allocations into MemoryError; RLIMIT_CPU sends SIGXCPU at
    `cpu_s` and SIGKILL a second later; RLIMIT_NPROC counts every process and thread of
    the real uid (so it bounds fork and thread bombs only under a dedicated uid, and is
    ignored for root); RLIMIT_FSIZE makes larger writes fail with EFBIG (Python ignores
    SIGXFSZ); RLIMIT_CORE=0 keeps crashes from writing core files. A limit is never
    raised above the current hard limit, so this also works unprivileged.
    """
    wanted = {
        resource.RLIMIT_AS: (address_space_bytes, address_space_bytes),
        resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),
        resource.RLIMIT_NPROC: (processes, processes),
        resource.RLIMIT_FSIZE: (file_bytes, file_bytes),
        resource.RLIMIT_NOFILE: (open_files, open_files),
        resource.RLIMIT_CORE: (0, 0),
    }
    applied = True
    for which, (soft, hard) in wanted.items():
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        try:
            resource.setrlimit(which, (soft, hard))
        except (OSError, ValueError):
            applied = False
    return applied


def count_own_processes() -> int:
    """Processes (not threads) of this real uid visible in /proc: RLIMIT_NPROC's starting point
    when there is no dedicated uid and the limit is shared with everything else the user runs."""
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass  # exited while we looked
    return count


# -- environment ----------------------------------------------------------------------------

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")


def sandbox_env(home: str, hash_seed: int = 0) -> dict[str, str]:
    """The whole environment of a sandboxed process: an allow-list, never a copy of ours.

    Credentials (AWS_*, *_TOKEN, HF_*, KUBERNETES_*, ...) are dropped by construction.
    TZ=UTC0 keeps time formatting independent of /etc/localtime (which Landlock hides);
    the thread variables keep numeric libraries single-threaded and reproducible.
    """
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "TZ": "UTC0",
        "PYTHONHASHSEED": str(hash_seed),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(dict.fromkeys(_THREAD_VARS, "1"))
    return env


def apply_env(env: dict[str, str]) -> bool:
    """Replace this process's environment (os.environ and the C environ) with `env`."""
    os.environ.clear()
    os.environ.update(env)
    return dict(os.environ) == env


# -- namespaces, credentials, process relations ---------------------------------------------


def enter_network_namespace() -> bool:
    """Move this process into a new, empty network namespace (only a loopback that is down).

    As root: unshare(CLONE_NEWNET) (needs CAP_SYS_ADMIN). Unprivileged:
    unshare(CLONE_NEWUSER | CLONE_NEWNET) with the own uid/gid mapped, where the kernel
    allows unprivileged user namespaces (many Kubernetes nodes, seccomp profiles and
    hardened distros do not). Otherwise nothing is applied.
    Every process forked afterwards inherits the namespace: no socket reaches any host.
    """
    if os.geteuid() == 0:
        if _libc.unshare(ctypes.c_int(_CLONE_NEWNET)) == 0:
            return True
        # Not via a user namespace: uids beyond our own would be unmapped there, and a
        # dedicated sandbox uid is worth more than the namespace.
        log.info("no network namespace: unshare failed (%s)", os.strerror(ctypes.get_errno()))
        return False
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(ctypes.c_int(_CLONE_NEWUSER | _CLONE_NEWNET)) != 0:
        log.info("no network namespace: unshare failed (%s)", os.strerror(ctypes.get_errno()))
        return False
    try:  # map our ids so files and processes keep showing their real owner
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    except OSError as exc:
        log.info("user namespace id maps not written: %s", exc)
    return True


def set_child_subreaper() -> bool:
    """Become the reaper of orphaned descendants, so a grandchild whose parent died (a
    double fork, a setsid escape) is re-parented to us instead of init: we can still see,
    kill and reap it, and `waitpid(-1)` raising ECHILD proves no descendant is left."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def drop_privileges(uid: int, gid: int | None = None) -> bool:
    """Root only: no supplementary groups, then real/effective/saved gid and uid = `uid`.

    A per-worker uid makes RLIMIT_NPROC meaningful, lets `kill_uid` end every process
    the execution started, and takes away root's file and signal permissions.
    """
    gid = uid if gid is None else gid
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError:
        return False
    return os.getresuid() == (uid, uid, uid)


def set_parent_death_signal(parent_pid: int) -> bool:
    """SIGKILL this process when its parent (the worker) dies. Must come after any uid
    change, which clears it; if the parent is already gone, exit at once."""
    if not _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL):
        return False
    if os.getppid() != parent_pid:
        os._exit(1)
    return True


# Made once in the worker: a ctypes array type or a first libc lookup costs a child ~0.1 ms.
_CapHeader, _CapData = ctypes.c_uint32 * 2, ctypes.c_uint32 * 6
_capset, _capget = _libc.capset, _libc.capget


def drop_capabilities() -> bool:
    """Empty the effective, permitted and inheritable capability sets (and with them the
    ambient set). After setuid from root they are empty already; in a user namespace (the
    unprivileged network-namespace path) this is what takes the namespace's capabilities
    away. Returns whether capget confirms nothing is left."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _capset(header, _CapData())
    left = _CapData()
    return _capget(header, left) == 0 and not any(left)


def set_no_new_privs() -> bool:
    """PR_SET_NO_NEW_PRIVS: execve can never grant privileges (setuid bits, file caps)."""
    return _prctl(_PR_SET_NO_NEW_PRIVS, 1)


# -- Landlock -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandlockRuleset:
    """A prepared, not yet enforced ruleset: its fd and what it restricts."""

    fd: int
    net: bool  # TCP bind/connect denied (ABI >= 4)
    scope: bool  # signals and abstract unix sockets confined to the domain (ABI >= 6)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is missing or disabled."""
    version = ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)
    abi = _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), version)
    return max(abi, 0)


def landlock_read_paths(exclude: str) -> list[str]:
    """What a sandboxed Python needs to read: the interpreter's prefixes, sys.path, the
    directories of every file mapped into this process (shared libraries of numpy etc.),
    and the dynamic loader's cache. Anything that is `/` or contains `exclude` (the sandbox
    temp root) is left out, so no rule can open up the whole file system."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, "/etc/ld.so.cache"}
    paths.update(p for p in sys.path if p)
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                paths.add(os.path.dirname(parts[5].rstrip("\n")))
    exclude = os.path.realpath(exclude)
    keep = []
    for path in sorted(paths):
        real = os.path.realpath(path)
        if real == "/" or exclude == real or exclude.startswith(real.rstrip("/") + "/") or not os.path.exists(real):
            continue
        keep.append(real)
    return keep


def open_paths(paths: list[str]) -> list[tuple[int, bool]]:
    """O_PATH fds (and whether each is a directory) for Landlock rules, opened once, as the
    worker's user, so later children can build rules even after dropping to a uid that
    could not traverse to them."""
    fds = []
    for path in paths:
        try:
            fds.append((os.open(path, os.O_PATH | os.O_CLOEXEC), os.path.isdir(path)))
        except OSError:
            pass
    return fds


def landlock_ruleset(abi: int, read_only: list[tuple[int, bool]], read_write_dir: str) -> LandlockRuleset | None:
    """Build (do not enforce) a ruleset: read/execute on `read_only`, read+write on
    /dev/null, read on /dev/urandom and /dev/zero, everything on `read_write_dir`; every
    other file-system access denied, TCP bind/connect denied (ABI >= 4), signals and
    abstract unix sockets confined to the sandbox's own processes (ABI >= 6).
    """
    if abi < 1:
        return None
    handled_fs = _FS_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    handled_fs |= _FS_IOCTL_DEV if abi >= 5 else 0
    attr = _RulesetAttr(handled_fs, _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0,
                        _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the struct grew with the ABI
    fd = _syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        log.info("landlock_create_ruleset failed: %s", os.strerror(ctypes.get_errno()))
        return None
    read_dir = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
    rules = [(path_fd, read_dir if is_dir else read_dir & _FS_FILE_ONLY) for path_fd, is_dir in read_only]
    opened = []
    try:
        devices = (("/dev/null", _FS_READ_FILE | _FS_WRITE_FILE | _FS_TRUNCATE), ("/dev/urandom", _FS_READ_FILE),
                   ("/dev/zero", _FS_READ_FILE))
        for path, access in (*devices, (read_write_dir, handled_fs)):
            opened.append(os.open(path, os.O_PATH | os.O_CLOEXEC))
            rules.append((opened[-1], access))
        for path_fd, access in rules:
            rule = _PathBeneathAttr(access & handled_fs, path_fd)
            if _syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(fd), ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                raise OSError(ctypes.get_errno(), "landlock_add_rule")
    except OSError as exc:
        log.info("landlock ruleset not built: %s", exc)
        os.close(fd)
        return None
    finally:
        for path_fd in opened:
            os.close(path_fd)
    return LandlockRuleset(fd, bool(attr.handled_access_net), bool(attr.scoped))


def landlock_restrict(ruleset: LandlockRuleset) -> bool:
    """Enforce `ruleset` on this process and everything it starts, irrevocably.
    Needs no_new_privs (or CAP_SYS_ADMIN). Closes the ruleset fd."""
    try:
        return _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset.fd), ctypes.c_uint32(0)) == 0
    finally:
        os.close(ruleset.fd)


# -- ending what an execution left behind ---------------------------------------------------


def kill_uid(uid: int) -> bool:
    """SIGKILL every process of `uid` (in our PID namespace) from a short-lived reaper that
    becomes `uid` and calls kill(-1): this reaches processes that left the execution's
    process group with setsid(), and kill(-1) walks the task list under a lock, so a fork
    bomb cannot outrun it. Call as root only; never with a uid that anything else uses."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(uid, uid, uid)
            try:
                os.kill(-1, signal.SIGKILL)  # the caller itself is excluded by the kernel
            except ProcessLookupError:
                pass
            os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def kill_children(parent_pid: int) -> int:
    """SIGKILL every direct child of `parent_pid` (a subreaper: its children include orphaned
    descendants). The fallback when there is no dedicated uid. Returns how many were signalled."""
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # the command name may contain spaces
        if len(fields) > 1 and int(fields[1]) == parent_pid:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed

