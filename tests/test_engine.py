"""The transformers engine on tiny models made in the test: stops, padding, cache, sampling."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from rstar_math.models import kv_cache
from rstar_math.models.engine import SamplingParams, truncate_at_stop
from rstar_math.models.hf_engine import TransformersEngine
from rstar_math.steps import STOP_STRINGS, render_prompt
from rstar_math.store import join, store_for

from conftest import SAMPLE_SOLUTIONS

PROMPT = render_prompt("What is 2 + 3?")


@pytest.fixture(scope="module")
def memorized(memorized_model_dir):
    torch.set_num_threads(1)
    return TransformersEngine.from_pretrained(str(memorized_model_dir))


@pytest.fixture(scope="module")
def random_engine(tiny_model_dir):
    return TransformersEngine.from_pretrained(str(tiny_model_dir))


def test_greedy_step_ends_exactly_at_the_stop_marker(memorized):
    [[completion]] = memorized.generate([PROMPT], SamplingParams(temperature=0, max_new_tokens=64, stop=STOP_STRINGS))
    assert completion.text == "<code>\n# Step 1: add the numbers\nx = 2 + 3\nprint(x)\n<end_of_step>"
    assert completion.finish_reason == "stop"
    assert completion.token_count == len(memorized.tokenizer(completion.text, add_special_tokens=False)["input_ids"])


def test_without_stop_strings_generation_runs_to_the_limit_or_eos(memorized):
    [[completion]] = memorized.generate([PROMPT], SamplingParams(temperature=0, max_new_tokens=12))
    assert completion.finish_reason == "length" and completion.token_count == 12
    assert completion.text.startswith("<code>\n# Step 1")


def test_left_padding_does_not_change_greedy_output(memorized):
    """A short prompt batched with a long one must decode exactly as it does alone."""
    params = SamplingParams(temperature=0, max_new_tokens=40, stop=STOP_STRINGS)
    continued = SAMPLE_SOLUTIONS[1].split("<output>")[0].rsplit("<code>", 1)[0]
    alone = memorized.generate([PROMPT], params)[0][0].text
    batched = memorized.generate([continued, PROMPT], params)
    assert batched[1][0].text == alone


def test_rows_finishing_at_different_steps_decode_as_they_do_alone(memorized):
    """Finished rows leave the batch in bulk (hf_engine.COMPACT_SHARE); until then they ride
    along. Neither may change what the other rows generate."""
    # Room for both memorized steps to reach their stop (42 and about 50 tokens) before the
    # other rows run to the limit.
    params = SamplingParams(temperature=0, max_new_tokens=64, stop=STOP_STRINGS)
    prompts = [PROMPT] + [s.split("<output>")[0].rsplit("<code>", 1)[0] for s in SAMPLE_SOLUTIONS]
    prompts += [render_prompt(q) for q in ("What is 7 + 1?", "Solve 2*x = 8 for x.", "hello")]
    alone = [memorized.generate([p], params)[0][0] for p in prompts]
    assert len({c.token_count for c in alone}) >= 3  # the rows really do finish at different steps
    assert sum(c.finish_reason == "stop" for c in alone) >= 2
    batched = memorized.generate(prompts, params)
    assert [g[0] for g in batched] == alone


def test_cached_decoding_matches_full_recomputation(random_engine, monkeypatch):
    """Greedy tokens from the KV-cached loop equal argmax over a full forward at each step,
    across the cache's growth (a small starting capacity makes it grow twice here)."""
    monkeypatch.setattr(kv_cache, "MIN_CAPACITY", 8)
    model, tokenizer = random_engine.model, random_engine.tokenizer
    [[completion]] = random_engine.generate([PROMPT], SamplingParams(temperature=0, max_new_tokens=40))
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    expected = []
    with torch.no_grad():
        for _ in range(40):
            logits = model(input_ids=torch.tensor([ids + expected])).logits[0, -1]
            expected.append(int(logits.argmax()))
    eos = tokenizer.eos_token_id
    if eos in expected:
        expected = expected[: expected.index(eos)]
    assert completion.text == tokenizer.decode(expected)


