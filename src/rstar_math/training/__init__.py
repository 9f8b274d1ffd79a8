"""Training the policy (SFT) and the process preference model with one resumable loop.

    from rstar_math.training import PPMTask, SftTask, train
    result = train(SftTask.from_uri(base, sft_uri), cfg.train.policy,
                   output_dir=out_uri, checkpoint_uri=ckpt_uri)

    loop.py     train(): accumulation, AdamW + cosine warm-up, checkpoints and resume, DeepSpeed ZeRO
    tasks.py    SftTask (masked token cross-entropy) and PPMTask (pairwise ranking loss)
    run.py      `python -m rstar_math.training.run`, the entry point torchrun launches
    deepspeed/  ZeRO-2 and ZeRO-3 configs; batch and precision fields are filled in at run time
"""

from rstar_math.training.loop import EpochMetrics, StepInfo, TrainResult, latest_checkpoint, train
from rstar_math.training.tasks import PPMTask, SftTask, Task, pairwise_ranking_loss, sft_encode, split_by_problem

__all__ = [
    "EpochMetrics",
    "PPMTask",
    "SftTask",
    "StepInfo",
    "Task",
    "TrainResult",
    "latest_checkpoint",
    "launch_command",
    "pairwise_ranking_loss",
    "sft_encode",
    "split_by_problem",
    "train",
]


def __getattr__(name: str):
    # Imported lazily: `python -m rstar_math.training.run` must not find run.py already imported.
    if name == "launch_command":
        from rstar_math.training.run import launch_command

        return launch_command
    raise AttributeError(name)
