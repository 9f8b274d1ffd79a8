"""rStar-Math self-evolution as a Kubernetes-native batch system.

Library layers (arrows point down only):
    orchestration/  KFP components and the self-evolution pipeline
    stages/         rollout, verify, select, train_ppm, train_policy, evaluate
    search, sandbox, models, data, grading, store, lineage   the library
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rstar-math")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
