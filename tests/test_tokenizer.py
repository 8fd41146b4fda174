"""CLIP tokenizer: ids identical to OpenAI CLIP's (as open_clip 3.3 produces them)."""

import re

import numpy as np
import pytest

from tempret_jax.data import ek100
from tempret_jax.data import tokenizer
from tempret_jax.data.tokenizer import END_ID, START_ID, Tokenizer, tokenize


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return tokenizer.default_tokenizer()


@pytest.fixture(scope="module")
def golden(ek100_dir):
    return np.load(ek100_dir / "clip_token_ids_test.npz")


def test_every_test_narration_matches_open_clip_ids(ek100_dir, golden):
    sentences = ek100.read_sentences(ek100_dir / "EPIC_100_retrieval_test_sentence.csv")
    np.testing.assert_array_equal(golden["narration_id"], sentences.narration_id)
    np.testing.assert_array_equal(golden["narration"], sentences.narration)

    ids = tokenize(list(sentences.narration))

    assert ids.dtype == np.int32 and ids.shape == (3842, 77)
    np.testing.assert_array_equal(ids, golden["token_ids"])


# Ids below were produced by open_clip 3.3's SimpleTokenizer.encode for the same strings.
@pytest.mark.parametrize("text, expected", [
    ("a photo of a cat", [320, 1125, 539, 320, 2368]),
    ("I'LL cut 12 onions", [328, 1342, 3032, 272, 273, 15255]),  # contraction, single digits
    ("Café crème brûlée", [15304, 1075, 12138, 614, 711, 127, 119, 75, 13489]),
    ("切洋葱 😀", [42748, 229, 162, 112, 233, 164, 239, 365, 7334]),  # unmerged utf-8 bytes
    ("\u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d", [257, 27706, 257]),  # mojibake fixed by ftfy
    ("<|endoftext|>", [27, 347, 40786, 4160, 91, 285]),  # no special token from text
])
def test_encode_matches_open_clip(tok, text, expected):
    assert tok.encode(text) == expected


def test_row_is_start_ids_end_then_zero_padding(tok):
    row = tokenize("a photo of a cat")[0]

    np.testing.assert_array_equal(row[:7], [START_ID, 320, 1125, 539, 320, 2368, END_ID])
    assert not row[7:].any()


@pytest.mark.parametrize("context_length", [77, 10])
def test_truncation_keeps_end_token_last(tok, context_length):
    text = "take the plate and put it down " * 20
    ids = tok.encode(text)
    assert len(ids) > context_length

    row = tokenize(text, context_length=context_length)[0]

    assert row.shape == (context_length,)
    assert row[0] == START_ID and row[-1] == END_ID
    np.testing.assert_array_equal(row[1:-1], ids[:context_length - 2])


def test_text_filling_the_context_exactly_is_not_cut(tok):
    text = " ".join(["plate"] * 75)
    assert len(tok.encode(text)) == 75

    row = tokenize(text)[0]

    assert row[76] == END_ID and (row[1:76] == tok.encode("plate")[0]).all()


@pytest.mark.parametrize("text", ["", "   ", "\t\n \u00a0"])
def test_empty_or_blank_text_is_start_end(tok, text):
    assert tok.encode(text) == []
    row = tokenize(text)[0]
    np.testing.assert_array_equal(row[:2], [START_ID, END_ID])
    assert not row[2:].any()


@pytest.mark.parametrize("messy, clean", [
    ("  Take\tthe \n PLATE  ", "take the plate"),  # whitespace collapsed, lower-cased
    ("fish &amp;amp; chips &lt;b&gt;", "fish & chips <b>"),  # entities unescaped twice
    ("put\u00a0down\u3000knife", "put down knife"),  # unicode spaces
    ("\u00e2\u20ac\u0153take\u00e2\u20ac\u009d", '"take"'),  # mojibake fixed by ftfy
    ("Ｔａｋｅ ﬁsh", "take fish"),  # full-width letters and ligatures normalised
])
def test_cleaning(tok, messy, clean):
    assert tokenizer.clean(messy) == clean
    assert tok.encode(messy) == tok.encode(clean)


def test_decode_inverts_encode_for_simple_lowercase_text(tok, golden):
    simple = [t for t in golden["narration"] if re.fullmatch(r"[a-z]+( [a-z]+)*", t)]
    assert len(simple) > 3000

    for text in simple:
        assert tok.decode(tok.encode(text)) == text


def test_decode_of_a_padded_row_stops_at_end_token(tok):
    rows = tokenize(["wash cloth", "take plate"])

    assert [tok.decode(row) for row in rows] == ["wash cloth", "take plate"]
    assert tok.decode([]) == ""


def test_decode_rejects_non_text_ids(tok):
    with pytest.raises(ValueError, match="text ids"):
        tok.decode([320, START_ID, 320])
    with pytest.raises(ValueError, match="text ids"):
        tok.decode([tokenizer.VOCAB_SIZE])


def test_batch_equals_single_calls(golden):
    texts = golden["narration"][:50]

    batch = tokenize(texts)  # a numpy array of str is a sequence of str

    assert batch.shape == (50, 77)
    for text, row in zip(texts, batch):
        single = tokenize(str(text))
        assert single.shape == (1, 77) and single.dtype == np.int32
        np.testing.assert_array_equal(single[0], row)


def test_fresh_tokenizer_equals_default(golden):
    texts = list(golden["narration"][:100])
    np.testing.assert_array_equal(Tokenizer()(texts), tokenize(texts))


def test_invalid_input_is_rejected(tok):
    with pytest.raises(ValueError, match="context_length"):
        tokenize("take plate", context_length=1)
    with pytest.raises(TypeError, match="str"):
        tokenize(["take plate", None])


def test_byte_table_is_a_bijection_onto_printable_symbols():
    table = tokenizer.byte_to_unicode()

    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(s.isprintable() and not s.isspace() for s in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "\u0120"  # GPT-2's "Ġ"
