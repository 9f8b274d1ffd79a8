"""The embedded default's world: a seed corpus with systematic misconceptions and a small model trained on it.

    corpus.py     parsers and step-format solution writers per generator module; write_corpus
    bootstrap.py  bootstrap(config.EmbeddedConfig): corpus -> tokenizer -> tiny Qwen2 pre-trained from scratch
"""
