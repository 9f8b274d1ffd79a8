"""What the training loop trains: policy SFT and the PPM's pairwise ranking, as two Tasks.

A Task owns the model, the examples, how a list of example indices becomes a
micro-batch, and the loss; `rstar_math.training.loop.train` owns everything else
(order, accumulation, optimiser, checkpoints). One example is one unit of the
global batch (`TrainConfig.batch_size`):

    SftTask   one SFT row: prompt + completion. Loss: token cross-entropy, on the
              completion's step tokens only (the prompt, the padding and the output
              blocks that the executor wrote are labelled -100).
    PPMTask   one group of preference pairs sharing (problem_id, prefix): each of the
              group's distinct steps is scored once (packed behind one copy of the
              prefix, models.ppm.pack_shared_prefixes), and the loss is METHOD.md's
                  -log sigmoid(r(x, y+) - r(x, y-))
              averaged over the group's positive/negative pairs, then over the groups.

    task = SftTask.from_uri("s3://b/models/base", "s3://b/runs/r1/round-1/sft", max_length=4096)
    task = PPMTask.from_uri("s3://b/models/base", "s3://b/runs/r1/round-1/ppm_pairs")
    train(task, config.train.policy, output_dir=..., checkpoint_uri=...)

`Task.loss` returns a SUM over the micro-batch's units (trainable tokens, or groups)
and `Task.loss_weight` counts them, so the loop can divide by the global batch's
count: a step's loss is the same mean however the batch is cut into micro-batches
and devices. Hold-out splits are by problem_id, so no problem is on both sides.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections import defaultdict
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from rstar_math.data.schemas import PPM_PAIRS, SFT_DATA, read_table
from rstar_math.models.checkpoint import load_tokenizer
from rstar_math.models.ppm import (PPM_CONFIG_FILE, ProcessPreferenceModel, encode_texts, pack_shared_prefixes,
                                   pad_batch, shared_prefix_length)
from rstar_math.steps import trainable_spans
from rstar_math.store import is_s3, local_copy, store_for

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (torch's cross-entropy ignore_index)."""

Batch = dict[str, torch.Tensor]
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


def pairwise_ranking_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, group: torch.Tensor | None = None, *, reduction: str = "mean"
) -> torch.Tensor:
    """-log sigmoid(r+ - r-) per pair, averaged within each group, then reduced over groups.

    `group[i]` is pair i's group id (0..G-1); without it every pair is its own group.
    reduction: "mean" or "sum" over groups.
    """
    per_pair = -F.logsigmoid(r_chosen - r_rejected)
    if group is None:
        per_group = per_pair
    else:
        n_groups = int(group.max().item()) + 1
        zeros = torch.zeros(n_groups, dtype=per_pair.dtype, device=per_pair.device)
        sums = zeros.index_add(0, group, per_pair)
        counts = zeros.index_add(0, group, torch.ones_like(per_pair))
        per_group = sums / counts
    if reduction == "mean":
        return per_group.mean()
    if reduction == "sum":
        return per_group.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def split_by_problem(problem_ids: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) example indices: round(fraction x problems) whole problems held out.

    Problems are ranked by a seeded hash of their id, so the split is the same on every
    machine and run, and adding problems does not move old ones across it.
    """
    if fraction <= 0:
        return list(range(len(problem_ids))), []
    unique = sorted(set(problem_ids), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n_held = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    held = set(unique[:n_held])
    train = [i for i, p in enumerate(problem_ids) if p not in held]
    heldout = [i for i, p in enumerate(problem_ids) if p in held]
    return train, heldout


def _rows(data: pa.Table | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return data.to_pylist() if isinstance(data, pa.Table) else [dict(r) for r in data]


def _load_tokenizer(model_uri: str):
    """The tokenizer of a checkpoint; from S3 only the small files are fetched, not the weights."""
    if not is_s3(model_uri):
        with local_copy(model_uri) as path:
            return load_tokenizer(path)
    store = store_for(model_uri)
    tmp = Path(tempfile.mkdtemp(prefix="rstar-tok-"))
    try:
        for rel in store.list_files(model_uri):
            if "/" not in rel and not rel.endswith(_WEIGHT_SUFFIXES):
                store.download_file(f"{model_uri.rstrip('/')}/{rel}", tmp / rel)
        return load_tokenizer(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unwrap(model: nn.Module) -> nn.Module:
    """The user module inside DDP / DeepSpeed wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


