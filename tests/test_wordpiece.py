"""EgoVLP's WordPiece tokenizer: ids identical to transformers' BERT tokenizers on a vocabulary
made here from the EK-100 narrations, and on distilbert-base-uncased's when one is given."""

import collections
import os
import pathlib
import re
import string

import numpy as np
import pytest
import transformers

from tempret_jax.data import ek100, wordpiece
from tempret_jax.data.wordpiece import WordPieceTokenizer, attention_mask, tokenizer_for

try:  # transformers 5: BertTokenizer is the tokenizers-backed one, this the pure-Python one.
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as SlowBert
except ImportError:  # transformers 4: BertTokenizer is the pure-Python one.
    SlowBert = transformers.BertTokenizer

REAL_VOCAB_ENV = "TEMPRET_DISTILBERT_VOCAB"
# BERT's specials at their real ids: [PAD] 0, [unused0..98] 1..99, [UNK] 100, [CLS] 101, ...
SPECIALS = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# No piece for "q": a narration word with a q that is not a whole word is [UNK].
LETTERS = "abcdefghijklmnoprstuvwxyz"
EDGE_CASES = [
    "Café crème",  # accents stripped with lower-casing
    "cafe\u0301 CRE\u0300ME",  # decomposed accents
    "切洋葱 😀",  # each CJK ideograph a word (洋 is in the vocab); emoji [UNK]
    "wait!!! ... really?!?",  # each punctuation character its own token
    "Take THE Plate, pUt iT dOwN.",  # mixed case
    "cut 12 onions, 3.5 min; 1/2 cup (v60)",  # digits and punctuation
    "Straße, Ærøskøbing, Ñandú",  # ß and ø have no accent to strip
    "tab\tnew\nline\r\x0bvt\x0cff\u00a0nbsp\u2028ls\u3000ideographic",  # whitespace kinds
    "null\x00 repl\ufffd bell\x07 zwsp\u200b soft\u00adhyphen",  # control / format chars
    "a [SEP] b [sep] [MASK] [UNK] [unused1]",  # specials are matched verbatim, case-sensitive
    "x" * 100 + " " + "x" * 101,  # a word over 100 characters is one [UNK]
    "",
    "   \t\n ",
]


def _narrations(ek100_dir) -> list[str]:
    return [str(t) for name in (ek100.TEST_SENTENCES_FILE, ek100.TRAIN_SENTENCES_FILE)
            for t in ek100.read_sentences(ek100_dir / name).narration]


def make_vocab(path: pathlib.Path, narrations: list[str]) -> pathlib.Path:
    """A BERT-style vocab.txt from the narrations: the specials at their real ids, the ASCII
    punctuation, single letters and digits (word-initial and ``##``), the 40 commonest 2-4
    letter endings of the rarer words as ``##`` suffixes, the 300 commonest words without a q
    whole, one CJK ideograph and ``ø``. Rare words split into several pieces, q words are
    [UNK]."""
    words = collections.Counter(w for t in narrations for w in re.findall(r"[a-z0-9]+", t.lower()))
    whole = [w for w, _ in words.most_common() if "q" not in w][:300]
    endings = collections.Counter(w[-k:] for w in words if w not in whole and "q" not in w
                                  for k in (2, 3, 4) if len(w) > k)
    chars = [*LETTERS, *string.digits, "ø"]
    tokens = [*SPECIALS, *string.punctuation, *chars, *("##" + c for c in chars),
              *("##" + e for e, _ in endings.most_common(40)), *whole, "洋"]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def narrations(ek100_dir):
    return _narrations(ek100_dir)


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory, narrations):
    return make_vocab(tmp_path_factory.mktemp("wordpiece") / "vocab.txt", narrations)


@pytest.fixture(scope="module")
def tok(vocab_file):
    return WordPieceTokenizer(vocab_file)


@pytest.fixture(scope="module")
def references(vocab_file):
    """EgoVLP's tokenizer (AutoTokenizer gives DistilBertTokenizerFast) and the pure-Python one.

    The path is passed positionally: transformers 5's tokenizers-backed BertTokenizer ignores a
    ``vocab_file=`` keyword and falls back to a five-token vocabulary.
    """
    return {"fast": transformers.DistilBertTokenizerFast(str(vocab_file)),
            "slow": SlowBert(str(vocab_file), do_lower_case=True)}


