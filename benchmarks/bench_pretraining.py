"""Pre-training step time of the embedded default's base model, eager attention against SDPA.

    python benchmarks/bench_pretraining.py                    # the precision `auto` picks here
    python benchmarks/bench_pretraining.py --dtype bfloat16   # bf16 autocast (native bf16 CPUs)

The bootstrap (embedded/bootstrap.py) picks the attention kernel by precision
(`pretraining_attention`): this measures the choice on the machine at hand. The model
is the default world's (EmbeddedConfig), freshly initialised; the batches are the
bootstrap's own (length-batched seed-corpus documents, `batch_tokens` padded tokens a
step), the same batches for both kernels; one thread, as each pre-training worker.
Throughput is non-padding tokens per second; the last line is the step-time ratio,
eager / SDPA (above 1: SDPA is the faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time

import torch

from rstar_math.config import PRETRAINING_DTYPES, EmbeddedConfig
from rstar_math.embedded.bootstrap import (
    collate,
    encode_documents,
    length_batches,
    model_config,
    pretraining_attention,
    pretraining_dtype,
    seed_problems,
    token_loss_sum,
)
from rstar_math.embedded.corpus import InProcessExecutor, write_corpus
from rstar_math.models.tokenizer import train_tokenizer
from rstar_math.training.tasks import IGNORE_INDEX


def step_seconds(attention: str, world: EmbeddedConfig, tokenizer, batches, dtype: str,
                 warmup: int) -> tuple[float, int]:
    """(seconds per measured step, non-padding tokens per measured step) over `batches`."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM._from_config(model_config(world, tokenizer), attn_implementation=attention)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=world.learning_rate)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    tokens, started = 0, 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            tokens, started = 0, time.perf_counter()
        with autocast:
            loss = token_loss_sum(model, batch) / max(1, int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    measured = len(batches) - warmup
    return (time.perf_counter() - started) / measured, tokens // measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="auto", choices=PRETRAINING_DTYPES, help="embedded.dtype")
    parser.add_argument("--documents-per-module", type=int, default=100, help="seed-corpus problems per module")
    parser.add_argument("--steps", type=int, default=12, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    world = dataclasses.replace(EmbeddedConfig(), corpus_per_module=args.documents_per_module)
    dtype = pretraining_dtype(args.dtype)
    documents = write_corpus(seed_problems(world), misconception_rate=world.rates, seed=world.seed,
                             executor=InProcessExecutor(world.workers)).documents
    tokenizer = train_tokenizer(documents, vocab_size=world.vocab_size)
    encoded = encode_documents(tokenizer, documents, world.max_seq_len)
    order = length_batches([len(e.input_ids) for e in encoded], world.batch_tokens, random.Random(0))
    needed = args.warmup + args.steps
    if len(order) < needed:
        parser.error(f"{len(order)} batches from the corpus, {needed} needed: raise --documents-per-module")
    batches = [collate([encoded[i] for i in rows], tokenizer.pad_token_id) for rows in order[:needed]]

    results = {}
    for attention in ("eager", "sdpa"):
        seconds, tokens = step_seconds(attention, world, tokenizer, batches, dtype, args.warmup)
        results[attention] = {"step_s": seconds, "tokens_per_s": tokens / seconds}
    ratio = results["eager"]["step_s"] / results["sdpa"]["step_s"]
    picked = pretraining_attention(dtype)
    if args.json:
        print(json.dumps({"dtype": dtype, "picked": picked, "eager_over_sdpa": ratio, **results}, indent=2))
        return 0
    print(f"pre-training, {dtype}, 1 thread, {args.steps} steps of up to {world.batch_tokens} padded tokens "
          f"after {args.warmup} warm-up")
    print(f"{'attention':<10} {'s/step':>8} {'tokens/s':>10}")
    for attention, r in results.items():
        print(f"{attention:<10} {r['step_s']:8.3f} {r['tokens_per_s']:10.0f}")
    print(f"step time, eager / sdpa: {ratio:.2f}x (the bootstrap picks {picked} in {dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
