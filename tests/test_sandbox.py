"""The sandboxed executor: one adversarial property per test, each with its exact status,
and the host unharmed afterwards (no processes left on the sandbox uids, no temp dirs,
the pool still answering).

One pool is shared by the module (2 workers, a short timeout). Tests that rely on a
kernel layer assert that the layer is active when running as root on Linux (the
development machine and CI); elsewhere they are skipped rather than silently weakened.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from rstar_math.config import SandboxConfig
from rstar_math.sandbox import ExecRequest, ExecStatus, ExecutorPool, SandboxLimits, Tier
from rstar_math.sandbox.protocol import tier_of

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

TIMEOUT_S = 2.0
SECRETS = {"AWS_SECRET_ACCESS_KEY": "sb-test-aws-secret-value", "GITHUB_TOKEN": "sb-test-github-token-value"}
ROOT = sys.platform == "linux" and os.geteuid() == 0


def sandbox_processes(uids: tuple[int, ...]) -> list[int]:
    """Pids of living processes whose real uid is one of the sandbox uids. Zombies do not
    count: the child of a worker killed mid-execution dies with it (PDEATHSIG) and waits,
    re-parented, for init to reap it, which some inits do only every few seconds."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if int(status["Uid"].split()[1]) in uids and not status["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


def execution_dirs(pool: ExecutorPool) -> list[Path]:
    return [p for slot in Path(pool.workdir_root).iterdir() for p in slot.iterdir()]


def assert_clean(pool: ExecutorPool) -> None:
    """What every execution must leave behind: nothing."""
    assert execution_dirs(pool) == []
    if pool.isolation.dedicated_uid:
        assert sandbox_processes(pool.isolation.sandbox_uids) == []


@pytest.fixture(scope="module")
def pool():
    env = pytest.MonkeyPatch()
    for key, value in SECRETS.items():
        env.setenv(key, value)
    with ExecutorPool(SandboxLimits(timeout_s=TIMEOUT_S, memory_mb=512, max_output_chars=200), workers=2) as pool:
        yield pool
        root, uids = Path(pool.workdir_root), pool.isolation.sandbox_uids
    env.undo()
    assert not root.exists()
    assert sandbox_processes(uids) == []


def unique(code: str) -> str:
    """Defeat the cache where a test needs a real execution."""
    return f"# {uuid.uuid4().hex}\n{code}"


def on_full(code: str) -> str:
    """The same program, run by a full-tier worker (naming numpy is what routes it there)."""
    return f"# numpy\n{code}"


BOTH_TIERS = pytest.mark.parametrize("tier", [Tier.LIGHT, Tier.FULL], ids=["light", "full"])


def program(code: str, tier: Tier) -> str:
    """`code` made unique and routed to `tier`."""
    code = unique(code)
    code = on_full(code) if tier is Tier.FULL else code
    assert tier_of(ExecRequest(code)) is tier
    return code


# -- functional ------------------------------------------------------------------------------


def test_limits_from_config_and_validation():
    limits = SandboxLimits.from_config(SandboxConfig(timeout_s=5, memory_mb=1024, max_output_chars=256))
    assert (limits.timeout_s, limits.memory_mb, limits.max_output_chars, limits.cpu_s) == (5, 1024, 256, 6)
    assert limits.output_cap_bytes == 1 << 20
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)


@pytest.mark.timeout(30)
def test_isolation_layers_active_as_root(pool):
    if not ROOT:
        pytest.skip("kernel layers need root here")
    active = set(pool.isolation.active())
    assert {"rlimits", "clean_env", "no_new_privs", "parent_death_signal", "no_capabilities", "child_subreaper",
            "network_namespace", "dedicated_uid"} <= active
    if pool.isolation.landlock_abi >= 1:
        assert "landlock_fs" in active
    assert len(pool.isolation.sandbox_uids) == 4  # 2 full and 2 light workers, a uid each


