"""The process preference model (PPM): a causal-LM backbone with a scalar value head.

METHOD.md, "Process preference model": the PPM starts from the current policy
(round 1: the base model) with the language-model head replaced by a linear value
head on the last token of a partial trajectory. Training ranks steps pairwise
(rstar_math.training.tasks.PPMTask); at inference the raw score r is squashed to
tanh(r / 5) in [-1, 1], as in the authors' code, before search uses it as a Q value.

    ppm = ProcessPreferenceModel.from_policy("s3://bucket/models/base")    # fresh value head
    ppm.save_pretrained("runs/r1/ppm")                                      # one directory
    scorer = PPMScorer.from_pretrained("runs/r1/ppm", device="cuda")
    scorer.score([prompt + steps, ...])                                     # -> [0.31, -0.72, ...]

A saved PPM is one self-describing directory that loads with nothing glued by hand:

    config.json, model.safetensors     the backbone (Hugging Face format, no LM head)
    tokenizer files                    the policy's tokenizer
    value_head.safetensors             "weight" [1, hidden] (no bias: ranking is shift-invariant)
    ppm_config.json                    format, head shape, pooling and squash; written last

Texts are encoded by `encode_texts` alone, for training and scoring alike, so the
token the head reads is the same in both: no special tokens beyond what the
tokenizer adds, and truncation from the LEFT (the last token is the one scored).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from rstar_math.models.checkpoint import load_tokenizer, resolve_device, resolve_dtype
from rstar_math.store import is_s3, local_copy, store_for

log = logging.getLogger(__name__)

PPM_CONFIG_FILE = "ppm_config.json"
VALUE_HEAD_FILE = "value_head.safetensors"
PPM_FORMAT = 1
SQUASH_SCALE = 5.0
"""Scores are tanh(raw / SQUASH_SCALE), the authors' squash to [-1, 1]."""


class PPMCheckpointError(ValueError):
    """A directory is not a loadable PPM; the message names the directory and what is missing."""


def squash(raw: torch.Tensor) -> torch.Tensor:
    """Raw value-head scores to [-1, 1]: tanh(raw / 5)."""
    return torch.tanh(raw / SQUASH_SCALE)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last non-padding token; right or left padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
    """Token ids of each text, cut from the left to at most `max_length` tokens."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    if max_length is None:
        return ids
    return [row[-max_length:] if len(row) > max_length else row for row in ids]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded to the longest row."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens that start every sequence, leaving each at least one token of its own."""
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    n = 0
    while n < shortest - 1 and all(s[n] == first[n] for s in sequences):
        n += 1
    return n


