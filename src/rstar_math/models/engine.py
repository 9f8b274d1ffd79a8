"""The generation protocol every engine implements: prompts in, sampled completions out, batched.

    engine.generate(["<question>...", ...], SamplingParams(n=8, temperature=0.7, stop=STOP_STRINGS))
    -> [[Completion(text, token_count, finish_reason), ... 8], ...]

Engines: `TransformersEngine` (CPU and GPU, hf_engine.py) and `VLLMEngine`
(GPU images only, vllm_engine.py). Search, evaluation and benchmarks only ever
see this protocol, so a scripted engine can stand in for a model in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    """Completions per prompt."""
    temperature: float = 1.0
    """0 means greedy decoding (then n must be 1)."""
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    """Generation of a completion ends at the first of these; the stop string is kept in the text."""
    seed: int | None = None

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError("greedy decoding (temperature 0) gives one completion per prompt; set n=1")


@dataclass(frozen=True)
class Completion:
    text: str
    """Generated text, ending with the stop string that ended it (if one did)."""
    token_count: int
    finish_reason: str = "stop"
    """'stop' (a stop string or end of sequence) or 'length' (max_new_tokens reached)."""


@dataclass
class EngineStats:
    calls: int = 0
    prompts: int = 0
    completions: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """One list of `params.n` completions per prompt, in prompt order."""
        ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` after the earliest stop string (kept); returns (text, whether a stop string was found)."""
    cut = None
    for s in stop:
        at = text.find(s)
        if at != -1 and (cut is None or at + len(s) < cut):
            cut = at + len(s)
    return (text[:cut], True) if cut is not None else (text, False)
