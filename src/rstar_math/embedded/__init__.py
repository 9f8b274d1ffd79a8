"""The embedded default's world: a seed corpus with systematic misconceptions and a small model trained on it.

    corpus.py     parsers and step-format solution writers per generator module; build_corpus
    bootstrap.py  WorldConfig and bootstrap(): corpus -> tokenizer -> tiny Qwen2 pre-trained from scratch
"""
