"""Dual-softmax in its two forms against hand-written NumPy: EgoVLP's (run/test_epic.py: a text
row per clip, raw dot products, softmax over the videos then over the 9,668 texts, the
sentences' columns picked by narration_id) and the one over the split's sentences; the config
keys that choose them (docs/design.md, Metrics)."""

import json

import ml_collections
import numpy as np
import pytest

from tempret_jax import config as config_lib, embedding, metrics, run_config

# 4 clips, 3 sentences; clips 0 and 2 share a narration (EgoVLP embeds it twice).
NARRATIONS = ["cut onion", "wash pan", "cut onion", "open door"]
CLIP_IDS = ["P01_1", "P01_2", "P01_3", "P01_4"]
SENTENCE_IDS = ["P01_1", "P01_2", "P01_4"]  # the narration_id of a representative clip


def _softmax_loop(x, axis):
    """softmax along ``axis`` of a 2-D array, one row or column at a time."""
    out = np.empty_like(x)
    for i in range(x.shape[1 - axis]):
        line = x[:, i] if axis == 0 else x[i]
        e = np.exp(line - line.max())
        if axis == 0:
            out[:, i] = e / e.sum()
        else:
            out[i] = e / e.sum()
    return out


def _egovlp_by_hand(text_vectors, video, temperature=500.0):
    """EgoVLP's test_epic.py written out: text_embeds has a row per clip (its own narration)."""
    text_embeds = np.stack([text_vectors[n] for n in NARRATIONS]).astype(np.float64)
    s = text_embeds @ video.astype(np.float64).T  # sim_matrix_mm: (9,668 texts, 9,668 videos)
    s = _softmax_loop(s / temperature, axis=1) * s
    s = _softmax_loop(s, axis=0)
    indexes = [CLIP_IDS.index(nid) for nid in SENTENCE_IDS]  # video_id.tolist().index(elem)
    return s.T[:, indexes]


def _embedded(video_raw, text_vectors):
    sentences = [NARRATIONS[CLIP_IDS.index(nid)] for nid in SENTENCE_IDS]
    texts, counts = embedding.text_rows(sentences, NARRATIONS)
    raw = np.stack([text_vectors[t] for t in texts]).astype(np.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return embedding.Embedded(
        video=unit(video_raw), text=unit(raw[:3]), video_features=video_raw,
        text_features=raw[:3], clip_rows=np.arange(4), sentence_rows=np.arange(3),
        rel=np.zeros((4, 3)), video_raw=video_raw, text_raw=raw, text_counts=counts)


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    # Unnormalised, with norms near 4 (dot products up to ~16; the result is float32).
    video = (4 * rng.normal(size=(4, 8)) / np.sqrt(8)).astype(np.float32)
    text_vectors = {t: (4 * rng.normal(size=8) / np.sqrt(8)).astype(np.float32)
                    for t in sorted(set(NARRATIONS))}
    return video, text_vectors


def test_egovlp_form_equals_its_code_on_a_row_per_clip(case):
    video, text_vectors = case
    embedded = _embedded(video, text_vectors)
    np.testing.assert_allclose(embedded.similarity("egovlp"), _egovlp_by_hand(text_vectors, video),
                               rtol=1e-5)
    np.testing.assert_allclose(embedded.similarity("egovlp", temperature=50.0),
                               _egovlp_by_hand(text_vectors, video, 50.0), rtol=1e-5)


def test_the_duplicate_narration_counts_twice_in_the_softmax_over_texts(case):
    video, text_vectors = case
    texts, counts = embedding.text_rows(["cut onion", "wash pan", "open door"], NARRATIONS)
    assert texts == ["cut onion", "wash pan", "open door"]
    np.testing.assert_array_equal(counts, [2, 1, 1])
    # Counted once instead, the result differs from EgoVLP's.
    once = _embedded(video, text_vectors)
    once.text_counts = np.ones(3)
    assert not np.allclose(once.similarity("egovlp"), _egovlp_by_hand(text_vectors, video),
                           rtol=1e-3)


def test_text_rows_add_the_clip_narrations_no_sentence_has_and_weigh_repeats_zero():
    texts, counts = embedding.text_rows(["a", "b", "a", "z"], ["a", "c", "a", "b", "c"])
    assert texts == ["a", "b", "a", "z", "c"]
    # 'a' twice among the clips (its repeat weighs 0), 'z' no clip's (once), 'c' two clips'.
    np.testing.assert_array_equal(counts, [2, 1, 0, 1, 2])


def test_dual_softmax_counts_are_repeated_columns():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(5, 3))
    counts = np.array([3, 0, 1])
    repeated = np.repeat(sim, [3, 1, 1], axis=1)  # column 1 once (to score it), weight 0
    expected = _softmax_loop(repeated.T / 500.0, axis=1) * repeated.T
    e = np.exp(expected - expected.max(axis=0))
    denominator = (e * np.array([1, 1, 1, 0, 1])[:, None]).sum(axis=0)
    got = metrics.dual_softmax(sim, counts=counts)
    np.testing.assert_allclose(got, (e / denominator).T[:, [0, 3, 4]], rtol=1e-12)
    np.testing.assert_allclose(metrics.dual_softmax(sim, counts=np.ones(3)),
                               metrics.dual_softmax(sim), rtol=1e-12)


def test_sentences_form_is_the_formula_on_the_cosines(case):
    video, text_vectors = case
    embedded = _embedded(video, text_vectors)
    cos = embedded.video.astype(np.float64) @ embedded.text.T
    s = _softmax_loop(cos.T / 500.0, axis=1) * cos.T
    np.testing.assert_allclose(embedded.similarity("sentences"), _softmax_loop(s, axis=0).T,
                               rtol=1e-5)
    np.testing.assert_allclose(embedded.similarity(), cos, rtol=1e-6)
    with pytest.raises(ValueError, match="dual_softmax"):
        embedded.similarity("both")


def test_the_config_names_the_form_and_a_saved_runs_booleans_keep_their_old_meaning(tmp_path):
    config = config_lib.default_config()
    assert config_lib.dual_softmax_settings(config.eval) == ("none", 500.0)
    config.eval.update(dual_softmax="egovlp", dual_softmax_temperature=100.0)
    assert config_lib.dual_softmax_settings(config.eval) == ("egovlp", 100.0)
    config_lib.validate(config, num_devices=8)
    # A config updates from another one (tests and notebooks do), which a reference would refuse.
    config_lib.default_config().update(config)
    for alias, mode in ((True, "sentences"), (False, "none")):  # what True / False meant
        tree = config.to_dict()
        tree["eval"]["dual_softmax"] = alias  # as a run saved it when the key was a boolean
        (tmp_path / "config.json").write_text(json.dumps(tree, default=list))
        saved = run_config.load(tmp_path)
        config_lib.validate(saved, num_devices=8)
        assert config_lib.dual_softmax_settings(saved.eval)[0] == mode
    # A run saved before the temperature key existed: its default.
    old = ml_collections.ConfigDict({k: v for k, v in config.eval.to_dict().items()
                                     if k != "dual_softmax_temperature"})
    assert config_lib.dual_softmax_settings(old) == ("egovlp", 500.0)
    for key, value, message in (("dual_softmax", "twice", r"one of \('none', 'egovlp', "
                                 r"'sentences'\) or a boolean"),
                                ("dual_softmax_temperature", 0.0, "> 0")):
        bad = config_lib.default_config()
        bad.eval[key] = value
        with pytest.raises(config_lib.ConfigError, match=f"eval.{key}: expected {message}"):
            config_lib.validate(bad, num_devices=8)
