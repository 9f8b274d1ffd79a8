"""What every Kubeflow component body needs: the run config, the run context, artefact refs.

Components call these inside their bodies (KFP lightweight components import
inside the function), so each component stays a few lines that map KFP artifacts
onto a stage function.

Run id: read from the environment (RSTAR_RUN_ID), never passed as a task input,
so that KFP's cache keys stay stable across runs and a rerun reuses finished
tasks. On a cluster the pipeline sets it from the pod's `pipeline/runid` label;
`rstar run` sets it for local runs. A cached artefact keeps the run id of the run
that made it, which is what lineage should say.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from rstar_math.artifacts import ArtifactRef, pin
from rstar_math.config import RunConfig, config_hash, from_dict
from rstar_math.evaluation.metrics import is_whole
from rstar_math.lineage import RunContext
from rstar_math.store import join

RUN_ID_ENV = "RSTAR_RUN_ID"
THREADS_ENV = "RSTAR_TORCH_THREADS"
TRAIN_THREADS_ENV = "RSTAR_TRAIN_THREADS"


def setup(config_yaml: str, *, alone: bool = False) -> tuple[RunConfig, RunContext]:
    """Parse the resolved config a component received, and describe this execution for lineage.

    Torch's thread count comes from RSTAR_TRAIN_THREADS in a task that runs `alone` (the
    trainings, the loop control, the base model's evaluation: nothing else runs beside them
    there) and from RSTAR_TORCH_THREADS otherwise; torch's default when unset.
    """
    import yaml

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = from_dict(yaml.safe_load(config_yaml), source="config_yaml")
    threads = os.environ.get(TRAIN_THREADS_ENV if alone else THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return config, RunContext(run_id=os.environ.get(RUN_ID_ENV, "unknown-run"), config_hash=config_hash(config))


def ref(artifact) -> ArtifactRef:
    """A KFP artifact as a stage sees it: canonical URI for lineage, local path for bytes."""
    return ArtifactRef(uri=artifact.uri, path=artifact.path)


def checkpoint_uri(config: RunConfig, stage: str, round: int, *inputs: ArtifactRef, shard: int | None = None) -> str:
    """Where a task keeps resumable checkpoints: derived from the config and its inputs' hashes,
    not the run id, so a rerun of the same work (a retried pod, a restarted local run) finds them."""
    digest = hashlib.sha256(config_hash(config).encode())
    for item in inputs:
        digest.update(pin(item).sha256.encode())
    name = f"{stage}-{shard}" if shard is not None else stage
    return join(config.storage.root, "checkpoints", digest.hexdigest()[:16], f"round-{round}", name)


def resolve_run_config(preset: str, overrides: str, *, base_model: str = "", train_problems: str = "",
                       eval_problems: str = "", storage_root: str = "", shards: int = 0, rounds: int = 0):
    """The resolved config (YAML) and the shard ids to fan out over.

    `overrides` holds key=value lines (or ';'-separated); the explicit pipeline parameters
    win over both, when set. Problem lists are comma-separated URIs.
    """
    from collections import namedtuple

    from rstar_math.config import load_config

    items = [line.strip() for chunk in overrides.splitlines() for line in chunk.split(";") if line.strip()]
    if base_model:
        items.append(f"model.base={base_model}")
    for key, value in (("data.train", train_problems), ("data.eval", eval_problems)):
        if value:
            uris = [u.strip() for u in value.split(",") if u.strip()]
            items.append(f"{key}=[{', '.join(repr(u) for u in uris)}]")
    if storage_root:
        items.append(f"storage.root={storage_root}")
    if shards:
        items.append(f"data.shards={shards}")
    if rounds:
        items.append(f"rounds={rounds}")
    config = load_config(preset or "default", items)
    outputs = namedtuple("Outputs", ["config_yaml", "shard_ids"])
    return outputs(config.to_yaml(), list(range(num_shards(config))))


def num_shards(config: RunConfig) -> int:
    return max(1, config.data.shards)


def log_metrics(metrics, result) -> None:
    """Scalar results of a stage as KFP metrics (shown in the run's UI)."""
    import dataclasses

    values = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)
    if hasattr(result, "rows"):  # an evaluation: one metric per method and N (and benchmark, if several)
        whole = [r for r in result.rows if r.metric == "accuracy" and is_whole(r.benchmark)]
        several = len({r.benchmark for r in whole}) > 1
        values = {f"{r.benchmark + ':' if several else ''}{r.method}{'@' + str(r.n) if r.n else ''}": r.value
                  for r in whole}
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    # The values also as a file: an output artefact with nothing on disk is a cache miss for
    # kfp.local (its cache drops entries whose artefacts are gone), so the task would rerun.
    path = Path(metrics.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics.metadata, indent=2, sort_keys=True) + "\n")


def publish_report(evaluation: ArtifactRef, report) -> None:
    """Copy the evaluation's HTML report into the KFP HTML artifact (rendered in the UI)."""
    import shutil

    from rstar_math.stages.evaluate import REPORT_FILE

    shutil.copyfile(Path(evaluation.path) / REPORT_FILE, report.path)


def summary_uri(config: RunConfig) -> str:
    """Where the summary of a run with this config is published (the CLI prints it from here)."""
    return join(config.storage.root, "summaries", f"{config_hash(config)[:16]}.md")


def publish_summary(config: RunConfig, path: str) -> None:
    from rstar_math.store import store_for

    uri = summary_uri(config)
    store_for(uri).write_bytes(uri, Path(path).read_bytes())
