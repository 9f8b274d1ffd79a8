"""Generation with vLLM on GPU rollout nodes (the `gpu` extra; imported only when used).

    engine = VLLMEngine.from_pretrained("s3://bucket/models/policy-round-2", tensor_parallel_size=1)

Prefix caching is on: the k sibling candidates of an expansion, and every later
step of the same tree, share long prompt prefixes, and vLLM then computes their
KV cache once. Stop strings are kept in the output (include_stop_str_in_output),
matching the protocol. vLLM pins its own torch and transformers, so the GPU
rollout image installs it with its own pins (images/gpu-rollout).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Sequence

from rstar_math.models.engine import Completion, EngineStats, SamplingParams
from rstar_math.store import is_s3, local_copy


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        seed: int = 0,
    ):
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - depends on the image
            raise ImportError("VLLMEngine needs vllm: install the 'gpu' extra (GPU rollout image)") from exc
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=True,
            seed=seed,
        )
        self.stats = EngineStats()
        self._cache_dir: str | None = None

    @classmethod
    def from_pretrained(cls, uri: str, **kwargs) -> "VLLMEngine":
        """Local directories are read in place; an S3 checkpoint is copied to local disk for vLLM's loader."""
        if not is_s3(uri):
            return cls(uri, **kwargs)
        cache_dir = tempfile.mkdtemp(prefix="rstar-vllm-")
        with local_copy(uri) as path:
            shutil.copytree(path, f"{cache_dir}/model")
        engine = cls(f"{cache_dir}/model", **kwargs)
        engine._cache_dir = cache_dir
        return engine

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSamplingParams

        started = time.monotonic()
        sampling = VSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop),
            include_stop_str_in_output=True,
            seed=params.seed,
        )
        outputs = self.llm.generate(list(prompts), sampling, use_tqdm=False)
        results = [
            [
                Completion(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop")
                for o in request.outputs
            ]
            for request in outputs
        ]
        self.stats.calls += 1
        self.stats.prompts += len(prompts)
        self.stats.completions += sum(len(r) for r in results)
        self.stats.generated_tokens += sum(c.token_count for r in results for c in r)
        self.stats.seconds += time.monotonic() - started
        return results

    def close(self) -> None:
        if self._cache_dir:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
