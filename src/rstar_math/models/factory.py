"""Choosing and building the engine and the value model a stage runs with.

    engine = make_engine("s3://bucket/runs/r1/round-1/policy", cfg.model)     # vLLM on GPU, else transformers
    ppm = make_value_model("s3://bucket/runs/r1/round-2/ppm", cfg.model)
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from rstar_math.config import ModelConfig

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def make_engine(checkpoint: str, model: ModelConfig, *, backend: str = "auto", seed: int = 0):
    """A generation engine over a checkpoint directory (local or s3://).

    backend: 'vllm', 'transformers', or 'auto' (vLLM when it imports and a GPU is present).
    """
    if backend not in ("auto", "vllm", "transformers"):
        raise ValueError(f"unknown engine backend {backend!r}")
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        from rstar_math.models.vllm_engine import VLLMEngine

        return VLLMEngine.from_pretrained(checkpoint, dtype=model.dtype, max_model_len=model.max_seq_len, seed=seed)
    from rstar_math.models.hf_engine import TransformersEngine

    return TransformersEngine.from_pretrained(checkpoint, dtype=model.dtype, max_seq_len=model.max_seq_len, seed=seed)


def make_value_model(checkpoint: str, model: ModelConfig):
    """The PPM's scoring API (scores in [-1, 1]) over a PPM checkpoint directory (local or s3://)."""
    from rstar_math.models.ppm import PPMScorer

    return PPMScorer.from_pretrained(checkpoint, dtype=model.dtype, max_length=model.max_seq_len)
