"""Benchmark: batched MCTS against raw batched sampling, same engine, model, prompts and batch shapes.

    python benchmarks/bench_search.py --model PATH            # any Hugging Face causal LM directory
    python benchmarks/bench_search.py                         # bootstraps a small embedded-world model first
    python benchmarks/bench_search.py --device cuda --random-model 768x12   # GPU: a 100M+ random Qwen2
    python benchmarks/bench_search.py --json

Search runs over generated problems with the real sandbox. Every engine call it makes
is recorded, then replayed as raw sampling (the same prompts, n and limits, nothing
executed, no tree bookkeeping). The ratio of generated tokens per second, search over
raw, is the share of the engine's throughput that search keeps (target: >= 0.7). Also
printed: where search's wall time went (engine, executor, bookkeeping).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


class Recording:
    """Passes generate() through, keeping each call's prompts and sampling settings."""

    def __init__(self, engine):
        self.engine = engine
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        return self.engine.generate(prompts, params)


def random_model(spec: str, vocab_size: int, path: str) -> str:
    """A randomly initialised Qwen2 (hidden x layers) with the embedded tokenizer, saved at `path`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers = (int(x) for x in spec.split("x"))
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4 // 3 * 2,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 256), max_position_embeddings=2048,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def bootstrap_model(path: str, steps: int) -> str:
    from rstar_math.config import EmbeddedConfig
    from rstar_math.embedded.bootstrap import bootstrap

    import dataclasses

    config = dataclasses.replace(EmbeddedConfig(), max_steps=steps, corpus_per_module=300, warmup_steps=min(100, steps))
    bootstrap(config, path)
    return path


def embedded_problems(count: int, rollouts: int) -> list:
    """At least `count` generated problems of the embedded world's modules, as search input."""
    from rstar_math.config import EmbeddedConfig
    from rstar_math.data.generate import generate_problems
    from rstar_math.search.mcts import Problem

    modules = EmbeddedConfig().modules
    table = generate_problems(modules, count // len(modules) + 1, difficulty=0.2, seed=99)
    return [Problem(r["problem_id"], r["question"], r["answer"], rollouts) for r in table.to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: bootstrap a small embedded-world model)")
    parser.add_argument("--random-model", metavar="HIDDENxLAYERS", help="use a random Qwen2 of this size instead")
    parser.add_argument("--bootstrap-steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--trees", type=int, default=24, help="trees in flight (the batch)")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--max-step-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rstar_math.models.engine import SamplingParams
    from rstar_math.models.hf_engine import TransformersEngine
    from rstar_math.sandbox import ExecutorPool, SandboxLimits
    from rstar_math.search.mcts import SearchSettings, SearchStats, run_search

    scratch = tempfile.mkdtemp(prefix="rstar-bench-")
    if args.model:
        model_dir = args.model
    elif args.random_model:
        # A one-step bootstrap for the world's tokenizer; the model is then replaced by a random one.
        model_dir = bootstrap_model(os.path.join(scratch, "tok"), 1)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        random_model(args.random_model, len(tokenizer), model_dir)
    else:
        model_dir = bootstrap_model(os.path.join(scratch, "model"), args.bootstrap_steps)
    engine = TransformersEngine.from_pretrained(model_dir, device=args.device, dtype="auto")
    parameters = sum(p.numel() for p in engine.model.parameters())

    problems = embedded_problems(args.problems, args.rollouts)
    settings = SearchSettings(candidates=args.candidates, max_depth=6, temperature=0.9,
                              max_step_tokens=args.max_step_tokens, trees_in_flight=args.trees)
    recording = Recording(engine)
    stats = SearchStats()
    with ExecutorPool(SandboxLimits(timeout_s=5.0)) as pool:
        engine.generate(["<question>\nwarm up\n<end_of_question>\n"], SamplingParams(max_new_tokens=4))
        list(run_search(problems, recording, pool, settings, stats=stats))

    started = time.perf_counter()
    raw_tokens = 0
    for prompts, params in recording.calls:
        raw_tokens += sum(c.token_count for group in engine.generate(prompts, params) for c in group)
    raw_seconds = time.perf_counter() - started

    search_rate = stats.generated_tokens / stats.wall_s
    raw_rate = raw_tokens / raw_seconds
    result = {
        "device": args.device,
        "parameters_m": round(parameters / 1e6, 2),
        "problems": len(problems),
        "engine_calls": len(recording.calls),
        "search_tokens": stats.generated_tokens,
        "search_tokens_per_s": round(search_rate, 1),
        "raw_tokens_per_s": round(raw_rate, 1),
        "ratio": round(search_rate / raw_rate, 3),
        "split": {k: round(getattr(stats, k) / stats.wall_s, 3) for k in ("engine_s", "executor_s", "bookkeeping_s")},
        "executor_calls": stats.executor_calls,
        "solved": stats.solved,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model: {result['parameters_m']}M parameters on {args.device}; {len(problems)} problems, "
          f"{args.trees} trees in flight, k={args.candidates}, {args.rollouts} rollouts each")
    print(f"raw batched sampling   {raw_rate:10.1f} tokens/s")
    print(f"batched MCTS           {search_rate:10.1f} tokens/s   ratio {result['ratio']:.2f} (target >= 0.70)")
    split = result["split"]
    print(f"search wall time: engine {split['engine_s']:.0%}, executor {split['executor_s']:.0%}, "
          f"bookkeeping {split['bookkeeping_s']:.0%}; {stats.executor_calls} executions, {stats.solved} solved")


if __name__ == "__main__":
    main()
