"""What the pool and its workers share: requests, results, limits, the frame format and the
tiers that decide which worker runs a program.

Kept apart from pool.py so that a worker imports only this and isolation.py: every
execution forks a worker, and each module it holds makes that fork (and the child's exit)
dearer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rstar_math.config import SandboxConfig

FRAME = struct.Struct(">I")
"""Pool <-> worker frames: this 4-byte big-endian length, then a UTF-8 JSON object."""


def encode_frame(obj: Any) -> bytes:
    data = json.dumps(obj).encode()
    return FRAME.pack(len(data)) + data


class ExecStatus(str, Enum):
    OK = "ok"
    ERROR = "error"  # an exception; `error` holds its last traceback line
    TIMEOUT = "timeout"  # wall clock or CPU limit
    MEMORY = "memory"  # MemoryError, or death at the memory limit
    OUTPUT_LIMIT = "output_limit"  # printed past the hard output cap
    KILLED = "killed"  # died by a signal or exited without a result


@dataclass(frozen=True)
class ExecRequest:
    """One cumulative program: `prefix` (earlier OK steps) runs silently, then `code`."""

    code: str
    prefix: str = ""


@dataclass(frozen=True)
class ExecResult:
    status: ExecStatus
    stdout: str  # what `code` printed, at most max_output_chars
    error: str  # "" when ok; otherwise e.g. "NameError: name 'x' is not defined"
    duration_s: float
    truncated: bool  # stdout was cut

    @property
    def ok(self) -> bool:
        return self.status is ExecStatus.OK


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    """Wall clock per execution, prefix included."""
    memory_mb: int = 1024
    """Address space an execution may add to the preloaded worker's (RLIMIT_AS)."""
    max_processes: int = 32
    """Processes and threads of an execution (RLIMIT_NPROC; exact only with a dedicated uid)."""
    max_file_mb: int = 16
    """Largest file an execution may write (RLIMIT_FSIZE)."""
    max_open_files: int = 64
    max_output_chars: int = 2048

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"SandboxLimits.{f.name} must be positive, got {getattr(self, f.name)!r}")

    @property
    def cpu_s(self) -> int:
        """RLIMIT_CPU: a little above the wall clock, so it only fires when several
        threads or processes burn CPU in parallel."""
        return math.ceil(self.timeout_s) + 1

    @property
    def output_cap_bytes(self) -> int:
        """Bytes of stdout after which an execution is killed with `output_limit`."""
        return max(64 * self.max_output_chars, 1 << 20)

    @classmethod
    def from_config(cls, config: SandboxConfig) -> SandboxLimits:
        return cls(timeout_s=config.timeout_s, memory_mb=config.memory_mb, max_output_chars=config.max_output_chars)


class Tier(str, Enum):
    """Which kind of warm worker forks a program's child.

    Both preload the standard library's math modules; only `full` also holds numpy and
    sympy (and mpmath, which sympy brings), and a fork of it costs about twice as much. A
    program runs on `full` exactly when its text names one of `FULL_TIER_MODULES`, which
    any import of them does; on `light` those modules refuse to import, so the tier, like
    the result, is a function of the program text alone.
    """

    LIGHT = "light"
    FULL = "full"


FULL_TIER_MODULES = ("numpy", "sympy", "mpmath")


def tier_of(request: ExecRequest) -> Tier:
    text = request.prefix + request.code
    return Tier.FULL if any(name in text for name in FULL_TIER_MODULES) else Tier.LIGHT