@pytest.mark.timeout(30)
def test_prefix_runs_silently_and_state_carries_over(pool):
    result = pool.run("print(x * 2)", prefix='x = 5; print("hidden")')
    assert (result.status, result.stdout, result.error) == (ExecStatus.OK, "10\n", "")
    assert result.ok and not result.truncated


@pytest.mark.timeout(30)
def test_sympy_and_numpy(pool):
    sym = pool.run("from sympy import symbols, solve; x=symbols('x'); print(solve(2*x-4, x))")
    assert (sym.status, sym.stdout) == (ExecStatus.OK, "[2]\n")
    num = pool.run("import numpy as np\nprint(int(np.arange(5).sum()), np.linalg.det(np.eye(3)))")
    assert (num.status, num.stdout) == (ExecStatus.OK, "10 1.0\n")


@pytest.mark.timeout(30)
def test_deterministic_across_runs_and_workers(pool):
    code = ("import random, numpy as np\nprint(random.random(), random.randint(1, 10**9))\n"
            "print(list({'apple', 'banana', 'cherry', 'date', 'elder', 'fig'}))\nprint(np.random.rand(3))")
    results = pool.run_batch([ExecRequest(unique(code)) for _ in range(8)])
    assert {r.status for r in results} == {ExecStatus.OK}
    assert len({r.stdout for r in results}) == 1


@pytest.mark.timeout(30)
def test_programs_that_name_numpy_or_sympy_run_on_the_full_tier(pool):
    full = ["import numpy as np\nprint(np.pi)", "from sympy import S\nprint(S(1) / 3)", "import mpmath",
            "x = 'sympy is named in a string'"]
    light = ["print(2 + 2)", "from fractions import Fraction\nprint(Fraction(1, 3))", "import math, itertools"]
    assert [tier_of(ExecRequest(code)) for code in full] == [Tier.FULL] * len(full)
    assert [tier_of(ExecRequest(code)) for code in light] == [Tier.LIGHT] * len(light)
    assert tier_of(ExecRequest("print(np.pi)", prefix="import numpy as np")) is Tier.FULL  # the prefix counts
    with ExecutorPool(SandboxLimits(timeout_s=TIMEOUT_S), workers=1, light_tier=False) as one_tier:
        assert one_tier.tier_for(ExecRequest("print(2 + 2)")) is Tier.FULL
        assert one_tier.worker_pids_of(Tier.LIGHT) == () and len(one_tier.worker_pids) == 1
        assert one_tier.run("print(2 + 2)").stdout == "4\n"


@pytest.mark.timeout(30)
def test_light_tier_refuses_unnamed_imports_of_full_tier_modules(pool):
    code = "mod = __import__('sym' + 'py')\nprint(mod.S(1) / 3)"
    refused = [pool.run(unique(code)) for _ in range(2)]
    for result in refused:  # every time, never a slow import from disk
        assert result.status is ExecStatus.ERROR
        assert result.error == ("ModuleNotFoundError: No module named 'sympy' here: "
                                "a program that imports it must name it")
    named = pool.run(unique(on_full(code)))
    assert (named.status, named.stdout) == (ExecStatus.OK, "1/3\n")


@pytest.mark.timeout(30)
def test_both_tiers_give_the_same_result(pool):
    code = ("import random, math\nfrom fractions import Fraction\nprint(random.random(), random.randint(1, 10**9))\n"
            "print(list({'apple', 'banana', 'cherry', 'date', 'elder', 'fig'}), hash('rstar'))\n"
            "print(sum(Fraction(1, k * (k + 1)) for k in range(1, 50)), math.comb(30, 12))")
    light, full = pool.run(program(code, Tier.LIGHT)), pool.run(program(code, Tier.FULL))
    assert light.status is full.status is ExecStatus.OK
    assert light.stdout == full.stdout


@pytest.mark.timeout(30)
def test_batch_keeps_input_order_with_slow_and_fast_items(pool):
    slow_or_fast = [f"import time\ntime.sleep({0.3 if i % 3 == 0 else 0})\nprint({i})" for i in range(9)]
    requests = [ExecRequest(unique(code)) for code in slow_or_fast]
    results = pool.run_batch(requests)
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(9)]


