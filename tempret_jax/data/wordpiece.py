"""EgoVLP's text tokenizer: BERT WordPiece with distilbert-base-uncased's vocabulary.

EgoVLP (showlab/EgoVLP) tokenises narrations with
``AutoTokenizer.from_pretrained('distilbert-base-uncased')(texts, padding=True,
truncation=True)``: transformers' fast BERT tokenizer, which is the HF `tokenizers` library
configured as here. Text is cleaned (control characters dropped, every whitespace character a
space), spaces put around CJK ideographs, lower-cased and stripped of accents (BERT's rule:
accents go with lower-casing), split on whitespace and on every punctuation character (BERT's
basic split), and each word is matched greedily, longest piece first, against the vocabulary,
continuation pieces marked ``##``; a word that does not split into known pieces, or that is
longer than 100 characters, is one [UNK]. The special tokens are matched in the raw text
before all of that, as transformers does: a literal ``[SEP]`` in a narration is id [SEP] (a
lower-case ``[sep]`` is ordinary text). transformers' pure-Python BERT tokenizer gives the same
ids except on characters that Python's unicodedata and the library's Unicode tables classify
differently (code points unassigned or added in recent Unicode versions, CJK extension E);
there the library, EgoVLP's tokenizer, is followed.

The vocabulary is the user's file (vocab.txt, one token per line, the id of a token is its line
number from 0), as distilbert-base-uncased ships it; it cannot be downloaded here. In that file
[PAD] = 0, [UNK] = 100, [CLS] = 101, [SEP] = 102, [MASK] = 103, 30,522 tokens in all. The file
is checked when it is read: [PAD] must be id 0, because the model derives its attention mask
from ``ids != 0`` (`models/distilbert.py`), and [UNK], [CLS], [SEP] must be present.

A batch row is ``[CLS, *ids, SEP, PAD, ...]`` of a fixed length ``context_length`` (77, the
pipeline's row length, by default). A text that does not fit is cut so that [SEP] stays at the
last position, which is what transformers' ``truncation=True`` does at ``max_length`` (EgoVLP
itself truncates at the model's 512 positions; no EK-100 narration comes near 75 pieces).
Padding every row to the same length instead of the batch's longest does not change
DistilBERT's outputs: the attention mask hides the padding from every real token and the
position embeddings of real tokens do not move.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

CONTEXT_LENGTH = 77
PAD_ID = 0  # The model's attention mask is ids != PAD_ID.
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
MAX_WORD_CHARS = 100  # BERT's max_input_chars_per_word: longer words are one [UNK].


def attention_mask(ids: np.ndarray) -> np.ndarray:
    """True on real tokens: ids (n, L) -> (n, L) bool, the tokenizer's attention_mask."""
    return np.asarray(ids) != PAD_ID


def read_vocab(vocab_file) -> dict[str, int]:
    """Token -> id (its line number from 0) of a BERT vocab.txt, checked.

    Lines are read as transformers reads them (universal newlines, only the line break
    removed), so a token keeps any other trailing character.

    Raises:
      FileNotFoundError: no such file.
      ValueError: empty file, not UTF-8, a token on two lines, [PAD] not on line 0, or no
        [UNK] / [CLS] / [SEP]; the message names the file.
    """
    path = os.fspath(vocab_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such vocabulary file (expected a BERT vocab.txt, "
                                "e.g. distilbert-base-uncased's)")
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a "
                         "BERT vocab.txt, one token per line") from None
    if not tokens:
        raise ValueError(f"{path}: empty file; expected a BERT vocab.txt, one token per line")
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in vocab:
            # Ids would be ambiguous: transformers keeps the last line, tokenizers' file reader
            # may not, so two readers of the same file could disagree.
            raise ValueError(f"{path}:{i + 1}: token {token!r} repeats line {vocab[token] + 1}; "
                             "expected each token once")
        vocab[token] = i
    if vocab.get(PAD) != PAD_ID:
        where = f"on line {vocab[PAD] + 1}" if PAD in vocab else "missing"
        raise ValueError(f"{path}: {PAD} is {where}; expected it on line 1 (id {PAD_ID}, the "
                         "model masks ids == 0), as in BERT's vocab.txt")
    missing = [t for t in (UNK, CLS, SEP) if t not in vocab]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} token; expected BERT's special "
                         f"tokens {PAD}, {UNK}, {CLS}, {SEP}")
    return vocab


