"""The process preference model: loss, value head, scorer, and its one-directory checkpoint format."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from rstar_math.models.ppm import (
    PPM_CONFIG_FILE,
    VALUE_HEAD_FILE,
    PPMCheckpointError,
    PPMScorer,
    ProcessPreferenceModel,
    encode_texts,
    last_token_index,
    pack_shared_prefixes,
    pad_batch,
    shared_prefix_length,
)
from rstar_math.steps import render_prompt, render_step
from rstar_math.training.tasks import pairwise_ranking_loss

PROMPT = render_prompt("What is 2 + 3?")
GOOD = render_step("<code>\n# Step 1: add the numbers\nx = 2 + 3\nprint(x)\n<end_of_step>", "5")
BAD = render_step("<code>\n# Step 1: add the numbers\nprint(y)\n<end_of_step>", "NameError: name 'y' is not defined")
TEXTS = [PROMPT + GOOD, PROMPT + BAD, PROMPT, PROMPT + GOOD + "<answer>The answer is \\boxed{5}<end_of_answer>\n"]


@pytest.fixture(scope="module")
def ppm(tiny_model_dir) -> ProcessPreferenceModel:
    torch.manual_seed(0)
    model = ProcessPreferenceModel.from_policy(tiny_model_dir, device="cpu", dtype="float32")
    with torch.no_grad():  # a larger head, so scores spread beyond tanh's linear range
        model.value_head.weight.mul_(200)
    return model.eval()


def _hand_loss(margin: float) -> float:
    return -math.log(1 / (1 + math.exp(-margin)))


def test_pairwise_loss_is_minus_log_sigmoid_of_the_margin():
    chosen = torch.tensor([1.0, 0.5, -0.2, 3.0])
    rejected = torch.tensor([0.0, 1.5, -0.2, -1.0])
    margins = [1.0, -1.0, 0.0, 4.0]
    expected = [_hand_loss(m) for m in margins]
    assert pairwise_ranking_loss(chosen, rejected).item() == pytest.approx(sum(expected) / 4, rel=1e-6)
    assert pairwise_ranking_loss(chosen, rejected, reduction="sum").item() == pytest.approx(sum(expected), rel=1e-6)
    # Grouped: the mean within each group, then over groups (3 pairs in group 0, 1 in group 1).
    group = torch.tensor([0, 0, 0, 1])
    by_group = (sum(expected[:3]) / 3 + expected[3]) / 2
    assert pairwise_ranking_loss(chosen, rejected, group).item() == pytest.approx(by_group, rel=1e-6)


def test_pairwise_loss_gradient_on_the_value_head_pushes_chosen_up(tiny_model_dir):
    torch.manual_seed(0)
    model = ProcessPreferenceModel.from_policy(tiny_model_dir, device="cpu", dtype="float32")
    ids = encode_texts(model.tokenizer, [PROMPT + GOOD, PROMPT + BAD], None)
    input_ids, mask = pad_batch(ids, model.tokenizer.pad_token_id)
    with torch.no_grad():
        hidden = model.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
        h = hidden[torch.arange(2), last_token_index(mask)]
    scores = model(input_ids, mask)
    loss = pairwise_ranking_loss(scores[:1], scores[1:])
    loss.backward()
    grad = model.value_head.weight.grad[0]
    margin = (scores[0] - scores[1]).item()
    # d/dw -log sigmoid(w.h+ - w.h-) = -(1 - sigmoid(margin)) (h+ - h-)
    expected = -(1 - torch.sigmoid(torch.tensor(margin))) * (h[0] - h[1])
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    assert torch.dot(grad, h[0] - h[1]) < 0  # descending the gradient widens the margin
    with torch.no_grad():
        model.value_head.weight -= 0.1 * model.value_head.weight.grad
        assert (model(input_ids, mask)[0] - model(input_ids, mask)[1]).item() > margin


def test_score_is_read_at_the_last_real_token_with_either_padding(ppm):
    ids = encode_texts(ppm.tokenizer, TEXTS, None)
    pad = ppm.tokenizer.pad_token_id
    with torch.no_grad():
        alone = torch.cat([ppm(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long)) for row in ids])
        right_ids, right_mask = pad_batch(ids, pad)
        width = right_ids.shape[1]
        left_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
        left_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
        torch.testing.assert_close(ppm(right_ids, right_mask), alone, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ppm(left_ids, left_mask), alone, rtol=1e-4, atol=1e-4)


def test_shared_prefix_leaves_every_sequence_a_token_of_its_own():
    assert shared_prefix_length([(1, 2, 3, 4), (1, 2, 5)]) == 2
    assert shared_prefix_length([(1, 2), (1, 2, 3)]) == 1  # (1, 2) is read at its own last token
    assert shared_prefix_length([(1, 2, 3)]) == 2
    assert shared_prefix_length([(1, 2), (3, 4)]) == 0


@contextlib.contextmanager
def _attention(model: ProcessPreferenceModel, implementation: str):
    """The shared module-scoped PPM under another attention implementation, for one block."""
    saved = model.config._attn_implementation
    model.config._attn_implementation = implementation
    try:
        yield
    finally:
        model.config._attn_implementation = saved


@pytest.fixture(params=["sdpa", "eager"])
def attention(request, ppm):
    with _attention(ppm, request.param):
        yield request.param


def test_packed_groups_score_as_each_sequence_scored_alone(ppm, attention):
    ids = encode_texts(ppm.tokenizer, TEXTS, None)
    prompt, good, bad, answer = ids[2], ids[0], ids[1], ids[3]
    groups = [
        [answer],  # the widest row: the two short groups below share the next one
        [good, bad, answer],  # one prompt, three continuations
        [prompt, good],  # `prompt` is all prefix of `good`: it keeps its last token as its own
        [prompt[:5]],
    ]
    assert len(prompt) + 5 <= len(answer) and len(good) + len(bad) + len(answer) - 2 * len(prompt) > len(answer)
    batch = pack_shared_prefixes(groups, ppm.tokenizer.pad_token_id)
    sequences = [s for g in groups for s in g]
    assert batch["score_at"].shape == (len(sequences),)
    assert batch["input_ids"].shape[0] == 3, "the prefix-only groups share a row"
    flat = batch["input_ids"].reshape(-1)
    assert [flat[i].item() for i in batch["score_at"]] == [s[-1] for s in sequences]
    with torch.no_grad():
        packed = ppm(**batch)
        alone = torch.cat([ppm(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in sequences])
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)


def test_packed_batch_needs_its_score_positions_and_a_masking_attention(ppm):
    ids = encode_texts(ppm.tokenizer, TEXTS[:2], None)
    batch = pack_shared_prefixes([ids], ppm.tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="score_at"):
        ppm(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    with _attention(ppm, "flash_attention_2"), pytest.raises(ValueError, match="flash_attention_2"):
        ppm(**batch)


def test_scorer_gives_tanh_of_raw_over_five_in_input_order(ppm):
    scorer = PPMScorer(ppm, max_batch_tokens=64)  # forces several micro-batches
    raw = scorer.raw_scores(TEXTS)
    scores = scorer.score(TEXTS)
    assert len(scores) == len(TEXTS)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert scores == pytest.approx([math.tanh(r / 5) for r in raw], abs=1e-9)
    assert max(abs(r) for r in raw) > 1.0, "head scaled up: scores should leave tanh's flat middle"
    one_by_one = [scorer.raw_scores([t])[0] for t in TEXTS]
    assert raw == pytest.approx(one_by_one, abs=1e-4)
    assert scorer.score([]) == []


def test_scorer_packs_siblings_behind_their_shared_trajectory(ppm):
    parent = PROMPT + GOOD + GOOD
    texts = [parent + BAD, TEXTS[3], parent + GOOD, parent]  # two children and their parent, one cousin
    scorer = PPMScorer(ppm)
    ids = encode_texts(ppm.tokenizer, texts, None)
    groups = {tuple(sorted(members)) for members, _ in scorer._prefix_groups(ids)}
    assert groups == {(0, 2, 3), (1,)}, "the cousin shares the prompt and one step: under half of a child"
    packed_tokens = sum(tokens for _, tokens in scorer._prefix_groups(ids))
    assert packed_tokens < sum(map(len, ids)) - len(ids[3])
    one_by_one = [scorer.raw_scores([t])[0] for t in texts]
    assert scorer.raw_scores(texts) == pytest.approx(one_by_one, abs=1e-4)
    cramped = PPMScorer(ppm, max_length=len(ids[0]) + 3)  # no room for a second sibling in a row
    assert all(len(members) == 1 or 3 in members for members, _ in cramped._prefix_groups(ids))
    assert cramped.raw_scores(texts) == pytest.approx([cramped.raw_scores([t])[0] for t in texts], abs=1e-4)


def test_scorer_truncates_from_the_left(ppm):
    scorer = PPMScorer(ppm, max_length=12)
    text = TEXTS[3]
    ids = encode_texts(ppm.tokenizer, [text], None)[0]
    assert len(ids) > 12
    with torch.no_grad():
        expected = ppm(torch.tensor([ids[-12:]]), torch.ones(1, 12, dtype=torch.long)).item()
    assert scorer.raw_scores([text])[0] == pytest.approx(expected, abs=1e-5)


def test_save_and_load_round_trip_gives_identical_scores(ppm, root_uri):
    uri = f"{root_uri}/ppm"
    ppm.save_pretrained(uri)
    loaded = PPMScorer.from_pretrained(uri, device="cpu")
    assert loaded.raw_scores(TEXTS) == PPMScorer(ppm).raw_scores(TEXTS)


def test_saved_directory_describes_itself(ppm, tmp_path):
    ppm.save_pretrained(tmp_path / "ppm")
    spec = json.loads((tmp_path / "ppm" / PPM_CONFIG_FILE).read_text())
    assert spec == {
        "format": 1,
        "kind": "process_preference_model",
        "head_file": VALUE_HEAD_FILE,
        "head": {"type": "linear", "hidden_size": 64, "bias": False},
        "pooling": "last_token",
        "squash": "tanh(score / 5)",
    }
    names = {p.name for p in (tmp_path / "ppm").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", VALUE_HEAD_FILE, PPM_CONFIG_FILE} <= names
    assert json.loads((tmp_path / "ppm" / "config.json").read_text())["architectures"] == ["Qwen2Model"]


def test_loading_a_policy_directory_names_the_missing_ppm_config(tiny_model_dir):
    with pytest.raises(PPMCheckpointError) as info:
        ProcessPreferenceModel.from_pretrained(tiny_model_dir)
    assert PPM_CONFIG_FILE in str(info.value) and str(tiny_model_dir) in str(info.value)


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: (d / VALUE_HEAD_FILE).unlink(), VALUE_HEAD_FILE),
        (lambda d: _edit_spec(d, lambda s: s.pop("head")), "'head'"),
        (lambda d: _edit_spec(d, lambda s: s.update(kind="reward_model")), "kind"),
        (lambda d: _edit_spec(d, lambda s: s["head"].update(hidden_size=65)), "hidden_size"),
    ],
)
def test_a_damaged_ppm_directory_fails_naming_what_is_wrong(ppm, tmp_path, damage, named):
    directory = tmp_path / "ppm"
    ppm.save_pretrained(directory)
    damage(directory)
    with pytest.raises(PPMCheckpointError, match=named) as info:
        ProcessPreferenceModel.from_pretrained(directory)
    assert str(directory) in str(info.value)


def _edit_spec(directory, change) -> None:
    spec = json.loads((directory / PPM_CONFIG_FILE).read_text())
    change(spec)
    (directory / PPM_CONFIG_FILE).write_text(json.dumps(spec))


def test_pairwise_loss_equals_functional_form_on_random_scores():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(32), torch.randn(32)
    torch.testing.assert_close(pairwise_ranking_loss(chosen, rejected), -F.logsigmoid(chosen - rejected).mean())