@pytest.mark.timeout(30)
def test_cache_hits_are_counted(pool):
    code = unique("print(sum(range(10)))")
    before = pool.stats
    first, second = pool.run(code), pool.run(code)
    batch = pool.run_batch([ExecRequest(code), ExecRequest(code)])
    after = pool.stats
    assert first == second == batch[0] == batch[1]
    assert after.executions - before.executions == 1
    assert after.cache_hits - before.cache_hits == 3


@pytest.mark.timeout(30)
def test_output_is_truncated_to_max_output_chars(pool):
    result = pool.run(unique("print('x' * 1000)"))
    assert (result.status, result.stdout, result.truncated) == (ExecStatus.OK, "x" * 200, True)


@pytest.mark.timeout(30)
def test_step_that_prints_nothing_is_ok(pool):
    result = pool.run(unique("y = 1"))
    assert (result.status, result.stdout, result.error) == (ExecStatus.OK, "", "")


# -- adversarial -----------------------------------------------------------------------------


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_infinite_loop_is_killed_at_the_timeout(pool, tier):
    start = time.monotonic()
    result = pool.run(program("while True:\n    pass", tier))
    wall = time.monotonic() - start
    assert result.status is ExecStatus.TIMEOUT
    assert result.error.startswith("TimeoutError")
    assert TIMEOUT_S <= result.duration_s <= 1.1 * TIMEOUT_S + 0.1
    assert wall <= 1.1 * TIMEOUT_S + 0.5
    assert_clean(pool)


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_busy_loop_ignoring_signals_is_killed(pool, tier):
    code = ("import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass")
    result = pool.run(program(code, tier))
    assert result.status is ExecStatus.TIMEOUT
    assert result.duration_s <= 1.1 * TIMEOUT_S + 0.1
    assert_clean(pool)


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_fork_bomb(pool, tier):
    result = pool.run(program("import os\nwhile True:\n    os.fork()", tier))
    assert result.status is ExecStatus.ERROR
    assert result.error.startswith("BlockingIOError")  # RLIMIT_NPROC: fork fails with EAGAIN
    assert_clean(pool)


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_thread_bomb(pool, tier):
    result = pool.run(program("import threading, time\nwhile True:\n"
                              "    threading.Thread(target=time.sleep, args=(100,)).start()", tier))
    assert (result.status, result.error) == (ExecStatus.ERROR, "RuntimeError: can't start new thread")
    assert_clean(pool)


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_allocating_50_gb(pool, tier):
    result = pool.run(program("x = bytearray(50 * 10**9)", tier))
    assert (result.status, result.error) == (ExecStatus.MEMORY, "MemoryError")


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_list_growth_loop_hits_the_memory_limit(pool, tier):
    result = pool.run(program("blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))", tier))
    assert result.status is ExecStatus.MEMORY


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_huge_file_is_refused_and_removed(pool, tier):
    result = pool.run(program("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (64 << 20))", tier))
    assert (result.status, result.error) == (ExecStatus.ERROR, "OSError: [Errno 27] File too large")
    assert_clean(pool)


