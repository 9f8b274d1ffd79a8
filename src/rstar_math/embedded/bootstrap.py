"""Bootstrap the embedded default's base policy: seed corpus -> tokenizer -> tiny Qwen2 trained from scratch.

    from rstar_math.config import EmbeddedConfig
    from rstar_math.embedded.bootstrap import bootstrap

    held_out_ids = ...   # every problem_id the run will search or evaluate on
    result = bootstrap(EmbeddedConfig(), "runs/embedded/base", exclude=held_out_ids)
    AutoModelForCausalLM.from_pretrained(result.path)   # and AutoTokenizer: identical ids

No weights can be downloaded, so the base model of the embedded default is made here,
in minutes on a CPU: generate seed problems (never one of `exclude`), write the
seed corpus with the world's systematic misconceptions (corpus.py), train a byte-level
BPE tokenizer on it, and pre-train a small Qwen2 causal LM on the documents.

Training: documents are batched by length (each starts at position 0, as prompts do
at inference), the loss is on the solution's step tokens only (not the question, not
the output blocks, which the executor writes: the same mask SFT uses), AdamW with
linear warm-up and cosine decay over `max_steps`. `time_budget_s` only guards against
a slow machine: the run stops early with a warning, so the step count, not the clock,
defines the result. Reproducible for a seed on one machine and thread count, not across
processor models: the last bits differ, and so does the model that comes out (README).

Speed, measured on a 2-core CPU with one thread per worker, for the default (5000 steps of
1536 padded tokens): in fp32 on an AVX2-only CPU two forked workers (gloo all-reduce) together
reach ~8.2k tokens/s, ~16 minutes (the corpus before it, its programs in as many forked
processes as workers, ~1.4 minutes). Measured with the earlier MLP width of 512: bf16 autocast
(dtype auto, on a CPU with native bf16; without it bf16 is emulated, 5.4x slower than fp32, and
auto means fp32) trained ~1.3x faster than fp32, and eager attention ~1.5x faster than SDPA
under it (in fp32 SDPA is the faster, ~1.05x: `pretraining_attention`), ~12k tokens/s, ~10
minutes.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import random
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from rstar_math.config import PRETRAINING_DTYPES, EmbeddedConfig
from rstar_math.data.generate import generate_problems
from rstar_math.embedded.corpus import CorpusResult, InProcessExecutor, write_corpus
from rstar_math.models.ppm import pad_batch
from rstar_math.steps import split_prompt, trainable_spans
from rstar_math.training.loop import cpu_has_native_bf16
from rstar_math.training.tasks import IGNORE_INDEX, EncodedExample, sft_encode

log = logging.getLogger(__name__)

WORLD_FILE = "world_config.json"
"""The EmbeddedConfig a base model was bootstrapped with, saved beside it."""


@dataclass(frozen=True)
class BootstrapResult:
    path: str
    documents: int
    skipped: dict[str, dict[str, int]]
    parameters: int
    steps: int
    tokens: int
    """Real (unpadded) tokens seen in training."""
    train_seconds: float
    corpus_seconds: float
    final_loss: float
    losses: tuple[float, ...] = field(default=())
    """Mean loss of each block of 50 steps."""
    longest_step_tokens: int = 0
    """Tokens of the corpus's longest step (code or answer): `search.max_step_tokens` must allow it."""
    corpus: CorpusResult | None = None
    """The seed corpus the model was trained on (documents, their modules and problem ids)."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.train_seconds, 1e-9)


def model_config(config: EmbeddedConfig, tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_seq_len,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )


def length_batches(lengths: Sequence[int], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by similar length, each group at most `batch_tokens` padded tokens, in random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches: list[list[int]] = [[]]
    for i in order:  # ascending lengths: the newest index is the longest of its group
        if batches[-1] and lengths[i] * (len(batches[-1]) + 1) > batch_tokens:
            batches.append([])
        batches[-1].append(i)
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids and attention mask, labels padded with IGNORE_INDEX."""
    input_ids, attention_mask = pad_batch([e.input_ids for e in examples], pad_id)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, example in enumerate(examples):
        labels[row, : len(example.labels)] = torch.tensor(example.labels)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def lr_at(step: int, config: EmbeddedConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled tokens (the caller divides by the global count)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def _train_rank(model, tokenizer, encoded, config: EmbeddedConfig, rank: int, workers: int, results) -> None:
    """The training loop of one process. With workers > 1 every rank takes rows rank::workers of
    each global batch and gradients are summed over ranks, so the result is the single-process
    one (up to float summation order) whatever the number of workers."""
    torch.set_num_threads(1)
    rng = random.Random(config.seed)  # every rank draws the same batch order
    lengths = [len(e.input_ids) for e in encoded]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=0.1)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")
    model.train()
    step, tokens, block, losses = 0, 0, [], []
    started = time.monotonic()
    batches: list[list[int]] = []
    while step < config.max_steps:
        if not batches:
            batches = length_batches(lengths, config.batch_tokens, rng)
        rows = [encoded[i] for i in batches.pop()]
        count = sum(sum(1 for t in row.labels[1:] if t != IGNORE_INDEX) for row in rows)
        mine = rows[rank::workers]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        if mine:
            batch = collate(mine, tokenizer.pad_token_id)
            with autocast:
                loss = token_loss_sum(model, batch) / max(count, 1)
            loss.backward()
            tokens += int(batch["attention_mask"].sum())
        else:  # a batch of fewer rows than workers: this rank adds nothing, but joins the sum
            loss = torch.zeros(())
            for p in params:
                p.grad = torch.zeros_like(p)
        if workers > 1:
            flat = torch.cat([p.grad.flatten() for p in params])
            torch.distributed.all_reduce(flat)
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        block.append(loss.item())
        if step % 50 == 0 or step == config.max_steps:
            # [summed loss shares, 1 if out of time]: summed over ranks, so every rank stops at the same step
            status = torch.tensor([sum(block), float(time.monotonic() - started > config.time_budget_s)])
            if workers > 1:
                torch.distributed.all_reduce(status)
            losses.append(status[0].item() / len(block))
            block = []
            over = status[1]
            if rank == 0:
                elapsed = time.monotonic() - started
                log.info("bootstrap step %d/%d loss %.4f (%.0f tokens/s per worker)", step, config.max_steps, losses[-1], tokens / elapsed)
            if over.item() and step < config.max_steps:
                if rank == 0:
                    log.warning("bootstrap: time budget %.0fs spent after %d of %d steps", config.time_budget_s, step, config.max_steps)
                break
    model.eval()
    results.put((rank, step, tokens, time.monotonic() - started, losses))