def assert_rows_match(rows, reference, texts, context_length):
    """Our fixed-length rows equal `reference` called as EgoVLP calls it (padding to the
    batch's longest), with our extra columns all padding."""
    theirs = reference(list(texts), padding=True, truncation=True, max_length=context_length)
    ids = np.asarray(theirs["input_ids"])
    width = ids.shape[1]
    assert rows.dtype == np.int32 and rows.shape == (len(texts), context_length)
    assert width <= context_length
    np.testing.assert_array_equal(rows[:, :width], ids)
    assert not rows[:, width:].any()
    mask = attention_mask(rows)
    np.testing.assert_array_equal(mask[:, :width], np.asarray(theirs["attention_mask"], bool))
    assert not mask[:, width:].any()


def test_vocab_exercises_pieces_unknowns_digits_and_punctuation(tok, narrations):
    pieces = [tok.encode(t) for t in narrations]
    words = [len(t.split()) for t in narrations]

    assert tok.vocab_size == len(pathlib.Path(tok.vocab_file).read_text().splitlines())
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 100, 101, 102)
    assert sum(len(p) > w for p, w in zip(pieces, words)) > 1000  # multi-piece words
    assert sum(tok.unk_id in p for p in pieces) > 50
    assert any(re.search(r"\d", t) for t in narrations)
    assert any(re.search(r"[.,'/()-]", t) for t in narrations)


@pytest.mark.parametrize("reference", ["fast", "slow"])
def test_every_ek100_narration_matches_transformers(tok, references, narrations, reference):
    assert len(narrations) == 3842 + 15989

    assert_rows_match(tok(narrations), references[reference], narrations, 77)


@pytest.mark.parametrize("reference", ["fast", "slow"])
def test_truncation_of_every_narration_matches_transformers(vocab_file, references, narrations,
                                                            reference):
    rows = WordPieceTokenizer(vocab_file, context_length=6)(narrations)

    assert (rows[:, -1] != 0).sum() > 5000  # many narrations are cut
    assert_rows_match(rows, references[reference], narrations, 6)


@pytest.mark.parametrize("reference", ["fast", "slow"])
@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_case_matches_transformers(tok, references, reference, text):
    assert_rows_match(tok([text]), references[reference], [text], 77)


def test_every_bmp_character_matches_egovlps_tokenizer(tok, references):
    # Each code point of the Basic Multilingual Plane between two letters: cleaning, CJK
    # splitting, accents, punctuation.
    texts = [f"a{chr(c)}b" for c in range(0x10000) if not 0xD800 <= c < 0xE000]

    assert_rows_match(tok(texts), references["fast"], texts, 77)


def test_every_old_assigned_character_matches_the_python_tokenizer(tok, references):
    # The pure-Python tokenizer reads Python's unicodedata, the library its own Unicode tables;
    # they agree wherever both know a character. Below U+0600 (Latin, Greek, Cyrillic, IPA,
    # combining marks, ...) both know every assigned one.
    import unicodedata
    texts = [f"a{chr(c)}b" for c in range(0x600) if unicodedata.category(chr(c)) != "Cn"]

    assert_rows_match(tok(texts), references["slow"], texts, 77)


def test_edge_cases_tokenise_as_bert_does(tok):
    def pieces(text):
        return [tok._tok.id_to_token(i) for i in tok.encode(text)]

    assert pieces("Café crème") == pieces("cafe creme")
    assert pieces("切洋葱 😀") == ["[UNK]", "洋", "[UNK]", "[UNK]"]
    assert pieces("take!!!") == ["take", "!", "!", "!"]
    assert pieces("a [SEP] b [sep]") == ["a", "[SEP]", "b", "[", "s", "##e", "##p", "]"]
    assert pieces("x" * 100) == ["x", *["##x"] * 99] and pieces("x" * 101) == ["[UNK]"]


def test_row_is_cls_ids_sep_then_padding(tok):
    row = tok("take plate")[0]

    ids = tok.encode("take plate")
    np.testing.assert_array_equal(row[:len(ids) + 2], [101, *ids, 102])
    assert not row[len(ids) + 2:].any()
    np.testing.assert_array_equal(attention_mask(row[None]), (row != 0)[None])


@pytest.mark.parametrize("context_length", [77, 10, 2])
def test_truncation_keeps_sep_last(vocab_file, context_length):
    text = "take the plate and put it down " * 20
    tok = WordPieceTokenizer(vocab_file, context_length)

    row = tok(text)[0]

    assert row.shape == (context_length,) and row[0] == 101 and row[-1] == 102
    np.testing.assert_array_equal(row[1:-1], tok.encode(text)[:context_length - 2])


def test_text_filling_the_row_exactly_is_not_cut(tok):
    text = " ".join(["plate"] * 75)

    row = tok(text)[0]

    assert row[76] == 102 and (row[1:76] == tok.encode("plate")[0]).all()


@pytest.mark.parametrize("text", ["", "   ", "\t\n \u00a0"])
def test_empty_or_blank_text_is_cls_sep(tok, text):
    assert tok.encode(text) == []
    np.testing.assert_array_equal(tok(text)[0, :3], [101, 102, 0])


