"""The in-place growing KV cache holds exactly what transformers' DynamicCache holds."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from rstar_math.models import kv_cache
from rstar_math.models.kv_cache import GrowingLayer, growing_cache


def _kv(batch: int, tokens: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (batch, 2, tokens, 8)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def _same(ours: GrowingLayer, reference: DynamicLayer) -> bool:
    return (ours.get_seq_length() == reference.get_seq_length() and torch.equal(ours.keys, reference.keys)
            and torch.equal(ours.values, reference.values))


def test_growing_layer_tracks_the_dynamic_layer_through_growth_and_batch_edits(monkeypatch):
    monkeypatch.setattr(kv_cache, "MIN_CAPACITY", 4)  # grow several times within a short test
    generator = torch.Generator().manual_seed(0)
    ours, reference = GrowingLayer(), DynamicLayer()
    for layer in (ours, reference):
        assert layer.get_seq_length() == 0
    prefill = _kv(3, 5, generator)
    for layer in (ours, reference):
        returned = layer.update(*prefill)
    assert torch.equal(returned[0], ours.keys) and _same(ours, reference)
    for layer in (ours, reference):
        layer.batch_repeat_interleave(2)
    assert ours.keys.shape[0] == 6 and _same(ours, reference)
    for step in range(12):
        batch = ours.keys.shape[0]
        new = _kv(batch, 1, generator)
        for layer in (ours, reference):
            layer.update(*new)
        assert _same(ours, reference), step
        if step in (3, 7):  # rows finish and leave the batch
            keep = torch.tensor([i for i in range(batch) if i % 3 != 1])
            for layer in (ours, reference):
                layer.batch_select_indices(keep)
            assert _same(ours, reference), step
    assert ours._keys.shape[-2] >= ours.get_seq_length() == 5 + 12
    for layer in (ours, reference):
        layer.crop(-4)
    assert _same(ours, reference)
    with pytest.raises(ValueError, match="negative"):
        ours.crop(2)


def test_updates_write_in_place_until_the_buffer_is_full():
    generator = torch.Generator().manual_seed(1)
    layer = GrowingLayer()
    layer.update(*_kv(2, 10, generator))
    buffer = layer._keys
    for _ in range(kv_cache.MIN_CAPACITY - 10):
        layer.update(*_kv(2, 1, generator))
    assert layer._keys is buffer  # no copy while there was room
    layer.update(*_kv(2, 1, generator))
    assert layer._keys is not buffer and layer._keys.shape[-2] == 2 * kv_cache.MIN_CAPACITY


def test_growing_cache_replaces_full_attention_layers_only():
    full = growing_cache(Qwen2Config(num_hidden_layers=3))
    assert [type(layer) for layer in full.layers] == [GrowingLayer] * 3
    mixed = Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=16, max_window_layers=1,
                        layer_types=["full_attention", "sliding_attention"])
    reference = DynamicCache(config=mixed)
    assert [type(layer) for layer in reference.layers] == [DynamicLayer, DynamicSlidingWindowLayer]
    assert [type(layer) for layer in growing_cache(mixed).layers] == [GrowingLayer, DynamicSlidingWindowLayer]
