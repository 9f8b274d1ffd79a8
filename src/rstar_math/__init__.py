"""rStar-Math self-evolution as a Kubernetes-native batch system.

Library layers (arrows point down only):
    orchestration/  KFP components and the self-evolution pipeline
    stages/         rollout, verify, select, train_ppm, train_policy, evaluate
    search, sandbox, models, data, grading, store, lineage   the library
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # Looked up on first use: importlib.metadata costs ~50 ms and a dozen modules, and the
    # sandbox workers, which import this package, fork once per execution.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rstar-math")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+source"
