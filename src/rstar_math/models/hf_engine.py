"""Generation with transformers: batched sampling with a KV cache, for CPU and GPU.

    engine = TransformersEngine.from_pretrained("path/or/s3://checkpoint")
    engine.generate(prompts, SamplingParams(n=8, temperature=0.7, stop=STOP_STRINGS))

Why a decoding loop of our own instead of `model.generate`: search samples n
siblings from one prompt, and their lengths differ a lot. Here each prompt is
encoded once and its KV cache repeated n times (siblings share the prefix), and
finished sequences leave the batch instead of being padded until the longest is
done. Prompts are left-padded; stop strings end a sequence as soon as they appear
in its decoded text.

Two things keep a step cheap (kv_cache.py and COMPACT_SHARE): the cache grows in
place instead of being copied at every token, and finished rows are dropped from
it in bulk, once a quarter of the batch has finished, rather than one at a time
(dropping a row copies the whole cache; carrying a finished row costs its share
of a step).

Batches adapt to memory: rows per forward are bounded by `max_batch_tokens`
(rows x sequence length), and a CUDA out-of-memory error halves the chunk and
retries it.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Sequence

import torch

from rstar_math.models.checkpoint import load_causal_lm, resolve_device
from rstar_math.models.engine import Completion, EngineStats, SamplingParams, truncate_at_stop
from rstar_math.models.kv_cache import growing_cache

log = logging.getLogger(__name__)

COMPACT_SHARE = 0.25
"""Finished rows are dropped from the batch once they are this share of it."""


@functools.cache
def _cache_name() -> str:
    """What transformers calls the KV cache, as a forward argument and an output field: `cache`
    from 5.x (where the old name warns, and goes in 5.40), `past_key_values` before."""
    from dataclasses import fields

    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if any(f.name == "cache" for f in fields(CausalLMOutputWithPast)) else "past_key_values"


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row: greedy at temperature 0, else temperature + nucleus sampling."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < params.top_p  # always keeps the top token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class TransformersEngine:
    """The generation protocol over any Hugging Face causal LM."""

    def __init__(self, model, tokenizer, *, max_batch_tokens: int | None = None, max_seq_len: int | None = None, seed: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_seq_len = max_seq_len or getattr(model.config, "max_position_embeddings", 4096)
        self.max_batch_tokens = max_batch_tokens or self._default_batch_tokens()
        self.seed = seed
        # What makes a decoding step cheap; benchmarks/bench_decoding.py swaps in transformers' defaults.
        self.new_cache = growing_cache
        self.compact_share = COMPACT_SHARE
        self.calls = 0
        self.stats = EngineStats()
        self._eos = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
        self._trigger_cache: dict[tuple[str, ...], list[bool]] = {}

    @classmethod
    def from_pretrained(cls, uri: str, *, device: str | None = None, dtype: str = "auto", **kwargs) -> "TransformersEngine":
        model, tokenizer = load_causal_lm(uri, device=device, dtype=dtype)
        return cls(model, tokenizer, **kwargs)

    def _default_batch_tokens(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            config = self.model.config
            # K and V per token per layer; keep the cache within a third of free memory.
            per_token = 2 * config.num_hidden_layers * config.hidden_size * self.model.dtype.itemsize
            return max(4096, int(free / 3 / per_token))
        return 64 * 1024

    def _stop_triggers(self, stop: tuple[str, ...]) -> list[bool]:
        """Per token id, whether a stop string may have just completed (cheap filter before decoding)."""
        if stop not in self._trigger_cache:
            last_chars = {s[-1] for s in stop}
            vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            flags = [
                any(ch in self.tokenizer.convert_tokens_to_string([tok]) for ch in last_chars) if tok is not None else False
                for tok in vocab
            ]
            # Byte-level pieces that decode to nothing printable could end a multi-byte stop string.
            self._trigger_cache[stop] = flags
        return self._trigger_cache[stop]

    # -- the protocol ------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        started = time.monotonic()
        # An explicit seed reproduces this call; otherwise calls draw from the engine's own sequence.
        seed = params.seed if params.seed is not None else self.seed * 1_000_003 + self.calls
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self.calls += 1
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        results: list[list[Completion] | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths batch together
        start = 0
        while start < len(order):
            longest = len(encoded[order[min(start + 1, len(order)) - 1]])
            per_prompt = params.n * (longest + params.max_new_tokens)
            size = max(1, min(len(order) - start, self.max_batch_tokens // max(per_prompt, 1)))
            chunk = order[start : start + size]
            try:
                outs = self._generate_chunk([encoded[i] for i in chunk], params, generator)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                torch.cuda.empty_cache()
                self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
                log.warning("out of memory; batch budget halved to %d tokens", self.max_batch_tokens)
                continue
            for i, out in zip(chunk, outs):
                results[i] = out
            start += size
        self.stats.calls += 1
        self.stats.prompts += len(prompts)
        self.stats.completions += len(prompts) * params.n
        self.stats.generated_tokens += sum(c.token_count for group in results for c in group)  # type: ignore[union-attr]
        self.stats.seconds += time.monotonic() - started
        return results  # type: ignore[return-value]

    def _generate_chunk(self, encoded: list[list[int]], params: SamplingParams, generator) -> list[list[Completion]]:
        n, pad = params.n, self.tokenizer.pad_token_id
        budget = [min(params.max_new_tokens, self.max_seq_len - len(ids)) for ids in encoded]
        outputs: list[list[Completion]] = [[] for _ in encoded]
        live = [i for i, b in enumerate(budget) if b > 0]
        for i in set(range(len(encoded))) - set(live):  # no room left in the context window
            outputs[i] = [Completion("", 0, "length") for _ in range(n)]
        if not live:
            return outputs

        width = max(len(encoded[i]) for i in live)
        input_ids = torch.full((len(live), width), pad, dtype=torch.long)
        attention = torch.zeros((len(live), width), dtype=torch.long)
        for row, i in enumerate(live):
            ids = encoded[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)

        # Prefill once per prompt, then give each of the n samples its own copy of the cache.
        cache_name = _cache_name()
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                         **{cache_name: self.new_cache(self.model.config)})
        cache = getattr(out, cache_name)
        logits = out.logits[:, -1, :]
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            attention = attention.repeat_interleave(n, dim=0)
            positions = positions.repeat_interleave(n, dim=0)
        rows = [(i, s) for i in live for s in range(n)]  # (prompt index, sample index) per cache row
        limit = [budget[i] for i, _ in rows]
        generated: list[list[int]] = [[] for _ in rows]
        batch = list(range(len(rows)))  # cache row -> index into `rows`; finished rows linger until compaction
        last_pos = positions[:, -1]
        triggers = self._stop_triggers(params.stop) if params.stop else None
        finished: dict[int, Completion] = {}

        while True:
            tokens = _sample(logits, params, generator)
            for row_index, token in zip(batch, tokens.tolist()):
                if row_index in finished:
                    continue
                ids = generated[row_index]
                ids.append(token)
                if token in self._eos:
                    ids.pop()  # the end-of-sequence token is not part of the text
                    finished[row_index] = Completion(self.tokenizer.decode(ids), len(ids) + 1, "stop")
                    continue
                if triggers is not None and (token >= len(triggers) or triggers[token]):
                    text, hit = truncate_at_stop(self.tokenizer.decode(ids), params.stop)
                    if hit:
                        finished[row_index] = Completion(text, len(ids), "stop")
                        continue
                if len(ids) >= limit[row_index]:
                    finished[row_index] = Completion(self.tokenizer.decode(ids), len(ids), "length")
            done = [row_index in finished for row_index in batch]
            finished_rows = sum(done)
            if finished_rows == len(batch):
                break
            if finished_rows and finished_rows >= self.compact_share * len(batch):
                kept = [slot for slot, d in enumerate(done) if not d]
                index = torch.tensor(kept, device=self.device)
                cache.batch_select_indices(index)
                batch = [batch[slot] for slot in kept]
                tokens, attention, last_pos = tokens[index], attention[index], last_pos[index]
            attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
            last_pos = last_pos + 1
            out = self.model(
                input_ids=tokens.unsqueeze(-1),
                attention_mask=attention,
                position_ids=last_pos.unsqueeze(-1),
                use_cache=True,
                **{cache_name: cache},
            )
            cache, logits = getattr(out, cache_name), out.logits[:, -1, :]

        for row_index, (i, _) in enumerate(rows):
            outputs[i].append(finished[row_index])
        return outputs