def pack_shared_prefixes(groups: Sequence[Sequence[Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Groups of token sequences packed into rows: a group's shared prefix once, then each
    of its sequences' own tokens; as many groups to a row as fit the longest group.

    A step's preference pairs all extend the same partial trajectory, which is most of
    their tokens; packed, the prefix goes through the model once instead of once per step,
    and short groups fill the room that padding would take. The mask lets a sequence's
    own tokens see its group's prefix and themselves only, and their positions continue
    from the prefix's, so every score equals scoring the sequence alone.

    Returns input_ids and position_ids [R, L], attention_mask [R, 1, L, L] (bool, True =
    attend) and score_at [N]: the flat index (row x L + column) of each sequence's last
    token, the sequences in the order given.
    """
    packed = []  # per group: tokens, positions, segments (0 = prefix, k = sequence k), last columns
    for sequences in groups:
        shared = shared_prefix_length(sequences)
        tokens, pos, seg, last = list(sequences[0][:shared]), list(range(shared)), [0] * shared, []
        for k, sequence in enumerate(sequences, 1):
            own = sequence[shared:]
            tokens += own
            pos += range(shared, shared + len(own))
            seg += [k] * len(own)
            last.append(len(tokens) - 1)
        packed.append((tokens, pos, seg, last))
    # First fit, longest first, into rows as wide as the longest group.
    width = max(len(p[0]) for p in packed)
    used: list[int] = []
    place = [(0, 0)] * len(packed)  # (row, column) where each group starts
    for g in sorted(range(len(packed)), key=lambda g: -len(packed[g][0])):
        size = len(packed[g][0])
        row = next((r for r, n in enumerate(used) if n + size <= width), len(used))
        if row == len(used):
            used.append(0)
        place[g] = (row, used[row])
        used[row] += size
    input_ids = torch.full((len(used), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(used), width), dtype=torch.long)
    block = torch.full((len(used), width), -1, dtype=torch.long)  # which group; -1 = padding
    segment = torch.full((len(used), width), -1, dtype=torch.long)
    score_at = []
    for g, ((tokens, pos, seg, last), (row, col)) in enumerate(zip(packed, place)):
        span = slice(col, col + len(tokens))
        input_ids[row, span] = torch.tensor(tokens, dtype=torch.long)
        position_ids[row, span] = torch.tensor(pos, dtype=torch.long)
        segment[row, span] = torch.tensor(seg, dtype=torch.long)
        block[row, span] = g
        score_at += [row * width + col + c for c in last]
    # A query sees its own group's prefix and earlier tokens of its own segment; padding sees
    # padding only, so no row of the mask is empty (an empty row makes SDPA return NaN).
    same_group = block[:, None, :] == block[:, :, None]
    visible = (segment[:, None, :] == segment[:, :, None]) | (segment[:, None, :] == 0)
    causal = position_ids[:, None, :] <= position_ids[:, :, None]
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": (same_group & visible & causal)[:, None],
        "score_at": torch.tensor(score_at, dtype=torch.long),
    }


class ProcessPreferenceModel(nn.Module):
    """Backbone (a causal LM without its LM head) + linear value head on the last token."""

    def __init__(self, backbone: nn.Module, tokenizer=None):
        super().__init__()
        self.backbone = backbone
        # No bias: the pairwise loss only sees r+ - r-, so a bias would never get a gradient.
        self.value_head = nn.Linear(backbone.config.hidden_size, 1, bias=False)
        # Small initial scores, so tanh(r / 5) starts near 0 (an undecided Q).
        nn.init.normal_(self.value_head.weight, std=getattr(backbone.config, "initializer_range", 0.02))
        self.value_head.to(next(backbone.parameters()).dtype)
        self.tokenizer = tokenizer

    @property
    def config(self):
        return self.backbone.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        score_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw scores (float32): one per row, read at its last non-padding token; or, for a
        batch from `pack_shared_prefixes`, one per packed sequence, read at `score_at`."""
        packed = attention_mask.dim() == 4
        if packed and score_at is None:
            raise ValueError("a packed batch (4D attention_mask) needs score_at")
        mask = attention_mask
        if packed and self.config._attn_implementation == "eager":  # eager adds the mask to the logits
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)
        elif packed and self.config._attn_implementation != "sdpa":
            raise ValueError(
                f"packed PPM batches need sdpa or eager attention, not {self.config._attn_implementation!r}"
            )
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        if packed:
            last = hidden.reshape(-1, hidden.shape[-1])[score_at]
        else:
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        return self.value_head(last.to(self.value_head.weight.dtype)).squeeze(-1).float()

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_policy(
        cls, uri_or_path: str | os.PathLike, *, device: str | None = None, dtype: str = "auto"
    ) -> "ProcessPreferenceModel":
        """A PPM whose backbone is a policy checkpoint (local or s3://) and whose head is new."""
        from transformers import AutoModel

        target = resolve_device(device)
        with local_copy(uri_or_path) as path:
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{uri_or_path}: not a Hugging Face checkpoint (no config.json)")
            tokenizer = load_tokenizer(path)
            backbone = AutoModel.from_pretrained(path, dtype=resolve_dtype(dtype, target), local_files_only=True)
        model = cls(backbone, tokenizer).to(target)
        log.info("PPM from policy %s: %.1fM parameters on %s", uri_or_path, _millions(model), target)
        return model

    @classmethod
    def from_pretrained(
        cls, uri_or_path: str | os.PathLike, *, device: str | None = None, dtype: str = "auto"
    ) -> "ProcessPreferenceModel":
        """Load a directory written by `save_pretrained` (local or s3://)."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        target = resolve_device(device)
        with local_copy(uri_or_path) as path:
            spec = read_ppm_config(path, source=str(uri_or_path))
            tokenizer = load_tokenizer(path)
            backbone = AutoModel.from_pretrained(path, dtype=resolve_dtype(dtype, target), local_files_only=True)
            head = load_file(str(path / spec["head_file"]))
        model = cls(backbone, tokenizer)
        if backbone.config.hidden_size != spec["head"]["hidden_size"]:
            raise PPMCheckpointError(
                f"{uri_or_path}: value head hidden_size {spec['head']['hidden_size']} does not match "
                f"the backbone's {backbone.config.hidden_size}"
            )
        if "weight" not in head:
            raise PPMCheckpointError(f"{uri_or_path}: {spec['head_file']} has no 'weight' tensor")
        with torch.no_grad():
            model.value_head.weight.copy_(head["weight"])
        model.to(target).eval()
        log.info("loaded PPM %s (%.1fM parameters) on %s", uri_or_path, _millions(model), target)
        return model

    def save_pretrained(self, uri_or_path: str | os.PathLike, *, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write the PPM directory (local, or s3:// through the store with ppm_config.json as commit file).

        `state_dict` (keys `backbone.*` and `value_head.*`) replaces the module's own
        tensors, for weights gathered from sharded training (DeepSpeed ZeRO-3).
        """
        if is_s3(uri_or_path):
            staging = Path(tempfile.mkdtemp(prefix="rstar-ppm-"))
            try:
                self._save_local(staging, state_dict)
                store_for(uri_or_path).upload_dir(staging, str(uri_or_path), commit=PPM_CONFIG_FILE)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            self._save_local(Path(uri_or_path), state_dict)

    def _save_local(self, path: Path, state_dict: Mapping[str, torch.Tensor] | None) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        state = dict(state_dict) if state_dict is not None else self.state_dict()
        backbone_state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        head = {"weight": state["value_head.weight"].detach().contiguous().cpu()}
        self.backbone.save_pretrained(path, state_dict=backbone_state)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        save_file(head, str(path / VALUE_HEAD_FILE))
        spec = {
            "format": PPM_FORMAT,
            "kind": "process_preference_model",
            "head_file": VALUE_HEAD_FILE,
            "head": {"type": "linear", "hidden_size": int(self.backbone.config.hidden_size), "bias": False},
            "pooling": "last_token",
            "squash": f"tanh(score / {SQUASH_SCALE:g})",
        }
        # Last, so a directory with ppm_config.json is a complete PPM.
        (path / PPM_CONFIG_FILE).write_text(json.dumps(spec, indent=2) + "\n")


def read_ppm_config(path: Path, *, source: str | None = None) -> dict[str, Any]:
    """The validated ppm_config.json of a local PPM directory; PPMCheckpointError when it is not one."""
    where = source or str(path)
    config_path = path / PPM_CONFIG_FILE
    if not config_path.is_file():
        hint = " (it looks like a policy checkpoint: build a PPM with ProcessPreferenceModel.from_policy)" if (
            path / "config.json"
        ).is_file() else ""
        raise PPMCheckpointError(f"{where}: not a process preference model: {PPM_CONFIG_FILE} is missing{hint}")
    try:
        spec = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise PPMCheckpointError(f"{where}: {PPM_CONFIG_FILE} is not valid JSON ({exc})") from exc
    for key in ("format", "kind", "head_file", "head"):
        if key not in spec:
            raise PPMCheckpointError(f"{where}: {PPM_CONFIG_FILE} has no field {key!r}")
    if spec["kind"] != "process_preference_model":
        raise PPMCheckpointError(f"{where}: {PPM_CONFIG_FILE} kind is {spec['kind']!r}, expected 'process_preference_model'")
    if spec["format"] != PPM_FORMAT:
        raise PPMCheckpointError(f"{where}: {PPM_CONFIG_FILE} format {spec['format']!r} is not supported (expected {PPM_FORMAT})")
    if spec["head"].get("type") != "linear" or "hidden_size" not in spec["head"]:
        raise PPMCheckpointError(f"{where}: {PPM_CONFIG_FILE} field 'head' must be {{'type': 'linear', 'hidden_size': H}}")
    for name in (spec["head_file"], "config.json"):
        if not (path / name).is_file():
            raise PPMCheckpointError(f"{where}: {name} is missing")
    return spec


def _millions(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


class PPMScorer:
    """Scores of partial trajectories in [-1, 1]: the value model that search and evaluation call.

    Texts are full rendered trajectories (prompt + steps with output blocks). Search
    scores the new children of each expanded node together, and siblings share their
    parent's whole trajectory; so texts whose tokens are mostly one shared prefix are
    packed behind a single copy of it (`pack_shared_prefixes`: the same scores, fewer
    tokens), and the packed groups are cut into micro-batches of at most
    `max_batch_tokens` tokens.
    """

    def __init__(
        self, model: ProcessPreferenceModel, tokenizer=None, *, max_length: int | None = None, max_batch_tokens: int = 32768
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if self.tokenizer is None:
            raise ValueError("PPMScorer needs a tokenizer (the model has none attached)")
        self.max_length = max_length or int(getattr(model.config, "max_position_embeddings", 4096))
        self.max_batch_tokens = max(max_batch_tokens, self.max_length)
        self.device = next(model.parameters()).device
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    @classmethod
    def from_pretrained(
        cls, uri_or_path: str | os.PathLike, *, device: str | None = None, dtype: str = "auto", **kwargs
    ) -> "PPMScorer":
        return cls(ProcessPreferenceModel.from_pretrained(uri_or_path, device=device, dtype=dtype), **kwargs)

    def raw_scores(self, texts: Sequence[str]) -> list[float]:
        """Value-head outputs before the squash, in input order."""
        if not texts:
            return []
        ids = encode_texts(self.tokenizer, texts, self.max_length)
        out = [0.0] * len(ids)
        with torch.inference_mode():
            for chunk in self._chunks(self._prefix_groups(ids)):
                batch = pack_shared_prefixes([[ids[i] for i in group] for group, _ in chunk], self.pad_id)
                scores = self.model(**{k: v.to(self.device) for k, v in batch.items()})
                for i, value in zip((i for group, _ in chunk for i in group), scores.tolist()):
                    out[i] = value
        return out

    def score(self, texts: Sequence[str]) -> list[float]:
        """tanh(raw / 5) of each text, in input order."""
        return [math.tanh(r / SQUASH_SCALE) for r in self.raw_scores(texts)]

    def _prefix_groups(self, ids: list[list[int]]) -> list[tuple[list[int], int]]:
        """(text indices, packed tokens) of groups whose shared prefix is at least half of every
        member's tokens, packed within `max_length` tokens. Sorted by tokens, siblings are adjacent."""
        groups: list[tuple[list[int], int]] = []
        members: list[int] = []
        shared = total = longest = 0
        for i in sorted(range(len(ids)), key=ids.__getitem__):
            row = ids[i]
            if members:
                common = min(shared, shared_prefix_length([ids[members[0]], row]))
                packed = total + len(row) - len(members) * common
                if 2 * common >= max(longest, len(row)) and packed <= self.max_length:
                    members.append(i)
                    shared, total, longest = common, total + len(row), max(longest, len(row))
                    continue
                groups.append((members, total - (len(members) - 1) * shared))
            members, shared, total, longest = [i], len(row) - 1, len(row), len(row)
        groups.append((members, total - (len(members) - 1) * shared))
        return groups

    def _chunks(self, groups: list[tuple[list[int], int]]):
        """Consecutive runs of the groups, longest first, of at most `max_batch_tokens` tokens."""
        chunk: list[tuple[list[int], int]] = []
        tokens = 0
        for group in sorted(groups, key=lambda g: -g[1]):
            if chunk and tokens + group[1] > self.max_batch_tokens:
                yield chunk
                chunk, tokens = [], 0
            chunk.append(group)
            tokens += group[1]
        if chunk:
            yield chunk