def _worker(rank: int, workers: int, init_file: str, model, tokenizer, encoded, config: EmbeddedConfig, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=workers)
    try:
        _train_rank(model, tokenizer, encoded, config, rank, workers, results)
    finally:
        torch.distributed.destroy_process_group()


def pretraining_dtype(dtype: str) -> str:
    """EmbeddedConfig.dtype made concrete: auto is bfloat16 on a CPU with native bf16, else float32."""
    if dtype not in PRETRAINING_DTYPES:
        raise ValueError(f"embedded.dtype must be one of {', '.join(PRETRAINING_DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return dtype


def pretraining_attention(dtype: str) -> str:
    """The attention kernel pre-training runs fastest with at these shapes on a CPU, for a concrete
    pretraining_dtype: eager under bf16 autocast (~1.5x SDPA's speed), SDPA in float32 (~1.05x
    eager's on the corpus's batches: benchmarks/bench_pretraining.py). The saved config names
    neither: a loaded model gets transformers' default."""
    return "eager" if dtype == "bfloat16" else "sdpa"


def encode_documents(tokenizer, documents: Sequence[str], max_seq_len: int) -> list[EncodedExample]:
    """Seed-corpus documents as pre-training examples, with the same label mask as SFT: the loss
    is on the solution's steps, not the question or the output blocks."""
    return [sft_encode(tokenizer, *split_prompt(d), max_seq_len) for d in documents]


def pretrain(model, tokenizer, documents: Sequence[str], config: EmbeddedConfig) -> tuple[int, int, float, list[float]]:
    """Train `model` in place; returns (steps, real tokens over all workers, seconds, mean loss per 50 steps).

    With config.workers > 1 (and fork available), ranks 1.. are forked child processes, one
    thread each, and this process is rank 0: the model it holds ends up trained.
    """
    dtype = pretraining_dtype(config.dtype)
    log.info("bootstrap: pre-training in %s (embedded.dtype: %s)", dtype, config.dtype)
    config = replace(config, dtype=dtype)
    encoded = encode_documents(tokenizer, documents, config.max_seq_len)
    workers = config.workers if "fork" in mp.get_all_start_methods() else 1
    if workers == 1:
        results: queue.Queue = queue.Queue()
        _train_rank(model, tokenizer, encoded, config, 0, 1, results)
        _, steps, tokens, seconds, losses = results.get()
        return steps, tokens, seconds, losses
    context = mp.get_context("fork")  # children inherit the initialised model and the encoded corpus
    results = context.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = str(Path(tmp) / "rendezvous")
        children = [
            context.Process(target=_worker, args=(rank, workers, init_file, model, tokenizer, encoded, config, results))
            for rank in range(1, workers)
        ]
        for child in children:
            child.start()
        try:
            _worker(0, workers, init_file, model, tokenizer, encoded, config, results)
        finally:
            for child in children:
                child.join(timeout=60)
                if child.exitcode != 0:
                    child.kill()
        reports = sorted(results.get() for _ in range(workers))
    if any(child.exitcode != 0 for child in children):
        raise RuntimeError(f"bootstrap: a training worker failed (exit codes {[c.exitcode for c in children]})")
    _, steps, _, seconds, losses = reports[0]
    return steps, sum(r[2] for r in reports), seconds, losses


def seed_problems(config: EmbeddedConfig, *, exclude: Collection[str] = ()):
    """The corpus's problems (a PROBLEMS table): `corpus_per_module` per module, none with an id in `exclude`."""
    return generate_problems(
        config.modules, config.corpus_per_module, difficulty=config.corpus_difficulty, seed=config.corpus_seed, exclude=exclude,
        max_composed_modules=config.max_composed_modules,
    )


def check_reload(tokenizer, path: Path, documents: Sequence[str]) -> None:
    """AutoTokenizer must give the trained tokenizer's ids, or every later stage would see other tokens."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(path, local_files_only=True)
    for document in documents:
        if reloaded(document, add_special_tokens=False)["input_ids"] != tokenizer(document, add_special_tokens=False)["input_ids"]:
            raise RuntimeError(f"{path}: the saved tokenizer does not reproduce the trained one's ids")


def step_lengths(tokenizer, documents: Sequence[str]) -> list[list[int]]:
    """Per document, the tokens of each step the policy writes (code and answer steps, up to their
    stop strings; output blocks are the executor's): what one generation call must fit."""
    completions = [split_prompt(d)[1] for d in documents]
    steps = [[c[a:b].rstrip("\n") for a, b, trainable in trainable_spans(c) if trainable] for c in completions]
    flat = [step for doc in steps for step in doc]
    counts = iter([len(ids) for ids in tokenizer(flat, add_special_tokens=False)["input_ids"]] if flat else [])
    return [[next(counts) for _ in doc] for doc in steps]


def check_step_cap(lengths: Sequence[Sequence[int]], modules: Sequence[str], cap: int) -> None:
    """Warn where the corpus has steps longer than the search's per-step token cap: generation cuts
    them off, so the model could never finish such a step (nor solve those problems)."""
    over = Counter(m for doc, m in zip(lengths, modules) for n in doc if n > cap)
    if over:
        longest = max(n for doc in lengths for n in doc)
        total = sum(len(doc) for doc in lengths)
        log.warning("bootstrap: %d of %d seed-corpus steps are longer than search.max_step_tokens (%d; the longest "
                    "has %d tokens) and can never be finished in search or evaluation: %s",
                    sum(over.values()), total, cap, longest, dict(over))


def bootstrap(
    config: EmbeddedConfig,
    out_dir: str | Path,
    *,
    exclude: Collection[str] = (),
    executor=None,
    max_step_tokens: int | None = None,
) -> BootstrapResult:
    """Build the seed corpus, tokenizer and base model; save a Hugging Face checkpoint in `out_dir`.

    `exclude`: problem_ids that must not be in the corpus (the run's train and held-out problems).
    `executor`: runs the corpus code (default: in-process, our own trusted code).
    `max_step_tokens`: the search's per-step cap; corpus steps longer than it are warned about
    before training.
    """
    from transformers import Qwen2ForCausalLM

    from rstar_math.models.tokenizer import save_tokenizer, train_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    started = time.monotonic()
    problems = seed_problems(config, exclude=exclude)
    executor = executor or InProcessExecutor(config.workers)
    corpus = write_corpus(problems, misconception_rate=config.rates, seed=config.seed, executor=executor)
    corpus_seconds = time.monotonic() - started
    log.info("bootstrap: %d documents in %.1fs", len(corpus.documents), corpus_seconds)

    tokenizer = train_tokenizer(corpus.documents, vocab_size=config.vocab_size)
    lengths = step_lengths(tokenizer, corpus.documents)
    if max_step_tokens is not None:
        check_step_cap(lengths, corpus.modules, max_step_tokens)
    model = Qwen2ForCausalLM._from_config(model_config(config, tokenizer),
                                          attn_implementation=pretraining_attention(pretraining_dtype(config.dtype)))
    parameters = sum(p.numel() for p in model.parameters())
    log.info("bootstrap: %.2fM parameters, vocabulary %d", parameters / 1e6, len(tokenizer))
    steps, tokens, seconds, losses = pretrain(model, tokenizer, corpus.documents, config)

    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    check_reload(tokenizer, out, corpus.documents[:: max(1, len(corpus.documents) // 200)])
    (out / WORLD_FILE).write_text(json.dumps(asdict(config), indent=2))
    return BootstrapResult(
        path=str(out),
        documents=len(corpus.documents),
        skipped={m: dict(c) for m, c in corpus.skipped.items()},
        parameters=parameters,
        steps=steps,
        tokens=tokens,
        train_seconds=seconds,
        corpus_seconds=corpus_seconds,
        final_loss=losses[-1] if losses else float("nan"),
        losses=tuple(losses),
        longest_step_tokens=max((n for doc in lengths for n in doc), default=0),
        corpus=corpus,
    )
