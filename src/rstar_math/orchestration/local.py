"""Running the self-evolution pipeline on one machine with kfp.local (the README's main command).

    rstar run                      # the embedded default, four rounds, printed table at the end
    rstar run --config smoke       # the same pipeline in a few minutes

The same pipeline definition that compiles for a cluster runs here with
kfp.local's SubprocessRunner: every task is a subprocess of this Python (the
package is installed, nothing is pip-installed), artefacts go to a local pipeline
root, and KFP's local cache makes a rerun with the same inputs skip finished
tasks, so a run killed mid-way resumes where it stopped.

kfp.local streams every task's full executor input and logs; unless `quiet` is
off they go to `<root>/logs/<run id>.log`, and the console gets one line per task.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from rstar_math.config import from_dict
from rstar_math.orchestration.glue import (RUN_ID_ENV, THREADS_ENV, TRAIN_THREADS_ENV, resolve_run_config,
                                          summary_uri)
from rstar_math.store import store_for

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


@dataclass(frozen=True)
class LocalRun:
    run_id: str
    root: Path
    summary: str
    executed: tuple[str, ...]
    """Tasks that ran in this invocation, as paths under its pipeline-run directory
    (e.g. 'for-loop-1-iteration-1/rollout-2'); tasks served from the cache are not among them."""
    failed: tuple[str, ...]
    seconds: float
    log_file: Path | None


def executed_tasks(run_dir: Path) -> tuple[str, ...]:
    """Every task kfp.local executed writes its executor_output.json; a cache hit writes nothing."""
    return tuple(sorted(str(p.parent.relative_to(run_dir)) for p in run_dir.rglob("executor_output.json")))


class _Progress:
    """Follows kfp.local's log file and prints one line per finished task."""

    def __init__(self, path: Path, console: IO[str]) -> None:
        self.path, self.console = path, console
        self.failed: list[str] = []
        self._started: dict[str, list[float]] = {}  # parallel shards share a task name
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> "_Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _follow(self) -> None:
        with open(self.path, errors="replace") as f:
            f.seek(0, os.SEEK_END)
            while True:
                line = f.readline()
                if line:
                    self._line(_ANSI.sub("", line))
                elif self._done.is_set():
                    return
                else:
                    time.sleep(0.2)

    def _line(self, line: str) -> None:
        if m := _STARTED.search(line):
            self._started.setdefault(m.group(1), []).append(time.monotonic())
        elif m := _FINISHED.search(line):
            name, status = m.groups()
            starts = self._started.get(name) or [time.monotonic()]  # shards of a ParallelFor share a name
            seconds = time.monotonic() - starts.pop(0)
            if status != "SUCCESS":
                self.failed.append(name)
            self.say(f"  {name:<34} {status.lower():<8} {seconds:7.1f}s")

    def say(self, text: str) -> None:
        self.console.write(text + "\n")
        self.console.flush()


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[IO[str]]:
    """Send this process's stdout and stderr (and its subprocesses') to `path`; yields the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    console = os.fdopen(os.dup(saved[0]), "w")
    streams = sys.stdout, sys.stderr
    # Both levels: file descriptors for the task subprocesses, Python streams for this process
    # (kfp.local logs to whatever sys.stdout is when the run starts; under a test runner that
    # is not file descriptor 1).
    stream = open(path, "a", buffering=1)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        sys.stdout = sys.stderr = stream
        yield console
    finally:
        stream.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
        stream.close()
        console.close()


def run_locally(preset: str, overrides: list[str], *, root: str | Path, run_id: str, rounds: int | None = None,
                quiet: bool = True, console: IO[str] | None = None) -> LocalRun:
    """Run the pipeline with kfp.local; returns where it ran, the summary it published and the tasks it ran."""
    import yaml
    from kfp import local

    from rstar_math.orchestration.pipeline import self_evolution

    root = Path(root).absolute()
    storage = str(root / "store")
    # Resolved exactly as the pipeline's resolve-config task will, to know where the summary lands.
    resolved = resolve_run_config(preset, "\n".join(overrides), storage_root=storage, rounds=rounds or 0)
    config = from_dict(yaml.safe_load(resolved.config_yaml))
    os.environ[RUN_ID_ENV] = run_id
    # Generation runs beside the sandbox (and the controls beside each other): one torch thread
    # each. The trainings, the loop control and the base model's evaluation run alone, so they
    # take every core (the tiny model's SFT trains 1.5x and its PPM 1.7x faster on two threads).
    os.environ.setdefault(THREADS_ENV, "1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault(TRAIN_THREADS_ENV, str(cores))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root / "kfp"),
        enable_caching=True,
        cache_root=str(root / "kfp-cache"),
    )
    started, wall = time.monotonic(), time.time()
    run = lambda: self_evolution(preset=preset, config_overrides="\n".join(overrides),  # noqa: E731
                                 storage_root=storage, rounds=config.rounds)
    log_file = root / "logs" / f"{run_id}.log" if quiet else None
    failed: list[str] = []
    if log_file is None:
        run()
    else:
        with _output_to(log_file) as terminal, _Progress(log_file, console or terminal) as progress:
            try:
                run()
            except BaseException:
                progress.say(f"the run failed; the full log is {log_file}")
                raise
        failed = progress.failed
    # kfp.local names each run's directory after the pipeline and the time it started.
    run_dirs = [d for d in (root / "kfp").iterdir() if d.is_dir() and d.stat().st_mtime >= wall - 1]
    executed = executed_tasks(max(run_dirs, key=lambda d: d.name)) if run_dirs else ()
    uri = summary_uri(config)
    summary = store_for(uri).read_bytes(uri).decode()
    return LocalRun(run_id, root, summary, executed, tuple(failed), time.monotonic() - started, log_file)
