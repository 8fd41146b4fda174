"""The token rows a model's text tower reads, chosen by its config (``model.text``).

    text.tower 'clip'        CLIP's byte-level BPE (data/tokenizer.py), rows of 77
    text.tower 'distilbert'  BERT WordPiece over ``text.vocab_file`` (data/wordpiece.py: EgoVLP's
                             distilbert-base-uncased tokenizer), rows of text.context_length

`TextTokenizer.of(model.config.text)` is what every pipeline, evaluator and the search take;
it is a small frozen value, so Grain can pickle it into its worker processes, and each process
reads its vocabulary once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
    """texts -> (n, context_length) int32 token rows for a text tower (module docstring)."""

    tower: str = "clip"
    vocab_file: str = ""  # the WordPiece vocabulary ('distilbert')
    context_length: int = 77

    @classmethod
    def of(cls, text_config) -> "TextTokenizer":
        """The tokenizer of a model's text config (``model.text``), checked: its tokens must fit
        the model's embedding table (a token past it would embed as NaN), and a 'distilbert'
        tower needs its vocabulary file. Raises ValueError naming the key."""
        if text_config.tower != "distilbert":  # 'clip' (the towers: config.validate_model)
            from tempret_jax.data import tokenizer
            if text_config.vocab_size < tokenizer.VOCAB_SIZE:
                raise ValueError(f"model.text.vocab_size={text_config.vocab_size}: CLIP's BPE "
                                 f"tokenizer has {tokenizer.VOCAB_SIZE} tokens; a text tower "
                                 f"with fewer embeddings cannot read its token ids")
            return cls("clip", "", int(text_config.context_length))
        vocab_file = str(text_config.vocab_file)
        if not vocab_file:
            raise ValueError("model.text.vocab_file: expected the path of the WordPiece "
                             "vocabulary (distilbert-base-uncased's vocab.txt for EgoVLP's "
                             "weights); it cannot be downloaded here")
        tokenizer = cls("distilbert", vocab_file, int(text_config.context_length))
        size = tokenizer.wordpiece().vocab_size
        if size > text_config.vocab_size:
            raise ValueError(f"model.text.vocab_file {vocab_file} has {size} tokens, more than "
                             f"model.text.vocab_size={text_config.vocab_size}")
        return tokenizer

    def wordpiece(self):
        """The shared WordPieceTokenizer of `vocab_file` (read once per process)."""
        from tempret_jax.data import wordpiece
        return wordpiece.tokenizer_for(self.vocab_file, self.context_length)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> (n, context_length) int32."""
        texts = [str(t) for t in texts]
        if self.tower == "distilbert":
            return self.wordpiece()(texts)
        from tempret_jax.data import tokenizer  # the BPE vocabulary loads on first use
        return tokenizer.tokenize(texts, self.context_length)
