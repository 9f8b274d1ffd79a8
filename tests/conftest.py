"""Shared fixtures: a real S3 server (rclone serve s3) for the whole session, and store roots."""

from __future__ import annotations

import uuid

import pytest
import torch

# Tiny models run fastest on one thread, and the sandbox's workers need the other core.
torch.set_num_threads(1)

from rstar_math.store import reset_clients
from rstar_math.store.s3server import S3Server

BUCKET = "test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    with S3Server.start(tmp_path_factory.mktemp("s3"), buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 at the test server for one test."""
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    reset_clients()
    yield s3_server
    reset_clients()


@pytest.fixture
def s3_root(s3_env) -> str:
    """A fresh s3:// prefix for one test."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["local", "s3"])
def root_uri(request, tmp_path) -> str:
    """Run a test once against a local directory and once against the S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_root")


# -- tiny models made in the test session (no weights are ever downloaded) ----------------------

SAMPLE_SOLUTIONS = [
    "<question>\nWhat is 2 + 3?\n<end_of_question>\n<code>\n# Step 1: add the numbers\nx = 2 + 3\nprint(x)\n"
    "<end_of_step>\n<output>5<end_of_output>\n<answer>The answer is \\boxed{5}<end_of_answer>\n",
    "<question>\nSolve 4*x = 12 for x.\n<end_of_question>\n<code>\n# Step 1: divide both sides by 4\nx = 12 / 4\n"
    "print(x)\n<end_of_step>\n<output>3.0<end_of_output>\n<answer>The answer is \\boxed{3}<end_of_answer>\n",
]


def make_tiny_model(path, *, hidden: int = 64, layers: int = 2, seed: int = 0, texts=SAMPLE_SOLUTIONS):
    """A randomly initialised Qwen2 causal LM and a tokenizer trained on `texts`, saved at `path`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rstar_math.models.tokenizer import save_tokenizer, train_tokenizer

    tokenizer = train_tokenizer(texts * 20, vocab_size=300)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(path)
    save_tokenizer(tokenizer, path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def memorized_model_dir(tmp_path_factory):
    """A tiny model trained until greedy decoding reproduces SAMPLE_SOLUTIONS (a few seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model(tmp_path_factory.mktemp("memorized"), hidden=96)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    batch = tokenizer(SAMPLE_SOLUTIONS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(300):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.01:
            break
    model.save_pretrained(path)
    return path
