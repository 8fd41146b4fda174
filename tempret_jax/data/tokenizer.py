"""CLIP byte-level BPE tokenizer with the same ids as OpenAI CLIP (docs/design.md, Models).

Text is cleaned as CLIP cleans it (``ftfy.fix_text``, HTML entities unescaped twice, runs of
whitespace collapsed, lower-cased), split into words with CLIP's regular expression, mapped
byte-wise to printable unicode symbols and merged with the 48,894 BPE merges of CLIP's
vocabulary. Ids: 256 byte symbols, the same 256 with the end-of-word marker ``</w>``, one id
per merge, then start of text (49406) and end of text (49407); 49,408 in all.

A batch row is ``[START_ID, *ids, END_ID, 0, ...]`` of length ``context_length`` (77 for every
CLIP model). A text that does not fit is cut so that the end token stays at the last position,
as open_clip does. Zero is also the id of the symbol ``!``; the end token, not the padding,
marks where a text stops. Literal special-token strings in the input (``<|endoftext|>``) are
tokenised as ordinary text, so no input can forge a start or end token.

Attribution: ``bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's BPE vocabulary (MIT License,
Copyright (c) 2021 OpenAI), taken unchanged from the open_clip_torch 3.3.0 wheel (MIT License,
Copyright (c) 2012-2021 Gabriel Ilharco et al.); sha256
924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import math
from collections.abc import Sequence

import ftfy
import numpy as np
import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file.
START_ID = 49406
END_ID = 49407
VOCAB_SIZE = 49408

_END_OF_WORD = "</w>"
# CLIP's word pattern: English contractions, letter runs, single digits, runs of other
# non-space symbols. IGNORECASE is kept because it changes which characters match the
# contractions (e.g. the long s) even after lower-casing.
_WORD_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def byte_to_unicode() -> dict[int, str]:
    """Maps each of the 256 bytes to a printable unicode symbol, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves; the others (control characters, space, ...)
    take the code points 256, 257, ... in byte order, so BPE never sees whitespace.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def clean(text: str) -> str:
    """CLIP's text cleaning: mojibake fixed, HTML entities unescaped, whitespace, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _read_merges() -> list[tuple[str, str]]:
    """The first NUM_MERGES merges of the packaged vocabulary file (first line is a header)."""
    resource = importlib.resources.files(__package__).joinpath(VOCAB_FILE)
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{VOCAB_FILE}: expected {NUM_MERGES} merge lines of two symbols "
                         "after the header; the packaged vocabulary file is damaged")
    return merges


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replaces every occurrence of `pair`, scanning left to right without overlaps."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class Tokenizer:
    """OpenAI CLIP's tokenizer: ``tok(texts) -> (n, 77) int32`` ids, ``encode`` / ``decode``.

    Each distinct word is merged once and remembered, so a corpus with a small vocabulary
    (e.g. the EK-100 narrations) is tokenised at the speed of text cleaning.
    """

    def __init__(self):
        merges = _read_merges()
        self._byte_symbol = byte_to_unicode()
        symbols = list(self._byte_symbol.values())
        vocab = symbols + [s + _END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
        self._ids = {token: i for i, token in enumerate(vocab)}
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        # Decoding maps each id to its bytes, so the end-of-word marker is never confused with
        # a literal "</w>" in the text.
        symbol_byte = {s: b for b, s in self._byte_symbol.items()}
        self._token_bytes = [
            bytes(symbol_byte[c] for c in token.removesuffix(_END_OF_WORD))
            + (b" " if token.endswith(_END_OF_WORD) else b"")
            for token in vocab]
        self._word_ids: dict[str, tuple[int, ...]] = {}

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one word of the regular expression's split (bytes merged by rank)."""
        ids = self._word_ids.get(word)
        if ids is not None:
            return ids
        symbols = [self._byte_symbol[b] for b in word.encode("utf-8")]
        symbols[-1] += _END_OF_WORD
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda p: self._ranks.get(p, math.inf))
            if best not in self._ranks:
                break
            symbols = _merge_pair(symbols, best)
        ids = tuple(self._ids[s] for s in symbols)
        self._word_ids[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of the cleaned `text`, without start and end tokens."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode: expected a str, got {type(text).__name__}")
        return [i for word in _WORD_PATTERN.findall(clean(text)) for i in self._bpe(word)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` (1-D); a leading start token is skipped and decoding stops at the
        first end token, so a padded row of `__call__` decodes to its text.

        Words come back cleaned and separated by single spaces, as CLIP decodes them: spacing
        between punctuation and letters is not kept ("it's" -> "it 's").
        """
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        if ids and ids[0] == START_ID:
            ids = ids[1:]
        if END_ID in ids:
            ids = ids[:ids.index(END_ID)]
        bad = [i for i in ids if not 0 <= i < START_ID]
        if bad:
            raise ValueError(f"Tokenizer.decode: ids must be text ids in [0, {START_ID}) "
                             f"(a start token only first); got {bad[:5]}")
        text = b"".join(self._token_bytes[i] for i in ids)
        return text.decode("utf-8", errors="replace").rstrip(" ")

    def __call__(self, texts: str | Sequence[str],
                 context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """Token rows ``[START_ID, *encode(text), END_ID, 0, ...]``.

        Args:
          texts: one text or a sequence of n texts.
          context_length: row length L >= 2; longer texts are cut, keeping END_ID at L - 1.

        Returns:
          int32 array (n, L); n = 1 for a single str.
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), "
                             f"got {context_length}")
        rows = np.zeros((len(texts), context_length), np.int32)
        for row, text in zip(rows, texts):
            ids = self.encode(text)[:context_length - 2]
            row[:len(ids) + 2] = [START_ID, *ids, END_ID]
        return rows


@functools.cache
def default_tokenizer() -> Tokenizer:
    """The shared Tokenizer (the vocabulary is read once per process)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """CLIP token ids of `texts`: int32 (n, context_length); see `Tokenizer.__call__`."""
    return default_tokenizer()(texts, context_length)
