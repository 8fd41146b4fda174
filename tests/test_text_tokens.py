"""The token rows of each text tower, chosen from the model config."""

import numpy as np
import pytest

from tempret_jax.data import synthetic, tokenizer, wordpiece
from tempret_jax.data.text_tokens import TextTokenizer
from tempret_jax.models import retrieval


def test_a_clip_tower_reads_clips_bpe_rows():
    tok = TextTokenizer.of(retrieval.model_config("vit_b16").text)
    np.testing.assert_array_equal(tok(["cut the onion"]), tokenizer.tokenize(["cut the onion"]))


def test_a_clip_tower_with_fewer_embeddings_than_bpe_tokens_is_refused():
    # CLIP token ids reach 49407; past a smaller table they would embed as NaN.
    text = retrieval.model_config("vit_b16").text
    text.vocab_size = 1000
    with pytest.raises(ValueError, match="model.text.vocab_size=1000: CLIP's BPE tokenizer has "
                                         "49408 tokens"):
        TextTokenizer.of(text)


def test_a_distilbert_tower_reads_wordpiece_rows_of_its_vocabulary_and_length():
    text = retrieval.model_config("egovlp_tiny").text
    text.update(vocab_file=str(synthetic.vocab_path()), context_length=12, vocab_size=200)
    rows = TextTokenizer.of(text)(["lift the red bar"])
    want = wordpiece.WordPieceTokenizer(synthetic.vocab_path(), 12)(["lift the red bar"])
    np.testing.assert_array_equal(rows, want)
    assert rows.shape == (1, 12) and rows[0, 0] == 2  # [CLS] of this vocabulary


def test_a_distilbert_tower_without_a_vocabulary_or_with_too_small_a_table_is_refused():
    text = retrieval.model_config("egovlp_tiny").text
    with pytest.raises(ValueError, match="model.text.vocab_file: expected the path"):
        TextTokenizer.of(text)
    text.vocab_file = str(synthetic.vocab_path())  # 146 tokens, 64 embedding rows
    with pytest.raises(ValueError, match="has 146 tokens, more than model.text.vocab_size=64"):
        TextTokenizer.of(text)


def test_the_packaged_synthkitchens_vocabulary_is_the_generated_one():
    lines = synthetic.vocab_path().read_text().splitlines()
    assert lines == synthetic.wordpiece_vocab(), (
        "regenerate: python -c \"from tempret_jax.data import synthetic; synthetic.vocab_path()"
        ".write_text('\\n'.join(synthetic.wordpiece_vocab()) + '\\n')\"")
    assert lines[0] == "[PAD]" and len(set(lines)) == len(lines)


def test_every_synthkitchens_narration_is_known_words_only():
    vocab = synthetic.wordpiece_vocab()
    whole_words = vocab.index("a")  # the words come before the single characters
    tok = wordpiece.WordPieceTokenizer(synthetic.vocab_path())
    for verb in synthetic.VERBS:
        for word in verb.words:
            ids = tok.encode(f"{word} red square and blue bar {verb.particle}")
            assert all(5 <= i < whole_words for i in ids), [vocab[i] for i in ids]
