"""The embedded world: parsers, solution writers, the seed corpus and a minuscule bootstrap.

    pytest tests/test_embedded.py
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from rstar_math.data.generate import generate_problems
from rstar_math.config import ConfigError, EmbeddedConfig, load_config
from rstar_math.embedded.bootstrap import (
    bootstrap,
    check_step_cap,
    model_config,
    pretrain,
    pretraining_attention,
    pretraining_dtype,
    seed_problems,
    step_lengths,
)
from rstar_math.embedded.corpus import (
    MODULES,
    InProcessExecutor,
    execute_plan,
    module_of,
    problem_rng,
    write_corpus,
)
from rstar_math.grading import answers_match, extract_boxed
from rstar_math.models.tokenizer import train_tokenizer
from rstar_math.steps import STOP_STRINGS, StepKind, parse_step
from rstar_math.training.loop import cpu_has_native_bf16

SAMPLE = 120  # questions per module
DIFFICULTY = 0.2  # the default preset's


@pytest.fixture(scope="module")
def problems() -> dict[str, list[dict]]:
    table = generate_problems(list(MODULES), SAMPLE, difficulty=DIFFICULTY, seed=99)
    by_module: dict[str, list[dict]] = {m: [] for m in MODULES}
    for row in table.to_pylist():
        by_module[module_of(row["source"])].append(row)
    return by_module


# Upper bounds on how often a misconceived solution is right by coincidence (measured at
# difficulty 0.2: gcd 8%, remainder 1%, is_factor 50% by design, mixed 20%, linear 31%, composed 31%,
# is_factor_composed 49%: its final check is a coin flip; evaluate 69%: a pasted argument only
# goes wrong when it is negative under an even power).
COINCIDENCE_BOUND = {
    "numbers__gcd": 0.2,
    "numbers__div_remainder": 0.08,
    "numbers__is_factor": 0.7,
    "arithmetic__mixed": 0.35,
    "algebra__linear_1d": 0.45,
    "algebra__linear_1d_composed": 0.5,
    "numbers__is_factor_composed": 0.7,
    "polynomials__evaluate": 0.8,
}


def test_every_module_has_a_bound():
    assert set(COINCIDENCE_BOUND) == set(MODULES)


@pytest.mark.parametrize("module", list(MODULES))
def test_parser_handles_generated_questions(module, problems):
    rows = problems[module]
    parsed = [MODULES[module].parse(r["question"]) for r in rows]
    assert sum(p is not None for p in parsed) >= 0.95 * len(rows)


@pytest.mark.parametrize("module", list(MODULES))
def test_correct_solutions_reproduce_the_answer_and_misconceptions_are_wrong(module, problems):
    spec, executor = MODULES[module], InProcessExecutor()
    correct = wrong = misconceived = 0
    for row in problems[module]:
        parsed = spec.parse(row["question"])
        if parsed is None:
            continue
        plan = spec.write(parsed, problem_rng(0, row["problem_id"]), 0.0)
        assert plan.correct and plan.boxed is None
        outputs = execute_plan(plan, executor)
        assert outputs is not None, row["question"]
        correct += answers_match(outputs[-1], row["answer"])
        bad = spec.write(parsed, problem_rng(0, row["problem_id"]), 1.0)
        if bad.correct:  # nothing to get wrong (e.g. a sum with no division)
            continue
        bad_outputs = execute_plan(bad, executor)
        if bad_outputs is None:
            continue
        misconceived += 1
        wrong += not answers_match(bad.boxed if bad.boxed is not None else bad_outputs[-1], row["answer"])
    parsed_count = sum(spec.parse(r["question"]) is not None for r in problems[module])
    assert correct == parsed_count  # every correct solution reproduces the generator's answer
    assert misconceived >= 0.8 * parsed_count
    assert 1 - wrong / misconceived <= COINCIDENCE_BOUND[module]


def test_pasted_argument_loses_its_sign_under_an_even_power():
    spec = MODULES["polynomials__evaluate"]
    parsed = spec.parse("Let f(k) = -6*k**2 - 23*k - 1. Determine f(-5).")
    right, pasted = (spec.write(parsed, random.Random(0), rate) for rate in (0.0, 1.0))
    assert right.steps[0].code == "def f(k):\n    return -6*k**2 - 23*k - 1\nprint(f(-5))"
    assert pasted.steps[0].code == "print(-6*-5**2 - 23*-5 - 1)" and pasted.writer == "substitution x1"
    executor = InProcessExecutor()
    assert (execute_plan(right, executor), execute_plan(pasted, executor)) == (["-36"], ["264"])
    by_name = spec.parse("Let c = 3 - 5. Let f(k) = k**2. What is f(c)?")
    assert spec.write(by_name, random.Random(0), 1.0).correct  # a name pastes without harm: nothing to get wrong


def test_steps_are_in_the_step_format(problems):
    result = write_corpus(
        [r for rows in problems.values() for r in rows[:10]],
        misconception_rate={m: 0.5 for m in MODULES},
        seed=3,
        executor=InProcessExecutor(),
    )
    for document in result.documents:
        body = document.split("<end_of_question>\n", 1)[1]
        texts = [part + "<end_of_step>" for part in body.split("<end_of_step>")[:-1]]
        for text in texts:
            text = text.split("<end_of_output>\n")[-1]
            assert parse_step(text).kind is StepKind.CODE
        answer = body.rsplit("<end_of_output>\n", 1)[-1].strip("\n")
        assert parse_step(answer).kind is StepKind.ANSWER and answer.endswith(STOP_STRINGS[1])
        assert extract_boxed(answer) is not None


def test_corpus_is_reproducible_and_rates_are_respected(problems):
    rows = [r for rows in problems.values() for r in rows[:40]]
    rates = {m: 0.7 for m in MODULES}
    first = write_corpus(rows, misconception_rate=rates, seed=5, executor=InProcessExecutor())
    again = write_corpus(list(reversed(rows)), misconception_rate=rates, seed=5, executor=InProcessExecutor())
    assert sorted(first.documents) == sorted(again.documents)
    other = write_corpus(rows, misconception_rate=rates, seed=6, executor=InProcessExecutor())
    assert sorted(first.documents) != sorted(other.documents)
    single = [w for w, m in zip(first.writers, first.modules) if m in ("numbers__gcd", "numbers__div_remainder")]
    share = sum(w != "correct" for w in single) / len(single)
    assert 0.5 < share < 0.9
    clean = write_corpus(rows, misconception_rate={}, seed=5, executor=InProcessExecutor())
    assert set(clean.writers) == {"correct"}
    # Cut into slices run by forked processes (320 problems: over 600 programs), the same corpus.
    forked = write_corpus(rows, misconception_rate=rates, seed=5, executor=InProcessExecutor(workers=2))
    assert forked == first


def test_in_process_executor_prints_what_the_sandbox_prints(problems):
    from rstar_math.sandbox import ExecutorPool, SandboxLimits

    rng = random.Random(0)
    rows = [r for rows in problems.values() for r in rng.sample(rows, 4)]
    rates = {m: 0.5 for m in MODULES}
    with ExecutorPool(SandboxLimits(timeout_s=10), workers=2) as pool:
        sandboxed = write_corpus(rows, misconception_rate=rates, seed=1, executor=pool)
    in_process = write_corpus(rows, misconception_rate=rates, seed=1, executor=InProcessExecutor())
    assert sandboxed.documents == in_process.documents


def test_held_out_questions_never_reach_the_corpus():
    config = dataclasses.replace(EmbeddedConfig(), corpus_per_module=30)
    # The corpus's own first draws, as if a held-out set had been drawn from the same stream.
    held_out = generate_problems(config.modules, 10, difficulty=config.corpus_difficulty, seed=config.corpus_seed)
    ids = set(held_out.column("problem_id").to_pylist())
    corpus = seed_problems(config, exclude=ids)
    assert not ids & set(corpus.column("problem_id").to_pylist())
    assert not set(held_out.column("question").to_pylist()) & set(corpus.column("question").to_pylist())
    assert len(corpus) == 30 * len(config.modules)


MINUSCULE = dataclasses.replace(
    EmbeddedConfig(),
    corpus_per_module=8,
    vocab_size=300,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    batch_tokens=1024,
    warmup_steps=1,
    max_steps=3,
)


def test_step_lengths_count_each_step_the_policy_writes(problems):
    rows = [problems["algebra__linear_1d_composed"][0], problems["numbers__gcd"][0]]
    corpus = write_corpus(rows, misconception_rate={}, seed=0, executor=InProcessExecutor())
    tokenizer = train_tokenizer(corpus.documents, vocab_size=300)
    lengths = step_lengths(tokenizer, corpus.documents)
    for document, counts in zip(corpus.documents, lengths):
        body = document.split("<end_of_question>\n", 1)[1]
        # every code step, then the answer: the pieces between output blocks
        pieces = [p.split("<end_of_output>\n")[-1] for p in body.split("<output>")]
        assert len(counts) == document.count("<end_of_step>") + 1 == len(pieces)
        assert counts == [len(tokenizer(p.rstrip("\n"), add_special_tokens=False)["input_ids"]) for p in pieces]


def test_steps_over_the_search_cap_are_warned_about(caplog):
    lengths, modules = [[40, 130], [20, 12]], ["algebra__linear_1d_composed", "numbers__gcd"]
    check_step_cap(lengths, modules, 144)
    assert not caplog.records
    check_step_cap(lengths, modules, 96)
    (record,) = caplog.records
    assert "search.max_step_tokens (96" in record.message and "'algebra__linear_1d_composed': 1" in record.message
    assert "gcd" not in record.message


def test_default_step_cap_fits_the_default_worlds_steps():
    """A step the cap cuts off can never be finished: composed systems of two equations run to
    about 130 tokens, so a cap of 96 had made a fifth of that module unsolvable."""
    config = load_config("default")
    world = dataclasses.replace(config.embedded, corpus_per_module=100)
    corpus = write_corpus(seed_problems(world), misconception_rate=world.rates, seed=world.seed, executor=InProcessExecutor())
    lengths = step_lengths(train_tokenizer(corpus.documents, vocab_size=world.vocab_size), corpus.documents)
    longest = max(n for doc in lengths for n in doc)
    assert 96 < longest <= config.search.max_step_tokens


def test_default_world_searches_the_modules_its_corpus_teaches():
    """Each searched and held-out module has its misconception in the seed corpus, and back."""
    config = load_config("default")
    assert set(config.data.generator.modules) == set(config.embedded.modules)
    # its guessed final check, which Q sees and the outcome misses half the time, outlasts the plain one
    assert "numbers__is_factor_composed" in config.embedded.modules


def test_pretraining_dtype_is_bf16_only_where_the_cpu_has_it():
    assert pretraining_dtype("auto") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert pretraining_dtype("float32") == "float32" and pretraining_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="embedded.dtype"):
        pretraining_dtype("bf16")


def test_pretraining_attention_is_a_speed_choice_only():
    """Pre-training picks eager attention under bf16 and SDPA in float32 (each the faster there);
    on the same batches, padded rows included, both train the same model."""
    from transformers import Qwen2ForCausalLM

    assert (pretraining_attention("bfloat16"), pretraining_attention("float32")) == ("eager", "sdpa")
    world = dataclasses.replace(MINUSCULE, workers=1, max_steps=6, dtype="float32")
    documents = write_corpus(seed_problems(world), misconception_rate=world.rates, seed=world.seed,
                             executor=InProcessExecutor()).documents
    tokenizer = train_tokenizer(documents, vocab_size=world.vocab_size)
    losses = {}
    for attention in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM._from_config(model_config(world, tokenizer), attn_implementation=attention)
        losses[attention] = pretrain(model, tokenizer, documents, world)[3]
    assert losses["sdpa"] == pytest.approx(losses["eager"], rel=1e-4)


def test_misconception_rates_must_match_the_modules():
    section = EmbeddedConfig()
    assert section.rates == dict(zip(section.modules, section.misconception_rates))
    with pytest.raises(ConfigError, match="misconception_rates"):
        _ = dataclasses.replace(section, misconception_rates=(0.5,)).rates


def test_training_workers_do_not_change_the_result(tmp_path):
    """Two processes sum their gradients over one global batch: the same training as one process."""
    one = bootstrap(dataclasses.replace(MINUSCULE, workers=1, max_steps=50), tmp_path / "one")
    two = bootstrap(dataclasses.replace(MINUSCULE, workers=2, max_steps=50), tmp_path / "two")
    assert one.steps == two.steps == 50 and one.tokens == two.tokens
    assert one.losses == pytest.approx(two.losses, rel=1e-3)


def test_time_budget_stops_every_worker_at_the_same_step(tmp_path, caplog):
    """An exhausted budget ends pre-training at the next shared check (every 50 steps), with a
    warning, and both workers stop there: neither waits forever in the other's all-reduce."""
    config = dataclasses.replace(MINUSCULE, workers=2, max_steps=120, time_budget_s=0.0)
    with caplog.at_level("WARNING", logger="rstar_math.embedded.bootstrap"):
        result = bootstrap(config, tmp_path / "base")
    assert result.steps == 50 and len(result.losses) == 1
    assert "time budget 0s spent after 50 of 120 steps" in caplog.text


def test_minuscule_bootstrap_saves_a_loadable_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = bootstrap(MINUSCULE, tmp_path / "base")
    assert result.steps == 3 and result.documents > 0 and result.tokens > 0 and result.longest_step_tokens > 10
    assert (tmp_path / "base" / "world_config.json").exists()
    # bootstrap() itself checks that the reloaded tokenizer gives the trained one's ids.
    model = AutoModelForCausalLM.from_pretrained(result.path)
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    text = "<question>\nWhat is 12 + 7?\n<end_of_question>\n<code>\nprint(12 + 7)\n<end_of_step>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids("<code>") in ids
    assert model(input_ids=torch.tensor([ids])).logits.shape == (1, len(ids), len(tokenizer))