class Task(ABC):
    """The model, the examples, batching and the loss; see the module docstring."""

    name: ClassVar[str]
    commit_file: ClassVar[str]
    """The file published last when the final model is uploaded to S3."""

    @property
    @abstractmethod
    def problem_ids(self) -> Sequence[str]:
        """problem_id of each example (the unit of the hold-out split)."""

    def __len__(self) -> int:
        return len(self.problem_ids)

    def split(self, fraction: float, seed: int) -> tuple[list[int], list[int]]:
        return split_by_problem(self.problem_ids, fraction, seed)

    def epoch_order(self, indices: Sequence[int], epoch: int, seed: int) -> list[int]:
        """The training examples of one epoch, in order: a seeded shuffle."""
        order = list(indices)
        random.Random(f"{seed}:{epoch}").shuffle(order)
        return order

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh trainable model in float32 on the CPU (the loop moves and wraps it)."""

    @abstractmethod
    def num_tokens(self, indices: Sequence[int]) -> int:
        """Non-padding tokens the examples put through the model (for tokens/s)."""

    @abstractmethod
    def loss_weight(self, indices: Sequence[int]) -> float:
        """How many units the examples' summed loss adds up (trainable tokens, or groups)."""

    @abstractmethod
    def collate(self, indices: Sequence[int]) -> Batch:
        """One micro-batch of tensors (on the CPU) for `loss`."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Summed loss of a micro-batch (on the model's device)."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, indices: Sequence[int], *, micro_batch_size: int, device: torch.device,
        autocast: Callable[[], AbstractContextManager],
    ) -> dict[str, float]:
        """Held-out metrics over `indices` (the model is in eval mode, gradients off)."""

    @abstractmethod
    def save_model(self, model: nn.Module, path: Path, *, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write the final model to a local directory in its Hugging Face-style format."""


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# -- policy SFT ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedExample:
    """One SFT example as token ids [T] and labels [T] (IGNORE_INDEX where no loss)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    truncated: bool


def sft_encode(tokenizer, prompt: str, completion: str, max_length: int | None) -> EncodedExample:
    """Tokenise prompt + completion; only the completion's step tokens keep their labels.

    A token keeps its label when every character it covers lies in a trainable span of
    the completion (steps.trainable_spans): prompt tokens and output-block tokens get
    IGNORE_INDEX. The offsets come from a fast tokenizer, so the mask is exact per token.
    Longer examples are cut at the right to `max_length` tokens.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; SFT label masks need offset mappings")
    text = prompt + completion
    char_ok = np.zeros(len(text) + 1, dtype=np.int64)
    for start, end, trainable in trainable_spans(completion):
        if trainable:
            char_ok[len(prompt) + start : len(prompt) + end] = 1
    cumulative = np.concatenate([[0], np.cumsum(char_ok)])
    encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [
        token if end > start and cumulative[end] - cumulative[start] == end - start else IGNORE_INDEX
        for token, (start, end) in zip(ids, offsets)
    ]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedExample(tuple(ids), tuple(labels), truncated)


