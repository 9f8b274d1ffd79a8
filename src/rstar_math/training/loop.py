"""The one training loop for the policy (SFT) and the PPM, resumable from the store.

    task = SftTask.from_uri(base_model, sft_data_uri)            # or PPMTask (training/tasks.py)
    result = train(task, config.train.policy, output_dir="runs/r1/policy",
                   checkpoint_uri="s3://bucket/runs/r1/checkpoints/policy")

What one call does, in order:
  - splits the examples by problem_id (config.holdout_fraction) and plans
    ceil(epochs x train examples / batch_size) optimiser steps;
  - builds the task's model, AdamW, and a cosine schedule with linear warm-up
    (warmup_ratio of the steps); gradients are clipped to norm 1.0;
  - resumes, if `checkpoint_uri` holds checkpoints, from the newest complete one:
    model, optimiser, schedule, RNG states and step (the data position follows from
    the step), so an interrupted run ends where an uninterrupted one would;
  - runs the steps: the global batch of step s is examples s*B .. (s+1)*B-1 of a stream
    of per-epoch seeded shuffles (grouped by length unless config.group_by_length is
    off: padding was half of an SFT batch's tokens), split over devices and
    micro-batches (batch_size = micro_batch_size x accumulation x world_size); the loss
    is the task's summed loss divided by the global batch's weight, so micro-batching
    never changes its value; precision per config.precision (auto: bf16 autocast on a GPU
    and on a CPU with native bf16, fp32 otherwise; bf16: autocast on any device);
  - evaluates held-out examples whenever an epoch ends, and at the last step;
  - every `checkpoint_every` steps publishes checkpoint_uri/step-000120/ through the
    store, trainer_state.json last (a directory without it is ignored), and keeps the
    newest `keep_checkpoints`;
  - saves the final model to `output_dir` (local or s3://) in the task's format.

DeepSpeed: with config.deepspeed = zero2 | zero3 | path/to/config.json, and deepspeed
importable, the model runs under deepspeed.initialize with the JSON in
training/deepspeed/, its batch fields filled from TrainConfig; our torch AdamW and
schedule are passed in (no fused Adam is compiled). Processes come from torchrun
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; `run.launch_command`);
gloo on CPU, nccl on GPU. Checkpoints are DeepSpeed's own, written to a local
directory and uploaded; ZeRO-3's final weights are gathered to rank 0 before saving.
Multi-process runs assume one node: its ranks share the local temporary directory.

Checkpoint layout (plain PyTorch / DeepSpeed):
    step-000120/
        model.safetensors, optimizer.pt, scheduler.pt    (plain PyTorch)
        deepspeed/state/...                             (DeepSpeed: model, optimiser and
                                                          scheduler shards per rank)
        rng_state_rank0.pt ...                          python and torch RNG, per rank
        trainer_state.json                              step, examples seen, tokens, time,
                                                          losses, held-out metrics; the commit file
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as torch_dist
from torch import nn

from rstar_math.config import PRECISIONS, TrainConfig
from rstar_math.models.checkpoint import resolve_device
from rstar_math.store import is_s3, join, local_copy, store_for
from rstar_math.store.s3server import free_port
from rstar_math.training.tasks import Task

log = logging.getLogger(__name__)

CHECKPOINT_COMMIT = "trainer_state.json"
STATE_FORMAT = 1
MAX_GRAD_NORM = 1.0
DEEPSPEED_CONFIGS = Path(__file__).parent / "deepspeed"
_CHECKPOINT_NAME = re.compile(r"step-(\d+)")


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochMetrics:
    """Held-out metrics measured after `step`, when `epoch` epochs of data had been seen."""

    epoch: float
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class StepInfo:
    """What `on_step` callbacks see after each optimiser step."""

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    tokens_per_s: float
    """Over the steps since the last log line."""
    epoch: float
    tokens: int
    """Non-padding tokens through the model so far (all processes, all resumes)."""
    train_time_s: float
    """Step time so far, checkpoints and held-out evaluation excluded."""


@dataclass(frozen=True)
class TrainResult:
    task: str
    steps: int
    """Optimiser steps done, counting those before a resume."""
    total_steps: int
    complete: bool
    """False when `max_steps` stopped the run early (then no final model was saved)."""
    epochs: float
    """Training examples consumed / training examples."""
    final_loss: float
    """Loss of the last optimiser step (mean over its global batch)."""
    tokens_per_s: float
    """Non-padding tokens through the model per second of step time, over the whole run."""
    tokens: int
    examples: int
    """Training examples (after the hold-out)."""
    heldout_examples: int
    heldout: tuple[EpochMetrics, ...]
    resumed_from: int | None
    """Step of the checkpoint this call started from, or None for a fresh start."""
    train_time_s: float


@dataclass
class _TrainerState:
    """Everything about progress that a checkpoint needs beyond tensors (trainer_state.json)."""

    task: str
    backend: str
    total_steps: int
    batch_size: int
    seed: int
    train_examples: int
    step: int = 0
    examples_seen: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    last_loss: float = float("nan")
    losses: list[float] = field(default_factory=list)
    heldout: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    format: int = STATE_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "_TrainerState":
        return cls(**json.loads(text))

    def check_resumable(self, saved: "_TrainerState", where: str) -> None:
        """A checkpoint of a different run would silently change the data order; refuse it."""
        for key in ("task", "backend", "batch_size", "seed", "train_examples", "total_steps"):
            if getattr(saved, key) != getattr(self, key):
                raise ValueError(
                    f"{where}: checkpoint is from a different run ({key} {getattr(saved, key)!r} != {getattr(self, key)!r}); "
                    "use a fresh checkpoint_uri"
                )


# -- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def active(self) -> bool:
        return torch_dist.is_available() and torch_dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank."""
        if not self.active:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: float, device: torch.device) -> float:
        if not self.active or self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        torch_dist.all_reduce(tensor)
        return tensor.item()


