"""A small byte-level BPE tokenizer trained on the fly, for models made from scratch.

    tokenizer = train_tokenizer(texts, vocab_size=1024)
    save_tokenizer(tokenizer, path)          # AutoTokenizer.from_pretrained(path) gives identical ids

Choices that matter for a tiny math model:
  - every digit is its own token, so numbers are spelled out digit by digit;
  - runs of newlines are pieces of their own, and every prompt ends in a newline
    right after a step-format marker, so a prompt tokenizes exactly as it does
    inside a training document;
  - the step-format markers (steps.MARKERS) are special tokens: one id each, never
    split, and cheap stop conditions for generation.

The pipeline (NFC, the Qwen2 split pattern, byte-level BPE) is the one that
transformers' Qwen2Tokenizer builds, and the saved folder names that class.
AutoTokenizer always loads a Qwen2-architecture folder as Qwen2Tokenizer, which
rebuilds its own pre-tokenizer from vocab and merges; training with exactly that
pipeline is what makes the reloaded tokenizer give the same ids as the trained one.
"""

from __future__ import annotations

from typing import Iterable

from rstar_math.steps import MARKERS

PAD, EOS = "<pad>", "<eos>"
SPECIAL_TOKENS = [PAD, EOS, *MARKERS]

# Qwen2's pre-tokenizer pattern: contractions, words, single digits (\p{N}), punctuation runs,
# newline runs, other whitespace.
SPLIT_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 1024, min_frequency: int = 2):
    """A fast tokenizer trained on `texts` (pad and eos set, markers special), saved as Qwen2Tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=EOS,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=list(MARKERS),
        clean_up_tokenization_spaces=False,
    )
    return fast


def save_tokenizer(tokenizer, path) -> None:
    """Save and name the class explicitly, so transformers 4 (Qwen2TokenizerFast) and 5 both load it."""
    import json
    from pathlib import Path

    tokenizer.save_pretrained(path)
    config_path = Path(path) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(config, indent=2))
