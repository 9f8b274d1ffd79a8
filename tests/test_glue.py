"""What every component does first: parse its config and set torch's thread count for its role."""

from __future__ import annotations

import pytest
import torch

from rstar_math.config import load_config
from rstar_math.orchestration.glue import THREADS_ENV, TRAIN_THREADS_ENV, setup


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_tasks_that_run_alone_take_their_own_thread_count(monkeypatch, restore_threads):
    config_yaml = load_config("smoke").to_yaml()
    monkeypatch.setenv(THREADS_ENV, "1")
    monkeypatch.setenv(TRAIN_THREADS_ENV, "2")
    config, _ = setup(config_yaml)
    assert config.name == "smoke" and torch.get_num_threads() == 1  # generation beside the sandbox
    setup(config_yaml, alone=True)
    assert torch.get_num_threads() == 2  # a training task, say
    monkeypatch.delenv(TRAIN_THREADS_ENV)
    setup(config_yaml, alone=True)
    assert torch.get_num_threads() == 2  # unset: torch's own choice is left alone