@pytest.mark.timeout(30)
def test_recursion_error(pool):
    result = pool.run(unique("def f(n):\n    return f(n + 1)\nf(0)"))
    assert (result.status, result.error) == (ExecStatus.ERROR, "RecursionError: maximum recursion depth exceeded")


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_raised_recursion_limit_overflows_the_c_stack(pool, tier):
    code = "import json, sys\nsys.setrecursionlimit(10**6)\nx = []\nfor _ in range(200_000):\n    x = [x]\n" \
        "print(json.dumps(x))"
    result = pool.run(program(code, tier))
    assert result.status is ExecStatus.KILLED  # SIGSEGV: the worker survives
    assert "SIGSEGV" in result.error
    assert pool.run(program("print(1 + 1)", tier)).stdout == "2\n"


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_environment_secrets_are_not_visible(pool, tier):
    code = "import os\nprint(sorted(os.environ))\nprint([v for v in os.environ.values() if 'sb-test' in v])"
    result = pool.run(program(code, tier))
    assert result.status is ExecStatus.OK
    for key, value in SECRETS.items():
        assert key not in result.stdout and value not in result.stdout
    for pid in pool.worker_pids:  # nor is the workers' own initial environment
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert all(value.encode() not in environ for value in SECRETS.values())


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_network_is_unreachable(pool, tier):
    if ROOT:
        assert pool.isolation.network_namespace
    elif not pool.isolation.network_namespace:
        pytest.skip("no network namespace without root or user namespaces")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        tcp = pool.run(program(f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))", tier))
        assert tcp.status is ExecStatus.ERROR
        assert tcp.error.startswith(("OSError", "PermissionError", "ConnectionRefusedError"))
        with pytest.raises(BlockingIOError):
            listener.accept()
    udp = pool.run(program("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                          "s.sendto(b'x', ('192.0.2.1', 53))", tier))
    assert (udp.status, udp.error) == (ExecStatus.ERROR, "OSError: [Errno 101] Network is unreachable")


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_files_outside_the_working_directory(pool, tmp_path, tier):
    if ROOT:
        assert pool.isolation.landlock_fs or pool.isolation.landlock_abi == 0
    if not pool.isolation.landlock_fs:
        pytest.skip("Landlock is not available")
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    for path in (secret, *secret.parents):  # readable by anyone: only Landlock stands in the way
        if path.stat().st_uid != os.getuid():
            break
        path.chmod(path.stat().st_mode | 0o005)
    escape = Path("/tmp") / f"rstar-escape-{uuid.uuid4().hex}"
    for target in ("/etc/passwd", str(secret), "/proc/1/environ"):
        result = pool.run(program(f"print(open({target!r}).read())", tier))
        assert result.status is ExecStatus.ERROR and result.error.startswith("PermissionError"), target
    write = pool.run(program(f"open({str(escape)!r}, 'w').write('x')", tier))
    assert write.status is ExecStatus.ERROR and write.error.startswith("PermissionError")
    assert not escape.exists()
    inside = pool.run(program("open('note.txt', 'w').write('hi')\nprint(open('note.txt').read())", tier))
    assert (inside.status, inside.stdout) == (ExecStatus.OK, "hi\n")
    assert_clean(pool)


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_killing_the_worker_or_init_is_refused(pool, tier):
    pids = pool.worker_pids
    for code in ("import os\nos.kill(os.getppid(), 9)", "import os\nos.kill(1, 9)"):
        result = pool.run(program(code, tier))
        if pool.isolation.dedicated_uid or pool.isolation.landlock_scope:
            assert result.status is ExecStatus.ERROR
            assert result.error == "PermissionError: [Errno 1] Operation not permitted"
        assert pool.run(program("print(1 + 1)", tier)).stdout == "2\n"
    if pool.isolation.dedicated_uid or pool.isolation.landlock_scope:
        assert pool.worker_pids == pids


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_exit_statuses(pool, tier):
    cases = {
        "import sys\nsys.exit(3)": (ExecStatus.ERROR, "SystemExit: 3", ""),
        "import sys\nprint('a')\nsys.exit(0)": (ExecStatus.OK, "", "a\n"),
        "import sys\nsys.exit()": (ExecStatus.OK, "", ""),
    }
    for code, (status, error, stdout) in cases.items():
        result = pool.run(program(code, tier))
        assert (result.status, result.error, result.stdout) == (status, error, stdout), code
    hard = pool.run(program("import os\nos._exit(0)", tier))
    assert hard.status is ExecStatus.KILLED and "without reporting a result" in hard.error


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_printing_100_mb_is_cut_short(pool, tier):
    start = time.monotonic()
    result = pool.run(program("print('x' * 100_000_000)", tier))
    assert result.status is ExecStatus.OUTPUT_LIMIT
    assert result.stdout == "x" * 200 and result.truncated
    assert time.monotonic() - start < 0.75 * TIMEOUT_S  # killed at the cap, long before the timeout
    spam = pool.run(program("while True:\n    print('spam')", tier))
    assert spam.status is ExecStatus.OUTPUT_LIMIT and spam.duration_s < 0.75 * TIMEOUT_S


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_missing_module(pool, tier):
    result = pool.run(program("import no_such_module_xyz", tier))
    assert result.status is ExecStatus.ERROR
    assert result.error == "ModuleNotFoundError: No module named 'no_such_module_xyz'"


@pytest.mark.timeout(30)
def test_syntax_error(pool):
    result = pool.run(unique("x = (1,"))
    assert (result.status, result.error) == (ExecStatus.ERROR, "SyntaxError: '(' was never closed")


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_code_that_closes_its_stdout(pool, tier):
    closed = pool.run(program("import sys\nprint('a')\nsys.stdout.close()", tier))
    assert (closed.status, closed.stdout) == (ExecStatus.OK, "a\n")
    fd_closed = pool.run(program("import os\nos.close(1)\nprint('b')", tier))
    assert (fd_closed.status, fd_closed.stdout) == (ExecStatus.OK, "")
    results_closed = pool.run(program("import os\nos.closerange(3, 64)\nprint('c')", tier))
    assert results_closed.status is ExecStatus.KILLED  # the result pipe went with it
    assert pool.run(program("print(1 + 1)", tier)).stdout == "2\n"


@BOTH_TIERS
@pytest.mark.timeout(30)
def test_setsid_escape_is_killed_with_the_rest(pool, tier):
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n"
    returned = pool.run(program(escape + "print('parent done')", tier))
    assert (returned.status, returned.stdout) == (ExecStatus.OK, "parent done\n")
    assert_clean(pool)
    hung = pool.run(program(escape + "time.sleep(1000)", tier))
    assert hung.status is ExecStatus.TIMEOUT
    assert_clean(pool)


@pytest.mark.timeout(60)
def test_killed_worker_is_replaced_and_the_request_retried(pool):
    before, pids = pool.stats, pool.worker_pids_of(Tier.LIGHT)
    box: list = []
    runner = threading.Thread(target=lambda: box.append(pool.run(unique("import time\ntime.sleep(1)\nprint('done')"))))
    runner.start()
    time.sleep(0.3)
    for pid in pids:  # one of them is running the request
        os.kill(pid, signal.SIGKILL)
    runner.join(30)
    assert box and (box[0].status, box[0].stdout) == (ExecStatus.OK, "done\n")
    assert pool.run_batch([ExecRequest(unique("print(3)")) for _ in range(2)])[1].stdout == "3\n"
    assert pool.stats.workers_replaced - before.workers_replaced == 2
    assert set(pool.worker_pids_of(Tier.LIGHT)).isdisjoint(pids)
    assert_clean(pool)


@pytest.mark.timeout(60)
def test_hung_worker_is_replaced():
    with ExecutorPool(SandboxLimits(timeout_s=1.0), workers=1, reply_grace_s=1.0) as pool:
        (pid,) = pool.worker_pids_of(Tier.LIGHT)
        os.kill(pid, signal.SIGSTOP)
        result = pool.run("print('after')")
        assert (result.status, result.stdout) == (ExecStatus.OK, "after\n")
        assert pool.stats.workers_replaced == 1 and pool.worker_pids_of(Tier.LIGHT) != (pid,)


@pytest.mark.timeout(30)
def test_zz_host_unharmed(pool):
    """Last in the module: after everything above, nothing is left and the pool still answers."""
    assert_clean(pool)
    assert pool.run(unique("print(1+1)")).stdout == "2\n"
    if ROOT:
        assert {"dedicated_uid", "network_namespace", "rlimits"} <= set(pool.isolation.active())