def test_decode_inverts_encode_for_narrations_without_unknowns(tok, references, narrations):
    simple = [t for t in narrations if re.fullmatch(r"[a-z]+( [a-z]+)*", t) and "q" not in t]
    assert len(simple) > 15000

    for text in simple:
        assert tok.decode(tok.encode(text)) == text
    for text in narrations[:500]:  # and reads as transformers reads the ids back
        ids = tok.encode(text)
        assert tok.decode(ids) == references["fast"].decode(ids)


def test_decode_of_a_padded_row_drops_specials_and_padding(tok):
    rows = tok(["wash cloth", "take plate.", "Ærø!"])

    assert [tok.decode(row) for row in rows] == ["wash cloth", "take plate.", "[UNK]!"]
    assert tok.decode([]) == ""


def test_decode_rejects_ids_outside_the_vocabulary(tok):
    with pytest.raises(ValueError, match=r"ids must be in \[0, "):
        tok.decode([101, tok.vocab_size])
    with pytest.raises(ValueError, match="ids must be in"):
        tok.decode([-1])


def test_batch_equals_single_calls_and_accepts_numpy_strings(tok, narrations):
    texts = np.asarray(narrations[:50])  # a numpy array of str is a sequence of str

    batch = tok(texts)

    assert batch.shape == (50, 77) and batch.dtype == np.int32
    for text, row in zip(texts, batch):
        single = tok(str(text))
        assert single.shape == (1, 77) and single.dtype == np.int32
        np.testing.assert_array_equal(single[0], row)


def test_tokenizer_for_shares_one_instance_per_file_and_length(vocab_file, monkeypatch):
    monkeypatch.chdir(vocab_file.parent)

    shared = tokenizer_for(vocab_file)

    assert tokenizer_for(str(vocab_file)) is shared
    assert tokenizer_for("vocab.txt", 77) is shared  # relative paths are made absolute
    other = tokenizer_for(vocab_file, 16)
    assert other is not shared and other.context_length == 16
    np.testing.assert_array_equal(wordpiece.tokenize(["take plate"], vocab_file, 16),
                                  other(["take plate"]))


def test_real_distilbert_vocab_matches_transformers(narrations):
    path = os.environ.get(REAL_VOCAB_ENV)
    if not path:
        hub = pathlib.Path(os.environ.get("HF_HOME", pathlib.Path.home() / ".cache/huggingface"))
        found = sorted(hub.glob("hub/models--distilbert-base-uncased/snapshots/*/vocab.txt"))
        path = str(found[0]) if found else None
    if not path:
        pytest.skip(f"no distilbert-base-uncased vocab.txt: set "
                    f"{REAL_VOCAB_ENV}=/path/to/vocab.txt (or have it in the Hugging Face cache) to compare on the real vocabulary")
    tok = WordPieceTokenizer(path)
    reference = transformers.DistilBertTokenizerFast(path)

    assert tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 100, 101, 102)
    assert_rows_match(tok(narrations), reference, narrations, 77)
    assert_rows_match(tok(EDGE_CASES), reference, EDGE_CASES, 77)


def _write(tmp_path, lines, name="vocab.txt"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("lines, message", [
    ([], "empty file"),
    (["[UNK]", "[PAD]", "[CLS]", "[SEP]"], r"\[PAD\] is on line 2; expected it on line 1"),
    (["[UNK]", "[CLS]", "[SEP]"], r"\[PAD\] is missing"),
    (["[PAD]", "[UNK]", "[SEP]"], r"no \[CLS\] token"),
    (["[PAD]", "[CLS]"], r"no \[UNK\], \[SEP\] token"),
    (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "take", "take"], r":6: token 'take' repeats line 5"),
])
def test_bad_vocabulary_is_rejected_naming_the_file(tmp_path, lines, message):
    path = _write(tmp_path, lines)

    with pytest.raises(ValueError, match=message) as e:
        WordPieceTokenizer(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_missing_or_binary_vocabulary_is_rejected_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "vocab.txt"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(missing))}: no such"):
        WordPieceTokenizer(missing)
    binary = tmp_path / "vocab.bin"
    binary.write_bytes(b"[PAD]\n\xff\xfe\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(binary))}: not UTF-8"):
        WordPieceTokenizer(binary)


def test_invalid_arguments_are_rejected(vocab_file, tok):
    with pytest.raises(ValueError, match="context_length must be >= 2"):
        WordPieceTokenizer(vocab_file, context_length=1)
    with pytest.raises(TypeError, match="expected a str, got NoneType"):
        tok(["take plate", None])