class SftTask(Task):
    """Policy fine-tuning on SFT_DATA rows (METHOD.md, "Policy"); examples are rows."""

    name = "sft"
    commit_file = "config.json"

    def __init__(
        self,
        model_uri: str,
        examples: pa.Table | Sequence[Mapping[str, Any]],
        *,
        max_length: int = 4096,
        balance_sources: bool = False,
        tokenizer=None,
    ):
        self.model_uri = str(model_uri)
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(self.model_uri)
        self.balance_sources = balance_sources
        rows = _rows(examples)
        self._problem_ids = [r["problem_id"] for r in rows]
        self.sources = [r.get("source") or "" for r in rows]
        self.encoded = [sft_encode(self.tokenizer, r["prompt"], r["completion"], max_length) for r in rows]
        # Targets are the labels shifted by one: the first token is never predicted.
        self.targets = [sum(1 for label in e.labels[1:] if label != IGNORE_INDEX) for e in self.encoded]
        self.pad_id = self.tokenizer.pad_token_id
        truncated = sum(e.truncated for e in self.encoded)
        if truncated:
            log.warning(
                "%d of %d SFT examples are longer than %d tokens and were cut at the right", truncated, len(rows), max_length
            )
        empty = sum(t == 0 for t in self.targets)
        if empty:
            log.warning("%d SFT examples have no trainable token left (prompt longer than max_length?)", empty)

    @classmethod
    def from_uri(cls, model_uri: str, data_uri: str, **kwargs) -> "SftTask":
        with local_copy(data_uri) as path:
            return cls(model_uri, read_table(path, SFT_DATA), **kwargs)

    @property
    def problem_ids(self) -> Sequence[str]:
        return self._problem_ids

    def epoch_order(self, indices: Sequence[int], epoch: int, seed: int) -> list[int]:
        if not self.balance_sources:
            return super().epoch_order(indices, epoch, seed)
        # Each source fills an equal share of the epoch, cycling through its own shuffled
        # examples: rare sources are repeated, common ones subsampled, the epoch size kept.
        rng = random.Random(f"{seed}:{epoch}:balance")
        by_source: dict[str, list[int]] = defaultdict(list)
        for i in indices:
            by_source[self.sources[i]].append(i)
        names = sorted(by_source)
        rng.shuffle(names)
        order: list[int] = []
        for k, name in enumerate(names):
            quota = len(indices) // len(names) + (1 if k < len(indices) % len(names) else 0)
            pool = by_source[name]
            while quota > 0:
                cycle = list(pool)
                rng.shuffle(cycle)
                order.extend(cycle[:quota])
                quota -= len(cycle[:quota])
        rng.shuffle(order)
        return order

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        with local_copy(self.model_uri) as path:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
        model.config.use_cache = False
        return model

    def num_tokens(self, indices: Sequence[int]) -> int:
        return sum(len(self.encoded[i].input_ids) for i in indices)

    def loss_weight(self, indices: Sequence[int]) -> float:
        return float(sum(self.targets[i] for i in indices))

    def collate(self, indices: Sequence[int]) -> Batch:
        rows = [self.encoded[i] for i in indices]
        input_ids, attention_mask = pad_batch([r.input_ids for r in rows], self.pad_id)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, row in enumerate(rows):
            labels[i, : len(row.labels)] = torch.tensor(row.labels, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self._token_losses(model, batch)[0].sum()

    @staticmethod
    def _token_losses(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of each trainable target token [n], and whether argmax hit it [n]."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        picked = logits[:, :-1][keep].float()
        return F.cross_entropy(picked, targets[keep], reduction="none"), picked.argmax(-1) == targets[keep]

    def evaluate(self, model, indices, *, micro_batch_size, device, autocast) -> dict[str, float]:
        total, hits, count = 0.0, 0, 0
        for start in range(0, len(indices), micro_batch_size):
            batch = _to(self.collate(indices[start : start + micro_batch_size]), device)
            with autocast():
                losses, correct = self._token_losses(model, batch)
            total += losses.sum().item()
            hits += int(correct.sum().item())
            count += losses.numel()
        return {"loss": total / max(count, 1), "token_accuracy": hits / max(count, 1), "tokens": float(count)}

    def save_model(self, model, path, *, state_dict=None) -> None:
        _unwrap(model).save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)


# -- PPM pairwise ranking ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PairGroup:
    """Preference pairs that share (problem_id, prefix): each distinct step scored once.

    sequences: token ids of prefix + step, one per distinct step text.
    pairs: (chosen, rejected) positions in `sequences`, one per preference pair.
    shared: leading tokens common to all sequences (the prefix, as tokenised).
    """

    problem_id: str
    sequences: tuple[tuple[int, ...], ...]
    pairs: tuple[tuple[int, int], ...]
    shared: int = 0

    @property
    def packed_tokens(self) -> int:
        """Tokens of the group packed behind one copy of its shared prefix."""
        return self.shared + sum(len(s) - self.shared for s in self.sequences)


def group_pairs(rows: Sequence[Mapping[str, Any]], tokenizer, max_length: int | None) -> list[PairGroup]:
    """PPM_PAIRS rows -> PairGroups in order of first appearance."""
    keys: dict[tuple[str, str], int] = {}
    texts: list[dict[str, int]] = []
    pairs: list[list[tuple[int, int]]] = []
    for row in rows:
        key = (row["problem_id"], row["prefix"])
        if key not in keys:
            keys[key] = len(texts)
            texts.append({})
            pairs.append([])
        g = keys[key]
        slots = texts[g]
        chosen = slots.setdefault(row["chosen"], len(slots))
        rejected = slots.setdefault(row["rejected"], len(slots))
        pairs[g].append((chosen, rejected))
    flat = [(key[1] + step) for key in keys for step in texts[keys[key]]]
    encoded = iter(encode_texts(tokenizer, flat, max_length))
    groups = []
    for key, g in keys.items():
        sequences = tuple(tuple(next(encoded)) for _ in texts[g])
        groups.append(PairGroup(key[0], sequences, tuple(pairs[g]), shared_prefix_length(sequences)))
    return groups


class PPMTask(Task):
    """Pairwise ranking of PPM_PAIRS (METHOD.md, "Process preference model"); examples are groups.

    share_prefixes: put a group through the model as one packed row, its prefix once
    (the default; the same scores for fewer tokens), or as one padded row per step.
    """

    name = "ppm"
    commit_file = PPM_CONFIG_FILE

    def __init__(
        self,
        model_uri: str,
        pairs: pa.Table | Sequence[Mapping[str, Any]],
        *,
        max_length: int = 4096,
        tokenizer=None,
        share_prefixes: bool = True,
    ):
        self.model_uri = str(model_uri)
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(self.model_uri)
        self.share_prefixes = share_prefixes
        rows = _rows(pairs)
        self.groups = group_pairs(rows, self.tokenizer, max_length)
        self.pad_id = self.tokenizer.pad_token_id
        log.info("PPM data: %d pairs in %d (problem, prefix) groups", len(rows), len(self.groups))

    @classmethod
    def from_uri(cls, model_uri: str, data_uri: str, **kwargs) -> "PPMTask":
        with local_copy(data_uri) as path:
            return cls(model_uri, read_table(path, PPM_PAIRS), **kwargs)

    @property
    def problem_ids(self) -> Sequence[str]:
        return [g.problem_id for g in self.groups]

    def build_model(self) -> nn.Module:
        return ProcessPreferenceModel.from_policy(self.model_uri, device="cpu", dtype="float32")

    def num_tokens(self, indices: Sequence[int]) -> int:
        if self.share_prefixes:
            return sum(self.groups[i].packed_tokens for i in indices)
        return sum(len(s) for i in indices for s in self.groups[i].sequences)

    def loss_weight(self, indices: Sequence[int]) -> float:
        return float(len(indices))

    def collate(self, indices: Sequence[int]) -> Batch:
        offset, chosen, rejected, group = 0, [], [], []
        for g, index in enumerate(indices):
            for c, r in self.groups[index].pairs:
                chosen.append(offset + c)
                rejected.append(offset + r)
                group.append(g)
            offset += len(self.groups[index].sequences)
        if self.share_prefixes:
            inputs = pack_shared_prefixes([self.groups[i].sequences for i in indices], self.pad_id)
        else:
            input_ids, attention_mask = pad_batch([s for i in indices for s in self.groups[i].sequences], self.pad_id)
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        return {
            **inputs,
            "chosen": torch.tensor(chosen, dtype=torch.long),
            "rejected": torch.tensor(rejected, dtype=torch.long),
            "group": torch.tensor(group, dtype=torch.long),
        }

    @staticmethod
    def _scores(model: nn.Module, batch: Batch) -> torch.Tensor:
        """Raw score of every sequence of the batch, in collate's order."""
        return model(**{k: v for k, v in batch.items() if k not in ("chosen", "rejected", "group")})

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        scores = self._scores(model, batch)
        return pairwise_ranking_loss(scores[batch["chosen"]], scores[batch["rejected"]], batch["group"], reduction="sum")

    def evaluate(self, model, indices, *, micro_batch_size, device, autocast) -> dict[str, float]:
        margins = []
        for start in range(0, len(indices), micro_batch_size):
            batch = _to(self.collate(indices[start : start + micro_batch_size]), device)
            with autocast():
                scores = self._scores(model, batch)
            margins.append((scores[batch["chosen"]] - scores[batch["rejected"]]).float().cpu())
        if not margins:
            return {}
        margin = torch.cat(margins)
        return {
            "pairwise_accuracy": (margin > 0).float().mean().item(),
            "loss": (-F.logsigmoid(margin)).mean().item(),
            "pairs": float(margin.numel()),
        }

    def save_model(self, model, path, *, state_dict=None) -> None:
        ppm = _unwrap(model)
        if ppm.tokenizer is None:
            ppm.tokenizer = self.tokenizer
        ppm.save_pretrained(path, state_dict=state_dict)
