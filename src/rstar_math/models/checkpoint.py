"""Loading Hugging Face checkpoints from a local directory or an s3:// URI.

    model, tokenizer = load_causal_lm("s3://bucket/models/Qwen2.5-Math-7B", device="cuda")

An S3 checkpoint is downloaded whole through the store into a temporary
directory, loaded, and the download removed. Nothing is fetched from a hub:
`local_files_only` is always set, so a missing file is an error, not a download.
"""

from __future__ import annotations

import logging

import torch

from rstar_math.store import local_copy

log = logging.getLogger(__name__)


def resolve_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, fp32 elsewhere (bf16 matmuls are slow on most CPUs)."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, {', '.join(table)}")
    return table[dtype]


def load_tokenizer(path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(uri: str, *, device: str | None = None, dtype: str = "auto"):
    """(model in eval mode on `device`, tokenizer) from a checkpoint directory, local or s3://."""
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    with local_copy(uri) as path:
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{uri}: not a Hugging Face checkpoint (no config.json)")
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, target), local_files_only=True)
    model.to(target).eval()
    log.info("loaded %s (%.1fM parameters) on %s", uri, sum(p.numel() for p in model.parameters()) / 1e6, target)
    return model, tokenizer