def test_decoding_passes_the_cache_under_the_installed_transformers_name(random_engine):
    """transformers 5 renamed past_key_values to cache and warns on the old name (gone in 5.40)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        [[completion]] = random_engine.generate([PROMPT], SamplingParams(temperature=0, max_new_tokens=6))
    assert completion.token_count > 0


def test_n_samples_per_prompt_and_seeded_reproducibility(random_engine):
    params = SamplingParams(n=5, temperature=1.0, max_new_tokens=8, seed=7)
    first = random_engine.generate([PROMPT, "<question>\nhi\n<end_of_question>\n"], params)
    assert [len(group) for group in first] == [5, 5]
    assert len({c.text for c in first[0]}) > 1  # samples differ from each other
    engine_again = TransformersEngine(random_engine.model, random_engine.tokenizer)
    again = engine_again.generate([PROMPT, "<question>\nhi\n<end_of_question>\n"], params)
    assert [[c.text for c in g] for g in again] == [[c.text for c in g] for g in first]


def test_small_batch_budget_gives_the_same_greedy_results(random_engine):
    params = SamplingParams(temperature=0, max_new_tokens=6)
    prompts = [PROMPT, render_prompt("Solve 4*x = 12 for x."), render_prompt("x")]
    wide = random_engine.generate(prompts, params)
    narrow = TransformersEngine(random_engine.model, random_engine.tokenizer, max_batch_tokens=1).generate(prompts, params)
    assert [[c.text for c in g] for g in narrow] == [[c.text for c in g] for g in wide]


def test_prompt_longer_than_the_context_yields_an_empty_length_completion(random_engine):
    engine = TransformersEngine(random_engine.model, random_engine.tokenizer, max_seq_len=16)
    [[completion]] = engine.generate([PROMPT * 4], SamplingParams(max_new_tokens=8))
    assert (completion.text, completion.finish_reason) == ("", "length")


def test_top_p_near_zero_is_greedy(random_engine):
    greedy = random_engine.generate([PROMPT], SamplingParams(temperature=0, max_new_tokens=8))[0][0].text
    nucleus = random_engine.generate([PROMPT], SamplingParams(n=3, temperature=1.0, top_p=1e-6, max_new_tokens=8))[0]
    assert all(c.text == greedy for c in nucleus)


def test_checkpoint_loads_from_s3(tiny_model_dir, s3_root):
    store = store_for(s3_root)
    uri = join(s3_root, "models", "tiny")
    store.upload_dir(tiny_model_dir, uri)
    engine = TransformersEngine.from_pretrained(uri)
    assert engine.model.config.hidden_size == json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]


def test_sampling_params_reject_nonsense():
    with pytest.raises(ValueError, match="greedy"):
        SamplingParams(n=2, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_truncate_at_stop_keeps_the_earliest_marker():
    assert truncate_at_stop("a<end_of_step>b<end_of_answer>", STOP_STRINGS) == ("a<end_of_step>", True)
    assert truncate_at_stop("abc", STOP_STRINGS) == ("abc", False)


def _vllm_engine(path):
    pytest.importorskip("vllm", reason="vLLM is only installed in the GPU rollout image (extra 'gpu')")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA device")
    from rstar_math.models.vllm_engine import VLLMEngine

    return VLLMEngine(str(path), max_model_len=512, gpu_memory_utilization=0.3)


@pytest.mark.gpu
def test_vllm_engine_honours_the_protocol(memorized_model_dir):
    """The same contract as the transformers engine: stop marker kept, n completions, token counts."""
    engine = _vllm_engine(memorized_model_dir)
    [[greedy]] = engine.generate([PROMPT], SamplingParams(temperature=0, max_new_tokens=64, stop=STOP_STRINGS))
    assert greedy.text == "<code>\n# Step 1: add the numbers\nx = 2 + 3\nprint(x)\n<end_of_step>"
    assert greedy.finish_reason == "stop"
    sampled = engine.generate([PROMPT, PROMPT], SamplingParams(n=3, temperature=1.0, max_new_tokens=5))
    assert [len(g) for g in sampled] == [3, 3]
    assert all(c.finish_reason == "length" and c.token_count == 5 for g in sampled for c in g)
