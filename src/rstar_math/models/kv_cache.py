"""A key/value cache that grows in place, for the decoding loop in hf_engine.py.

transformers' DynamicCache appends each new token with torch.cat, which copies every
layer's whole cache at every step: on a CPU with a small model that copy costs about
as much as the attention that reads it. Here each full-attention layer keeps its keys
and values in a buffer with room to spare (grown by doubling), a step writes one
column, and attention reads a view of the filled part. Sliding-window and other
special layers keep transformers' own classes.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

MIN_CAPACITY = 128


class GrowingLayer(DynamicLayer):
    """One layer's keys and values, [batch, heads, capacity, head_dim] buffers filled to `length`."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def _expose(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def _reserve(self, needed: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        capacity = 0 if self._keys is None else self._keys.shape[-2]
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity, MIN_CAPACITY)
        grown_keys = keys.new_empty((*keys.shape[:2], capacity, keys.shape[-1]))
        grown_values = values.new_empty((*values.shape[:2], capacity, values.shape[-1]))
        if self.length:
            grown_keys[:, :, : self.length] = self._keys[:, :, : self.length]
            grown_values[:, :, : self.length] = self._values[:, :, : self.length]
        self._keys, self._values = grown_keys, grown_values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self._reserve(end, key_states, value_states)
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reset(self) -> None:
        super().reset()
        self.length = 0
        self._keys = self._values = None

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, not {tokens_to_remove}")
        if self.is_initialized and tokens_to_remove:
            self.length = max(0, self.length + tokens_to_remove)
            self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length():  # the buffers themselves: one copy, and the room to grow is kept
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length():
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._expose()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length():
            self.batch_select_indices(beam_idx.to(self._keys.device))


def growing_cache(config) -> DynamicCache:
    """A DynamicCache for `config` whose plain full-attention layers grow in place."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