def _init_distributed(use_deepspeed: bool, device_type: str) -> _Dist:
    """Join torchrun's process group; DeepSpeed needs one even for a single process.

    A DeepSpeed run started without torchrun is one process: RANK=0, WORLD_SIZE=1,
    LOCAL_RANK=0 and MASTER_ADDR/MASTER_PORT (a free port) are set in its environment.
    """
    if use_deepspeed and "WORLD_SIZE" not in os.environ:
        defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if (world > 1 or use_deepspeed) and not torch_dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        torch_dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", init_method="env://")
        created = True
    return _Dist(rank, world, local_rank, created)


def _device(device: str | None, dist: _Dist) -> torch.device:
    target = resolve_device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", dist.local_rank)
    return target


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- optimisation backends ----------------------------------------------------------------------


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases and norm scales keep their values."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


class _TorchBackend:
    """Plain PyTorch: the module (DDP-wrapped across processes), AdamW, the schedule."""

    name = "torch"

    def __init__(
        self, model: nn.Module, config: TrainConfig, *, total_steps: int, warmup_steps: int, device: torch.device, dist: _Dist
    ):
        self.module = model.to(device)
        self.device = device
        if dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model: nn.Module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            self.model = model
        self.optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.learning_rate)
        self.scheduler = _schedule(self.optimizer, warmup_steps, total_steps)
        self.bf16 = use_bf16(config.precision, device)
        self.eval_model = model

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def micro_batch(self, boundary: bool) -> contextlib.AbstractContextManager:
        # Gradients are all-reduced once per optimiser step, on its last micro-batch.
        if isinstance(self.model, nn.parallel.DistributedDataParallel) and not boundary:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def save(self, directory: Path, dist: _Dist) -> None:
        from safetensors.torch import save_model

        if dist.rank == 0:  # replicas are identical
            save_model(self.module, str(directory / "model.safetensors"))
            torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_model

        load_model(self.module, str(directory / "model.safetensors"), device=str(self.device))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=self.device, weights_only=True))
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))

    def final_state_dict(self) -> dict[str, torch.Tensor] | None:
        return None  # the module's own tensors


