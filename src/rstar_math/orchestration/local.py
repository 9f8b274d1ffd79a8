"""Running the self-evolution pipeline on one machine with kfp.local (the README's main command).

    rstar run                      # the embedded default, four rounds, printed table at the end
    rstar run --config smoke       # the same pipeline in a few minutes

The same pipeline definition that compiles for a cluster runs here with
kfp.local's SubprocessRunner: every task is a subprocess of this Python (the
package is installed, nothing is pip-installed), artefacts go to a local pipeline
root, and KFP's local cache makes a rerun with the same inputs skip finished
tasks, so a run killed mid-way resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from rstar_math.config import from_dict
from rstar_math.orchestration.glue import RUN_ID_ENV, resolve_run_config, summary_uri
from rstar_math.store import store_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalRun:
    run_id: str
    root: Path
    summary: str


def run_locally(preset: str, overrides: list[str], *, root: str | Path, run_id: str, rounds: int | None = None,
                quiet: bool = True) -> LocalRun:
    """Run the pipeline with kfp.local; returns where it ran and the summary it published."""
    from kfp import local

    from rstar_math.orchestration.pipeline import self_evolution

    import yaml

    root = Path(root).absolute()
    storage = str(root / "store")
    # Resolved exactly as the pipeline's resolve-config task will, to know where the summary lands.
    resolved = resolve_run_config(preset, "\n".join(overrides), storage_root=storage, rounds=rounds or 0)
    config = from_dict(yaml.safe_load(resolved.config_yaml))
    os.environ[RUN_ID_ENV] = run_id
    # Tiny models train and generate fastest on one thread, and the sandbox needs the other cores.
    os.environ.setdefault("RSTAR_TORCH_THREADS", "1")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root / "kfp"),
        enable_caching=True,
        cache_root=str(root / "kfp-cache"),
    )
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    self_evolution(preset=preset, config_overrides="\n".join(overrides), storage_root=storage, rounds=config.rounds)
    uri = summary_uri(config)
    return LocalRun(run_id, root, store_for(uri).read_bytes(uri).decode())
