"""Training throughput of the policy SFT and PPM tasks through the real training loop.

    python benchmarks/bench_training.py                      # CPU: a tiny Qwen2, plain PyTorch
    python benchmarks/bench_training.py --deepspeed zero2     # and the same under DeepSpeed (gloo)
    python benchmarks/bench_training.py --precision bf16      # CPU under bf16 autocast (the default preset's)
    python benchmarks/bench_training.py --device cuda --deepspeed zero2 --json
                                                             # GPU: a 137M Qwen2 in bf16, with and
                                                             # without DeepSpeed, plus MFU

Models are random Qwen2s made on the spot (no weights are downloaded), with a
tokenizer trained on the synthetic trajectories they train on. Throughput is
non-padding tokens per second of step time, measured after `--warmup` steps.
The PPM runs twice on the same pairs: packed (each group's shared prefix once, the
default) and `ppm-pad` (one padded row per step); the last line is their step-time
ratio, the packing's speed-up (a packed prefix counts once, so compare s/step).
Model FLOPs utilisation is 6 x parameters x tokens/s / peak (`--peak-tflops`, 989
for an H100's dense bf16), the usual estimate that ignores attention's own FLOPs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rstar_math.config import TrainConfig
from rstar_math.steps import render_prompt, render_step
from rstar_math.training import PPMTask, SftTask, train

SIZES = {
    # name: (hidden, layers, heads, kv heads, vocab)
    "tiny": (128, 4, 4, 2, None),
    "137m": (768, 12, 12, 4, 32768),
}


@dataclass(frozen=True)
class Measurement:
    task: str
    device: str
    backend: str
    params_m: float
    """Trainable parameters, millions."""
    batch: int
    seq_len: float
    """Mean non-padding tokens per sequence."""
    tokens_per_s: float
    step_s: float
    mfu: float | None
    """Model FLOPs utilisation (GPU only)."""


def synthetic_problem(rng: random.Random, steps: int) -> tuple[str, list[str], list[str]]:
    """(prompt, correct steps, erroneous steps) of an addition chain, in the step format."""
    numbers = [rng.randint(1, 999) for _ in range(steps + 1)]
    prompt = render_prompt("Add up " + ", ".join(map(str, numbers)) + ".")
    good, bad, total = [], [], numbers[0]
    for k, n in enumerate(numbers[1:], 1):
        total += n
        code = f"# Step {k}: add {n} to the running total\nt{k} = {total - n} + {n}\nprint(t{k})"
        good.append(render_step(f"<code>\n{code}\n<end_of_step>", str(total)))
        error = f"NameError: name 's{k}' is not defined"
        bad.append(render_step(f"<code>\n# Step {k}: add {n}\nprint(s{k} + {n})\n<end_of_step>", error))
    return prompt, good, bad


def make_model(directory: Path, size: str, texts: list[str]) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rstar_math.models.tokenizer import save_tokenizer, train_tokenizer

    hidden, layers, heads, kv_heads, vocab = SIZES[size]
    tokenizer = train_tokenizer(texts, vocab_size=2048)
    config = Qwen2Config(
        vocab_size=max(vocab or 0, len(tokenizer)),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    save_tokenizer(tokenizer, directory)
    return directory


def datasets(n: int, steps: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    sft, pairs = [], []
    for i in range(n):
        prompt, good, bad = synthetic_problem(rng, steps)
        completion = "".join(good) + render_step(f"<answer>The total is \\boxed{{{i}}}<end_of_answer>", None)
        sft.append(dict(problem_id=f"p{i}", prompt=prompt, completion=completion, avg_q=1.0, source="synthetic"))
        prefix = prompt + "".join(good[: steps // 2])
        for c in good[steps // 2 : steps // 2 + 2]:
            for r in bad[steps // 2 : steps // 2 + 2]:
                pairs.append(
                    dict(problem_id=f"p{i}", prefix=prefix, chosen=c, rejected=r, q_chosen=0.5, q_rejected=-0.5)
                    | dict(depth=1, kind="step")
                )
    return sft, pairs


def measure(
    label: str, task, config: TrainConfig, *, device: str, steps: int, warmup: int, peak_tflops: float
) -> Measurement:
    marks: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        train(
            task, config, output_dir=Path(tmp) / "out", device=device, max_steps=warmup + steps, log_every=10**9,
            on_step=lambda info: marks.append((info.tokens, info.train_time_s)),
        )
    tokens = marks[-1][0] - marks[warmup - 1][0]
    seconds = marks[-1][1] - marks[warmup - 1][1]
    params = sum(p.numel() for p in task.build_model().parameters() if p.requires_grad)
    rate = tokens / seconds
    mfu = 6 * params * rate / (peak_tflops * 1e12) if device.startswith("cuda") else None
    sequences = config.batch_size * (4 if task.name == "ppm" else 1)  # a PPM example is a group of 4 steps here
    return Measurement(
        label, device, config.deepspeed or "torch", params / 1e6, config.batch_size,
        tokens / steps / sequences, rate, seconds / steps, mfu,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--deepspeed", default="", help="also run under this DeepSpeed config (zero2, zero3, path)")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: tiny on CPU, 137m on GPU")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default: 10 CPU, 20 GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 CPU, 32 GPU")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="default: 4 CPU, 8 GPU")
    parser.add_argument("--solution-steps", type=int, default=None, help="steps per synthetic trajectory (length)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak, dense bf16 (H100: 989)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="TrainConfig.precision (auto: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    gpu = args.device.startswith("cuda")
    size = args.size or ("137m" if gpu else "tiny")
    steps = args.steps or (20 if gpu else 10)
    batch, micro = args.batch_size or (32 if gpu else 8), args.micro_batch_size or (8 if gpu else 4)
    # One example per problem, each used once: every measured step sees fresh data.
    sft_rows, pair_rows = datasets(n=(args.warmup + steps) * batch, steps=args.solution_steps or (24 if gpu else 6))
    backends = [""] + ([args.deepspeed] if args.deepspeed else [])

    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "model", size, [r["prompt"] + r["completion"] for r in sft_rows[:200]])
        sft = SftTask(str(model_dir), sft_rows, max_length=4096)
        ppm = PPMTask(str(model_dir), pair_rows, max_length=4096)
        ppm_pad = PPMTask(str(model_dir), pair_rows, max_length=4096, tokenizer=ppm.tokenizer, share_prefixes=False)
        for label, task in (("sft", sft), ("ppm", ppm), ("ppm-pad", ppm_pad)):
            for backend in backends:
                config = TrainConfig(
                    learning_rate=1e-4, epochs=1.0, batch_size=batch, micro_batch_size=micro, warmup_ratio=0.0,
                    checkpoint_every=10**9, deepspeed=backend, precision=args.precision,
                )
                rows.append(measure(
                    label, task, config, device=args.device, steps=steps, warmup=args.warmup, peak_tflops=args.peak_tflops
                ))

    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    base = {r.task: r.tokens_per_s for r in rows if r.backend == "torch"}
    threads = torch.get_num_threads()
    print(f"device {args.device}, model {size}, precision {args.precision}, torch threads {threads}, "
          f"{steps} steps after {args.warmup} warm-up")
    header = ("task", "backend", "params", "batch", "tok/seq", "tokens/s", "s/step", "MFU", "vs torch")
    print("{:<7} {:<9} {:>8} {:>5} {:>8} {:>10} {:>8} {:>7} {:>8}".format(*header))
    for r in rows:
        mfu = f"{100 * r.mfu:6.1f}%" if r.mfu is not None else "      -"
        print(
            f"{r.task:<7} {r.backend:<9} {r.params_m:7.1f}M {r.batch:>5} {r.seq_len:8.0f} {r.tokens_per_s:10.0f} "
            f"{r.step_s:8.3f} {mfu} {r.tokens_per_s / base[r.task]:8.2f}"
        )
    step = {(r.task, r.backend): r.step_s for r in rows}
    for backend in ("torch", *backends[1:]):
        print(f"PPM step time, padded / packed ({backend}): {step['ppm-pad', backend] / step['ppm', backend]:.2f}x")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