class WordPieceTokenizer:
    """distilbert-base-uncased's tokenizer: ``tok(texts) -> (n, L) int32`` ids, ``encode`` /
    ``decode``; the ids transformers' BertTokenizer gives for the same vocab.txt.

    Attributes:
      vocab_file, context_length: as given.
      vocab_size: number of tokens in the file (30,522 for distilbert-base-uncased).
      pad_id, unk_id, cls_id, sep_id: ids of the special tokens in the file (0, 100, 101, 102).
    """

    def __init__(self, vocab_file, context_length: int = CONTEXT_LENGTH):
        self.vocab_file = os.fspath(vocab_file)
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 ({CLS} and {SEP}), "
                             f"got {context_length}")
        self.context_length = int(context_length)
        vocab = read_vocab(self.vocab_file)
        self.vocab_size = len(vocab)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (
            vocab[t] for t in (PAD, UNK, CLS, SEP))
        # The pipeline transformers builds for BertTokenizer (tokenization_bert.py).
        # strip_accents=None follows lowercase, BERT's rule.
        tok = tokenizers.Tokenizer(
            WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=MAX_WORD_CHARS))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        # transformers registers the special tokens as added tokens: matched verbatim in the
        # raw text (normalized=False), before lower-casing and splitting.
        specials = [t for t in (PAD, UNK, CLS, SEP, MASK) if t in vocab]
        tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                for t in specials])
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without [CLS] / [SEP] and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"WordPieceTokenizer.encode: expected a str, got {type(text).__name__}")
        # One text at a time, not encode_batch: a short narration takes microseconds, and
        # encode never starts the library's thread pool, which a forked data worker would
        # inherit broken (tokenizers then disables it with a warning in every worker).
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` (1-D): a row of `__call__` or the output of `encode`.

        Trailing [PAD], one leading [CLS] and the [SEP] that ends the row are dropped; pieces
        are joined (``##`` removed) and words separated by single spaces, with the library's
        clean-up of spaces before punctuation. Text comes back lower-cased, without accents;
        an unknown word reads ``[UNK]``.
        """
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        while ids and ids[-1] == self.pad_id:
            ids.pop()
        if ids and ids[0] == self.cls_id:
            ids = ids[1:]
        if ids and ids[-1] == self.sep_id:
            ids = ids[:-1]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            # tokenizers would silently drop them.
            raise ValueError(f"WordPieceTokenizer.decode: ids must be in [0, {self.vocab_size}) "
                             f"({self.vocab_file}); got {bad[:5]}")
        return self._tok.decode(ids, skip_special_tokens=False)

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token rows ``[CLS, *encode(text), SEP, PAD, ...]``.

        Args:
          texts: one text or a sequence of n texts.

        Returns:
          int32 array (n, context_length); n = 1 for a single str. A longer text is cut to its
          first context_length - 2 pieces, keeping [SEP] last; `attention_mask(rows)` is the
          mask transformers returns, padded to the same length.
        """
        if isinstance(texts, str):
            texts = [texts]
        n, length = len(texts), self.context_length
        rows = np.full((n, length), self.pad_id, np.int32)
        for row, text in zip(rows, texts):
            ids = self.encode(text)[:length - 2]
            row[:len(ids) + 2] = [self.cls_id, *ids, self.sep_id]
        return rows


@functools.lru_cache(maxsize=8)
def _cached(path: str, context_length: int) -> WordPieceTokenizer:
    return WordPieceTokenizer(path, context_length)


def tokenizer_for(vocab_file, context_length: int = CONTEXT_LENGTH) -> WordPieceTokenizer:
    """The shared WordPieceTokenizer of (vocab_file, context_length): the file is read once per
    process. Paths are made absolute first, so ``"vocab.txt"`` and its Path share one instance;
    a file changed on disk after the first call is not read again."""
    return _cached(os.path.abspath(os.fspath(vocab_file)), int(context_length))


def tokenize(texts: str | Sequence[str], vocab_file,
             context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """WordPiece ids of `texts`: int32 (n, context_length); see `WordPieceTokenizer.__call__`."""
    return tokenizer_for(vocab_file, context_length)(texts)
