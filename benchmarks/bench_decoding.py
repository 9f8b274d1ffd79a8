"""Benchmark: the engine's decoding loop against the same loop on transformers' defaults.

    python benchmarks/bench_decoding.py                      # bootstraps a small embedded-world model first
    python benchmarks/bench_decoding.py --model PATH         # any Hugging Face causal LM directory
    python benchmarks/bench_decoding.py --json

A search over generated problems (the real sandbox, the default preset's batch shape)
and a greedy pass over the same questions are recorded, then replayed with nothing
executed, alternately by two configurations of the same engine:

  transformers  DynamicCache (each token is appended with torch.cat, copying the cache)
                and finished rows dropped as soon as they finish
  engine        the cache that grows in place (models/kv_cache.py) and finished rows
                dropped in bulk (hf_engine.COMPACT_SHARE)

Greedy decoding gives the same tokens under both; sampling differs only in which random
draws fall to which row (finished rows still draw until they leave). The ratio of tokens
per second, engine over transformers, is the loop's speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from transformers import DynamicCache

from bench_search import Recording, bootstrap_model, embedded_problems


def replay(engine, calls) -> tuple[int, float]:
    started, tokens = time.perf_counter(), 0
    for prompts, params in calls:
        tokens += sum(c.token_count for group in engine.generate(prompts, params) for c in group)
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: bootstrap a small embedded-world model)")
    parser.add_argument("--bootstrap-steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--trees", type=int, default=64, help="trees in flight (the default preset's)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating replays per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rstar_math.models.engine import SamplingParams
    from rstar_math.models.hf_engine import TransformersEngine
    from rstar_math.sandbox import ExecutorPool, SandboxLimits
    from rstar_math.search.mcts import SearchSettings, run_search
    from rstar_math.steps import STOP_STRINGS, render_prompt

    model_dir = args.model or bootstrap_model(os.path.join(tempfile.mkdtemp(prefix="rstar-bench-"), "model"),
                                              args.bootstrap_steps)
    engine = TransformersEngine.from_pretrained(model_dir, device=args.device, dtype="auto")
    problems = embedded_problems(args.problems, rollouts=4)
    settings = SearchSettings(candidates=3, max_depth=6, temperature=1.0, max_step_tokens=144,
                              trees_in_flight=args.trees)
    recording = Recording(engine)
    with ExecutorPool(SandboxLimits(timeout_s=5.0)) as pool:
        list(run_search(problems, recording, pool, settings))
    greedy = SamplingParams(temperature=0, max_new_tokens=144, stop=STOP_STRINGS)
    recording.calls.append(([render_prompt(p.question) for p in problems], greedy))

    configurations = {
        "transformers": (lambda config: DynamicCache(config=config), 0.0),
        "engine": (engine.new_cache, engine.compact_share),
    }
    seconds = {name: 0.0 for name in configurations}
    tokens = {name: 0 for name in configurations}
    for repeat in range(args.repeats):
        for name, (new_cache, share) in configurations.items():
            engine.new_cache, engine.compact_share, engine.calls = new_cache, share, 0  # same draws each replay
            count, elapsed = replay(engine, recording.calls)
            tokens[name] += count
            seconds[name] += elapsed
    rates = {name: tokens[name] / seconds[name] for name in configurations}
    result = {
        "device": args.device,
        "parameters_m": round(sum(p.numel() for p in engine.model.parameters()) / 1e6, 2),
        "engine_calls": len(recording.calls),
        "tokens_per_replay": tokens["engine"] // args.repeats,
        "tokens_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        "ratio": round(rates["engine"] / rates["transformers"], 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model: {result['parameters_m']}M parameters on {args.device}; {len(problems)} problems, "
          f"{args.trees} trees in flight, {result['engine_calls']} engine calls, "
          f"{result['tokens_per_replay']} tokens a replay")
    print(f"transformers defaults  {rates['transformers']:10.1f} tokens/s")
    print(f"engine                 {rates['engine']:10.1f} tokens/s   ratio {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