def group_by_length(order: list[int], length, batch: int, seed: str, window: int = 8) -> list[int]:
    """The same examples, reordered so that each batch holds similar lengths (less padding).

    The shuffled order is cut into windows of `window` batches; each window is sorted by
    length and cut into batches, and all batches are shuffled. Which examples an epoch
    sees is unchanged, and so is the randomness of which examples meet, up to the window.
    """
    span = batch * window
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=length)
        batches += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
    random.Random(seed).shuffle(batches)
    return [i for b in batches for i in b]


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bf16 itself (AVX512-BF16 or AMX, read from /proc/cpuinfo's
    flags). Without them torch emulates bf16 and autocast is far slower than fp32 (a 512x512
    matmul: 1.4 against 34 GFLOP/s on an AVX2-only CPU), so `auto` trains in fp32 there."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast (TrainConfig.precision: auto, bf16 or fp32)."""
    if precision == "auto":
        if device.type == "cpu":
            return cpu_has_native_bf16()
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision in PRECISIONS:
        return precision == "bf16"
    raise ValueError(f"train precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def deepspeed_available() -> bool:
    try:
        import deepspeed  # noqa: F401
    except Exception as exc:  # an import can fail for CUDA/toolchain reasons, not only absence
        log.debug("deepspeed does not import: %s", exc)
        return False
    return True


def deepspeed_config(config: TrainConfig, *, world_size: int, accumulation: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed JSON (zero2, zero3 or a path) with its batch and precision fields from `config`."""
    spec = config.deepspeed
    path = DEEPSPEED_CONFIGS / f"{spec}.json" if spec in ("zero2", "zero3") else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {spec!r}: {path} does not exist (use zero2, zero3 or a JSON path)")
    ds = json.loads(path.read_text())
    autos = [key for key, value in _walk(ds) if value == "auto"]
    if autos:
        raise ValueError(f"{path}: 'auto' values are not filled in here; give explicit values for {', '.join(autos)}")
    fields = {
        "train_batch_size": config.batch_size,
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": MAX_GRAD_NORM,
    }
    for key, value in fields.items():
        if key in ds and ds[key] != value:
            log.warning("%s: %s=%r replaced by %r from the training config", path, key, ds[key], value)
    ds.update(fields)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds.setdefault("zero_allow_untested_optimizer", True)  # our torch AdamW, not DeepSpeed's fused one
    for owned in ("optimizer", "scheduler"):  # passed in as objects
        if ds.pop(owned, None) is not None:
            log.warning("%s: its %r section is ignored; the training loop passes its own", path, owned)
    return ds


def _walk(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _walk(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), tree


class _DeepSpeedBackend:
    """deepspeed.initialize around the module, with our AdamW and schedule."""

    name = "deepspeed"

    def __init__(
        self, model: nn.Module, config: TrainConfig, *, total_steps: int, warmup_steps: int, device: torch.device,
        dist: _Dist, accumulation: int,
    ):
        import deepspeed

        self.bf16 = device.type == "cuda" and use_bf16(config.precision, device)
        self.ds_config = deepspeed_config(config, world_size=dist.world_size, accumulation=accumulation, bf16=self.bf16)
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.learning_rate)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model.to(device),
            optimizer=optimizer,
            # A callable, so the schedule drives the optimiser DeepSpeed wraps (ZeRO partitions it).
            lr_scheduler=lambda wrapped: _schedule(wrapped, warmup_steps, total_steps),
            config=self.ds_config,
        )
        self.model = self.eval_model = self.engine
        self.module = self.engine.module
        self.stage = self.engine.zero_optimization_stage()

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed holds bf16 weights itself when bf16 is enabled

    def micro_batch(self, boundary: bool) -> contextlib.AbstractContextManager:
        # Set before the forward: ZeRO reduces gradients in backward hooks that read it.
        self.engine.set_gradient_accumulation_boundary(boundary)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop already divides by the global weight
        self.engine.step()  # applies the update only at the accumulation boundary

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def learning_rate(self) -> float:
        return self.engine.get_lr()[0]

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def save(self, directory: Path, dist: _Dist) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)

    def load(self, directory: Path) -> None:
        loaded, _ = self.engine.load_checkpoint(
            str(directory / "deepspeed"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if loaded is None:
            raise FileNotFoundError(f"{directory}: DeepSpeed could not load the checkpoint under deepspeed/state")

    def final_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (ZeRO-3 gathers its 16-bit partitions; a collective call)."""
        if self.stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.engine.module.state_dict()


# -- checkpoints in the store -----------------------------------------------------------------------


def _checkpoints(uri: str) -> tuple[dict[str, int], dict[str, int]]:
    """(committed, uncommitted) checkpoint directory names under `uri` -> their steps."""
    names: dict[str, set[str]] = {}
    for rel in store_for(uri).list_files(uri):
        top, _, rest = rel.partition("/")
        if _CHECKPOINT_NAME.fullmatch(top):
            names.setdefault(top, set()).add(rest)
    committed = {n: int(n[5:]) for n, files in names.items() if CHECKPOINT_COMMIT in files}
    uncommitted = {n: int(n[5:]) for n, files in names.items() if CHECKPOINT_COMMIT not in files}
    return committed, uncommitted


def latest_checkpoint(uri: str) -> str | None:
    """URI of the newest complete checkpoint under `uri`, or None."""
    committed, _ = _checkpoints(uri)
    if not committed:
        return None
    return join(uri, max(committed, key=committed.get))


def _prune(uri: str, keep: int) -> None:
    """Drop all but the newest `keep` checkpoints, and crash leftovers older than the newest."""
    committed, uncommitted = _checkpoints(uri)
    store = store_for(uri)
    newest = sorted(committed, key=committed.get, reverse=True)
    for name in newest[keep:]:
        store.delete(join(uri, name))
    top = committed[newest[0]] if newest else 0
    for name, step in uncommitted.items():
        if step < top:
            store.delete(join(uri, name))


@contextlib.contextmanager
def _shared_tempdir(dist: _Dist) -> Iterator[Path]:
    """A temporary directory made by rank 0 and seen by every rank (one node)."""
    path = Path(tempfile.mkdtemp(prefix="rstar-ckpt-")) if dist.rank == 0 else None
    path = Path(dist.broadcast(str(path) if path else None))
    try:
        yield path
    finally:
        dist.barrier()
        if dist.rank == 0:
            shutil.rmtree(path, ignore_errors=True)


def _save_checkpoint(uri: str, backend, state: _TrainerState, dist: _Dist, keep: int) -> None:
    name = f"step-{state.step:06d}"
    with _shared_tempdir(dist) as local:
        backend.save(local, dist)
        torch.save(_rng_state(), local / f"rng_state_rank{dist.rank}.pt")
        dist.barrier()
        if dist.rank == 0:
            (local / CHECKPOINT_COMMIT).write_text(state.to_json())
            store_for(uri).upload_dir(local, join(uri, name), commit=CHECKPOINT_COMMIT)
            _prune(uri, keep)
            log.info("checkpoint %s", join(uri, name))


def _resume(uri: str, backend, state: _TrainerState, dist: _Dist) -> _TrainerState | None:
    latest = latest_checkpoint(uri) if dist.rank == 0 else None
    latest = dist.broadcast(latest)
    if latest is None:
        return None
    with contextlib.ExitStack() as stack:
        path = stack.enter_context(local_copy(latest, commit=CHECKPOINT_COMMIT)) if dist.rank == 0 else None
        path = Path(dist.broadcast(str(path) if path else None))
        saved = _TrainerState.from_json((path / CHECKPOINT_COMMIT).read_text())
        state.check_resumable(saved, latest)
        backend.load(path)
        rng = path / f"rng_state_rank{dist.rank}.pt"
        if rng.is_file():  # absent when the world size grew; dropout then draws new numbers
            _set_rng_state(torch.load(rng, weights_only=False))
        dist.barrier()
    log.info("resumed from %s (step %d of %d)", latest, saved.step, saved.total_steps)
    return saved


# -- the loop -----------------------------------------------------------------------------------------


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
    raise ValueError(f"{type(model).__name__} has no Hugging Face module that supports gradient checkpointing")


def _save_final(task: Task, backend, output_dir: str, state_dict) -> None:
    if not is_s3(output_dir):
        task.save_model(backend.module, Path(output_dir), state_dict=state_dict)
        return
    staging = Path(tempfile.mkdtemp(prefix="rstar-model-"))
    try:
        task.save_model(backend.module, staging, state_dict=state_dict)
        store_for(output_dir).upload_dir(staging, output_dir, commit=task.commit_file)
    except FileExistsError:
        # A retried job that resumed from its final checkpoint: the model was published before.
        log.warning("%s already holds a complete model; left as it is", output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train(
    task: Task,
    config: TrainConfig,
    *,
    output_dir: str | os.PathLike,
    checkpoint_uri: str | None = None,
    device: str | None = None,
    keep_checkpoints: int = 2,
    max_steps: int | None = None,
    log_every: int = 10,
    gradient_checkpointing: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train `task` as `config` says; see the module docstring.

    max_steps: stop after this many steps in all (the schedule still spans the whole
        run); a checkpoint is written there, so a later call with no limit goes on.
    on_step: called after every optimiser step (and its checkpoint, if any).
    """
    use_deepspeed = bool(config.deepspeed)
    if use_deepspeed and not deepspeed_available():
        log.warning("config.deepspeed=%r but deepspeed does not import; training with plain PyTorch", config.deepspeed)
        use_deepspeed = False
    device_type = resolve_device(device).type
    dist = _init_distributed(use_deepspeed, device_type)
    try:
        return _train(
            task, config, output_dir=str(output_dir), checkpoint_uri=checkpoint_uri, device=_device(device, dist),
            dist=dist, use_deepspeed=use_deepspeed, keep_checkpoints=keep_checkpoints, max_steps=max_steps,
            log_every=log_every, gradient_checkpointing=gradient_checkpointing, on_step=on_step,
        )
    finally:
        # DeepSpeed caches its process groups for the life of the process; a later call
        # in the same process reuses the group instead of joining a new one.
        if dist.created and not use_deepspeed:
            torch_dist.destroy_process_group()


def _train(
    task: Task, config: TrainConfig, *, output_dir: str, checkpoint_uri: str | None, device: torch.device, dist: _Dist,
    use_deepspeed: bool, keep_checkpoints: int, max_steps: int | None, log_every: int, gradient_checkpointing: bool,
    on_step: Callable[[StepInfo], None] | None,
) -> TrainResult:
    batch, micro = config.batch_size, config.micro_batch_size
    if batch % (micro * dist.world_size):
        raise ValueError(
            f"batch_size {batch} is not a multiple of micro_batch_size {micro} x world_size {dist.world_size}"
        )
    accumulation = batch // (micro * dist.world_size)
    train_ids, heldout_ids = task.split(config.holdout_fraction, config.seed)
    if not train_ids:
        raise ValueError(f"{task.name}: no training examples")
    n = len(train_ids)
    total_steps = math.ceil(config.epochs * n / batch)
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    stop_at = total_steps if max_steps is None else min(total_steps, max_steps)

    _seed_all(config.seed)
    model = task.build_model()
    if gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    common = dict(total_steps=total_steps, warmup_steps=warmup_steps, device=device, dist=dist)
    if use_deepspeed:
        backend = _DeepSpeedBackend(model, config, accumulation=accumulation, **common)
    else:
        backend = _TorchBackend(model, config, **common)
    state = _TrainerState(task.name, backend.name, total_steps, batch, config.seed, n, config=asdict(config))
    resumed_from = None
    if checkpoint_uri:
        saved = _resume(checkpoint_uri, backend, state, dist)
        if saved is not None:
            state, resumed_from = saved, saved.step
    if dist.rank == 0:
        log.info(
            "%s: %d train / %d held-out examples, %d steps of %d (%d micro x %d accumulation x %d processes), %s%s",
            task.name, n, len(heldout_ids), total_steps, batch, micro, accumulation, dist.world_size, backend.name,
            f", resuming at step {state.step}" if resumed_from is not None else "",
        )

    orders: dict[int, list[int]] = {}
    lengths = {i: task.num_tokens([i]) for i in train_ids} if config.group_by_length else {}

    def example(position: int) -> int:
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders.clear()
            order = task.epoch_order(train_ids, epoch, config.seed)
            if config.group_by_length:
                order = group_by_length(order, lengths.__getitem__, batch, f"{config.seed}:{epoch}:length")
            orders[epoch] = order
        return orders[epoch][offset]

    def evaluate() -> None:
        backend.train(False)
        with torch.no_grad():
            metrics = task.evaluate(
                backend.eval_model, heldout_ids, micro_batch_size=micro, device=device, autocast=backend.autocast
            )
        backend.train(True)
        state.heldout.append({"epoch": state.examples_seen / n, "step": state.step, "metrics": metrics})
        if dist.rank == 0:
            log.info("held-out after step %d (epoch %.2f): %s", state.step, state.examples_seen / n,
                     ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    per_rank = micro * accumulation
    bar = _progress(total_steps, state.step, task.name, enabled=dist.rank == 0)
    window_tokens, window_time = 0, 0.0
    backend.train(True)
    while state.step < stop_at:
        tick = time.perf_counter()
        global_ids = [example(p) for p in range(state.step * batch, (state.step + 1) * batch)]
        scale = dist.world_size / max(task.loss_weight(global_ids), 1.0)  # DDP / DeepSpeed average over ranks
        mine = global_ids[dist.rank * per_rank : (dist.rank + 1) * per_rank]
        step_loss = torch.zeros((), device=device)
        for m in range(accumulation):
            micro_batch = {k: v.to(device, non_blocking=True) for k, v in task.collate(mine[m * micro : (m + 1) * micro]).items()}
            with backend.micro_batch(boundary=m == accumulation - 1):
                with backend.autocast():
                    loss = task.loss(backend.model, micro_batch) * scale
                backend.backward(loss)
            step_loss += loss.detach().float()
        grad_norm = backend.step()
        loss_value = dist.sum(step_loss.item() / dist.world_size, device)
        elapsed = time.perf_counter() - tick
        tokens = task.num_tokens(global_ids)

        state.step += 1
        state.examples_seen += batch
        state.tokens += tokens
        state.train_time_s += elapsed
        state.last_loss = loss_value
        state.losses.append(loss_value)
        window_tokens += tokens
        window_time += elapsed

        epoch_ended = state.examples_seen // n > (state.examples_seen - batch) // n
        if heldout_ids and (epoch_ended or state.step == total_steps):
            evaluate()
        stopping_early = state.step == stop_at < total_steps  # max_steps: leave a point to go on from
        if checkpoint_uri and (state.step % config.checkpoint_every == 0 or stopping_early):
            _save_checkpoint(checkpoint_uri, backend, state, dist, keep_checkpoints)

        rate = window_tokens / window_time if window_time else 0.0
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{backend.learning_rate:.2e}", tok_s=f"{rate:.0f}")
        if dist.rank == 0 and (state.step % log_every == 0 or state.step == stop_at):
            log.info("step %d/%d loss %.4f lr %.3e grad-norm %.3f tokens/s %.0f",
                     state.step, total_steps, loss_value, backend.learning_rate, grad_norm, rate)
            window_tokens, window_time = 0, 0.0
        if on_step is not None:
            on_step(
                StepInfo(
                    state.step, total_steps, loss_value, backend.learning_rate, rate, state.examples_seen / n,
                    state.tokens, state.train_time_s,
                )
            )
    bar.close()

    complete = state.step >= total_steps
    if complete:
        state_dict = backend.final_state_dict()  # collective under ZeRO-3
        if dist.rank == 0:
            _save_final(task, backend, output_dir, state_dict)
            log.info("saved the final %s model to %s", task.name, output_dir)
        dist.barrier()
    return TrainResult(
        task=task.name,
        steps=state.step,
        total_steps=total_steps,
        complete=complete,
        epochs=state.examples_seen / n,
        final_loss=state.last_loss,
        tokens_per_s=state.tokens / state.train_time_s if state.train_time_s else 0.0,
        tokens=state.tokens,
        examples=n,
        heldout_examples=len(heldout_ids),
        heldout=tuple(EpochMetrics(h["epoch"], h["step"], h["metrics"]) for h in state.heldout),
        resumed_from=resumed_from,
        train_time_s=state.train_time_s,
    )


def _progress(total: int, initial: int, name: str, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"train {name}", unit="step", disable=not (enabled and sys.stderr.isatty()))
