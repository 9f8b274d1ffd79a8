"""Train stages: the round's policy (SFT from the base model) and the round's PPM.

    train_policy(base_model_uri, sft_uri, out_uri, config=cfg, context=ctx, round=2,
                 checkpoint_uri="s3://bucket/runs/r1/checkpoints/round-2/policy")
    train_ppm(search_policy_uri, pairs_uri, out_uri, config=cfg, context=ctx, round=2, checkpoint_uri=...)

METHOD.md: each round's policy is fine-tuned from the base model (not the previous
round's policy) on that round's SFT data; the PPM starts from the policy that
generated the round's data (the base model in round 1), its LM head replaced by a
value head, and is trained on that round's pairs.

One training loop does both (training/loop.py): plain PyTorch on CPU or one GPU;
with `deepspeed` set and several GPUs in the pod, one process per GPU under
torchrun. Checkpoints go to `checkpoint_uri` and a rerun resumes from the newest.
A round without examples (nothing solved) publishes the starting model unchanged
and says so in training_result.json, so a quiet night does not break the loop.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from rstar_math.artifacts import ArtifactRef, open_artifact, write_artifact
from rstar_math.config import RunConfig, TrainConfig
from rstar_math.data.schemas import PPM_PAIRS, SFT_DATA, ArtifactKind, read_table
from rstar_math.lineage import RunContext
from rstar_math.store import local_copy

log = logging.getLogger(__name__)

RESULT_FILE = "training_result.json"


def _launch_distributed(task: str, model: str, data_dir: Path, out_dir: Path, checkpoint_uri: str | None,
                        config_yaml: str, balance: bool) -> dict:
    """One process per GPU of this pod (torchrun), for DeepSpeed ZeRO across them."""
    from rstar_math.training.run import launch_command

    with tempfile.TemporaryDirectory() as tmp:
        config_path, result_path = Path(tmp) / "config.yaml", Path(tmp) / "result.json"
        config_path.write_text(config_yaml)
        args = ["--task", task, "--model", model, "--data", str(data_dir), "--output-dir", str(out_dir),
                "--config", str(config_path), "--result-json", str(result_path)]
        if checkpoint_uri:
            args += ["--checkpoint-uri", checkpoint_uri]
        if balance:
            args.append("--balance-sources")
        subprocess.run(launch_command(args), check=True)
        return json.loads(result_path.read_text())


def _train(task_name: str, kind: ArtifactKind, model: str | ArtifactRef, data: str | ArtifactRef, out_dir: Path, *,
           config: RunConfig, train_config: TrainConfig, checkpoint_uri: str | None) -> dict:
    from rstar_math.training.loop import train
    from rstar_math.training.tasks import PPMTask, SftTask

    model_ref = ArtifactRef.of(model)
    with open_artifact(data) as (data_dir, _), local_copy(model_ref.path or model_ref.uri) as model_dir:
        table = read_table(data_dir, kind)
        if table.num_rows == 0:
            return _unchanged(task_name, model_dir, out_dir, config)
        if train_config.deepspeed and torch.cuda.device_count() > 1:
            return _launch_distributed(task_name, str(model_dir), data_dir, out_dir, checkpoint_uri, config.to_yaml(),
                                       config.select.balance_sources)
        max_length = config.model.max_seq_len
        if task_name == "sft":
            task = SftTask(str(model_dir), table, max_length=max_length, balance_sources=config.select.balance_sources)
        else:
            task = PPMTask(str(model_dir), table, max_length=max_length)
        result = train(task, train_config, output_dir=out_dir, checkpoint_uri=checkpoint_uri)
        return asdict(result)


def _unchanged(task_name: str, model_dir: Path, out_dir: Path, config: RunConfig) -> dict:
    log.warning("%s: no training examples this round; publishing the starting model unchanged", task_name)
    if task_name == "sft":
        shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    else:
        from rstar_math.models.ppm import ProcessPreferenceModel

        ProcessPreferenceModel.from_policy(str(model_dir), device="cpu", dtype="float32").save_pretrained(out_dir)
    return {"task": task_name, "steps": 0, "skipped": "no training examples"}


def train_policy(
    base_model: str | ArtifactRef,
    sft_data: str | ArtifactRef,
    out: str | ArtifactRef,
    *,
    config: RunConfig,
    context: RunContext,
    round: int,
    checkpoint_uri: str | None = None,
    stage: str = "train_policy",
) -> dict:
    """Fine-tune the base model on the round's SFT data; publish the policy checkpoint (its
    lineage names `stage`: a control's policy is not the round's)."""
    with write_artifact(out, kind="policy", stage=stage, context=context, round=round,
                        inputs={"base_model": base_model, "sft_data": sft_data},
                        params=asdict(config.train.policy)) as out_dir:
        result = _train("sft", SFT_DATA, base_model, sft_data, out_dir, config=config,
                        train_config=config.train.policy, checkpoint_uri=checkpoint_uri)
        (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
    return result


def train_ppm(
    init_model: str | ArtifactRef,
    pairs: str | ArtifactRef,
    out: str | ArtifactRef,
    *,
    config: RunConfig,
    context: RunContext,
    round: int,
    checkpoint_uri: str | None = None,
) -> dict:
    """Train the round's PPM from the policy that searched this round; publish its checkpoint."""
    with write_artifact(out, kind="ppm", stage="train_ppm", context=context, round=round,
                        inputs={"init_model": init_model, "ppm_pairs": pairs},
                        params=asdict(config.train.ppm)) as out_dir:
        result = _train("ppm", PPM_PAIRS, init_model, pairs, out_dir, config=config,
                        train_config=config.train.ppm, checkpoint_uri=checkpoint_uri)
        (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
    return result
