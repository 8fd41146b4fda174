"""The text embedded for each sentence is the narration of the clip it names by narration_id,
as AVION, SMS-Loss and EgoVLP embed it, checked on the real EK-100 test annotations, where six
sentences' own text is another narration (docs/design.md, Sentence text)."""

import dataclasses

import numpy as np

from tempret_jax import embedding
from tempret_jax.data import ek100

# (row in EPIC_100_retrieval_test_sentence.csv, narration_id, the sentence file's text, the
# narration of that clip in EPIC_100_retrieval_test.csv). Rows 3835-3841, the file's last seven,
# are narrations shifted by one row against their ids; row 3837 ('P08_15_47', 'throw away
# bits') is shifted too but lands on a text equal to its own clip's.
DIFFERING = [
    (3835, "P22_04_144", "wash cooker", "cut slice"),
    (3836, "P08_16_88", "cut slice", "throw away bits"),
    (3838, "P22_01_180", "throw away bits", "put down down slice"),
    (3839, "P01_14_59", "put down down slice", "looking for something"),
    (3840, "P12_03_60", "looking for something", "count"),
    (3841, "P12_03_90", "count", "stir"),
]


def _tables(ek100_dir):
    return (ek100.read_clips(ek100_dir / "EPIC_100_retrieval_test.csv"),
            ek100.read_sentences(ek100_dir / "EPIC_100_retrieval_test_sentence.csv"))


def test_six_test_sentences_name_a_clip_with_another_narration(ek100_dir):
    clips, sentences = _tables(ek100_dir)
    index = clips.index()
    found = [(i, str(nid), str(sentences.narration[i]), str(clips.narration[index[nid]]))
             for i, nid in enumerate(sentences.narration_id)
             if sentences.narration[i] != clips.narration[index[nid]]]
    assert found == DIFFERING


def test_each_sentence_is_embedded_as_its_clips_narration(ek100_dir):
    clips, sentences = _tables(ek100_dir)
    texts = embedding.sentence_texts(clips, sentences, range(len(sentences)))
    changed = {i: text for i, (old, text) in enumerate(zip(sentences.narration, texts))
               if old != text}
    assert changed == {row: narration for row, _, _, narration in DIFFERING}
    index = clips.index()
    assert texts == [str(clips.narration[index[nid]]) for nid in sentences.narration_id]
    # The six move a text: 'wash cooker' is now one sentence's, 'stir' two sentences'.
    assert texts.count("wash cooker") == 1 and texts.count("stir") == 2
    assert len(set(texts)) == len(set(sentences.narration)) == len(set(clips.narration)) == 3835


def test_egovlp_rows_are_every_test_clip_once(ek100_dir):
    clips, sentences = _tables(ek100_dir)
    texts, counts = embedding.text_rows(
        embedding.sentence_texts(clips, sentences, range(len(sentences))),
        [str(n) for n in clips.narration])
    assert len(texts) == len(sentences)  # every clip narration is a sentence's: no extra pass
    assert counts.sum() == len(clips) == 9668  # EgoVLP's 9,668 text rows
    assert np.count_nonzero(counts) == 3835


def test_a_sentence_that_names_no_clip_keeps_its_own_text(ek100_dir):
    clips, sentences = _tables(ek100_dir)
    extra = dataclasses.replace(
        sentences, narration_id=np.append(sentences.narration_id, "P99_99_1"),
        narration=np.append(sentences.narration, "juggle plates"))
    texts = embedding.sentence_texts(clips, extra, [0, len(extra) - 1, 3835])
    assert texts == [str(sentences.narration[0]), "juggle plates", "cut slice"]
