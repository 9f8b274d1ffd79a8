"""Command-line entry point of one training job, for torchrun and for plain single-process runs.

    python -m rstar_math.training.run --task sft --model s3://b/models/base \
        --data s3://b/runs/r1/round-1/sft --output-dir s3://b/runs/r1/round-1/policy \
        --checkpoint-uri s3://b/runs/r1/checkpoints/policy --config paper

On a GPU pod, every GPU of the pod runs one process (what the pipeline's train
stages launch; `launch_command` builds the same line):

    torchrun --standalone --nproc_per_node=$(nvidia-smi -L | wc -l) \
        -m rstar_math.training.run --task ppm ...

The training settings come from the run config (`--config` preset or YAML plus
`--set key=value` overrides): train.policy for --task sft, train.ppm for --task ppm,
and model.max_seq_len for the longest sequence. Rank 0 writes the result as JSON
to --result-json when given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from typing import Sequence

from rstar_math.config import load_config
from rstar_math.store import store_for

TASKS = ("sft", "ppm")


def launch_command(args: Sequence[str], *, nproc_per_node: int | None = None, python: str | None = None) -> list[str]:
    """argv that runs this module with `args` in one process per GPU of this machine (at least one)."""
    if nproc_per_node is None:
        import torch

        nproc_per_node = max(1, torch.cuda.device_count())
    return [
        python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
        "-m", "rstar_math.training.run", *args,
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rstar_math.training.run", description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--model", required=True, help="policy checkpoint to start from (the base model for SFT)")
    parser.add_argument("--data", required=True, help="sft_data (for sft) or ppm_pairs (for ppm) artefact, local or s3://")
    parser.add_argument("--output-dir", required=True, help="where the final model goes, local or s3://")
    parser.add_argument("--checkpoint-uri", default=None, help="resumable checkpoints, local or s3://")
    parser.add_argument("--config", default="default", help="preset name or YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    parser.add_argument("--max-length", type=int, default=None, help="default: model.max_seq_len")
    parser.add_argument("--balance-sources", action="store_true", help="sft: each source an equal share per epoch")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--result-json", default=None, help="write the TrainResult here (local or s3://)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from rstar_math.training.loop import train
    from rstar_math.training.tasks import PPMTask, SftTask

    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s %(levelname)s %(message)s",
    )
    run_config = load_config(args.config, args.overrides)
    max_length = args.max_length or run_config.model.max_seq_len
    if args.task == "sft":
        config = run_config.train.policy
        task = SftTask.from_uri(args.model, args.data, max_length=max_length, balance_sources=args.balance_sources)
    else:
        config = run_config.train.ppm
        task = PPMTask.from_uri(args.model, args.data, max_length=max_length)
    result = train(
        task, config, output_dir=args.output_dir, checkpoint_uri=args.checkpoint_uri, device=args.device,
        max_steps=args.max_steps, gradient_checkpointing=args.gradient_checkpointing,
    )
    if rank == 0 and args.result_json:
        store_for(args.result_json).write_bytes(args.result_json, json.dumps(asdict(result), indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
