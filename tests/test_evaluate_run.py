"""The evaluation of a trained run: TTA views and their reduction follow the config, dual-softmax
is the formula of docs/design.md in both forms, reranking with alpha = 0 is the dual encoder's
ranking and otherwise reorders the top-K by s + alpha * P(match), the eval mode writes every
output, and a missing checkpoint or a run of another config is a clear error."""

import html.parser
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tempret_jax import checkpoint, config as config_lib, embedding, evaluate, metrics, rerank
from tempret_jax import state
from tempret_jax.evaluators import ek100_mir
from tempret_jax.data import pipeline, prepare, views
from trained_run import load_config, trained_run

REPO = pathlib.Path(__file__).parent.parent


@pytest.fixture
def run(tmp_path_factory):
    """(a fresh copy of the config, workdir) of the run trained once (tests/trained_run.py)."""
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    config, workdir = trained_run(tmp_path_factory)
    setup = state.TrainSetup(config)
    params, step = setup.load_eval_params(workdir, expect_config=config.name)
    assert step == 4
    return setup.model, params, setup.mesh


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, loaded):
    config, _ = trained_run(tmp_path_factory)
    return embedding.embed_split(*loaded, config.dataset_dir, tokens=True,
                                 **embedding.split_settings(config))


def _video_batches(config, views):
    return pipeline.eval_pipeline(config.dataset_dir, 8, num_frames=4, resolution=32,
                                  views=views, process_index=0, process_count=1)


# ---------------------------------------------------------------------------------------------
# Test-time augmentation.


def test_view_specs_parse_and_tta_switches_them_on(run):
    config, _ = run
    assert views.parse_view("scale=0.875+flip") == pipeline.View(scale=0.875, flip=True)
    assert embedding.eval_views(config.eval) == (pipeline.View(),)
    config.eval.tta = True
    assert embedding.eval_views(config.eval) == views.TTA_VIEWS
    config.eval.tta_views = ("flip",)
    assert embedding.eval_views(config.eval) == (pipeline.View(flip=True),)
    for bad in ("mirror", "scale=0", "scale=big"):
        config.eval.tta_views = ("orig", bad)
        with pytest.raises(config_lib.ConfigError, match=f"eval.tta_views: '{bad}'"):
            config_lib.validate(config, num_devices=8)


def test_each_view_changes_the_features_and_the_reduction_follows_the_config(run, loaded):
    config, _ = run
    model, params, mesh = loaded
    distinct, weights = embedding.distinct_views(views.TTA_VIEWS)
    per_view = embedding.video_features(model, params, _video_batches(config, distinct),
                                       mesh, reduce="none")["features"]
    n, v, _ = per_view.shape
    assert v == 4
    for a in range(v):
        for b in range(a + 1, v):
            assert not np.allclose(per_view[:, a], per_view[:, b], atol=1e-4), (a, b)
    plain = embedding.video_features(model, params, _video_batches(config, (pipeline.View(),)),
                                    mesh)["features"]
    np.testing.assert_allclose(per_view[:, 0], plain, rtol=1e-5, atol=1e-6)
    got = embedding.video_features(model, params, _video_batches(config, distinct), mesh)
    np.testing.assert_allclose(got["features"], per_view.mean(1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="reduce"):
        embedding.video_features(model, params, [], mesh, reduce="sum")

    # The split with the paper's views: the mean of each view's unit embedding (1.0x counted
    # twice), not renormalised; 'features_mean' embeds the mean feature instead.
    unit = per_view / np.linalg.norm(per_view, axis=2, keepdims=True)
    settings = {**embedding.split_settings(config), "views": views.TTA_VIEWS}
    for reduce, video, gallery in (
            ("embeddings_mean", (unit * (weights / 5)[:, None]).sum(1), per_view[:, 0]),
            ("features_mean", None, (per_view * (weights / 5)[:, None]).sum(1))):
        embedded = embedding.embed_split(model, params, mesh, config.dataset_dir,
                                         **{**settings, "reduce": reduce})
        if video is None:
            video = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        np.testing.assert_allclose(embedded.video, video, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(embedded.video_features, gallery, rtol=1e-4, atol=1e-5)
    assert np.all(np.linalg.norm(unit.mean(1), axis=1) < 1)


# ---------------------------------------------------------------------------------------------
# Scoring.


def _numpy_dual_softmax(sim, temperature=500.0):
    """docs/design.md, Metrics, written out: S = texts x videos; softmax(S / t over videos) * S; softmax
    over texts."""
    s = sim.T.astype(np.float64)
    out = np.empty_like(s)
    for i in range(s.shape[0]):
        w = np.exp(s[i] / temperature)
        out[i] = w / w.sum() * s[i]
    for j in range(s.shape[1]):
        w = np.exp(out[:, j])
        out[:, j] = w / w.sum()
    return out.T


def test_dual_softmax_equals_the_numpy_formula(run, embedded):
    sim = embedded.similarity()
    np.testing.assert_allclose(sim, embedded.video @ embedded.text.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedded.similarity("sentences"), _numpy_dual_softmax(sim),
                               rtol=1e-5, atol=1e-7)
    # EgoVLP's: a text row per clip (its narration's raw features; no refinement here), raw dot
    # products with the clips' raw features, the sentences' columns by narration_id.
    config, _ = run
    clips, sentences = prepare.load_annotations(config.dataset_dir, "test")
    row_of = {t: i for i, t in reversed(list(enumerate(embedding.text_rows(
        embedding.sentence_texts(clips, sentences, embedded.sentence_rows),
        list(clips.narration[embedded.clip_rows]))[0])))}
    text_rows = embedded.text_raw[[row_of[t] for t in clips.narration[embedded.clip_rows]]]
    np.testing.assert_allclose(embedded.video_raw, embedded.video_features)  # one view
    egovlp = _numpy_dual_softmax(embedded.video_raw @ text_rows.T)
    indexes = [list(clips.narration_id[embedded.clip_rows]).index(nid)
               for nid in sentences.narration_id]
    np.testing.assert_allclose(embedded.similarity("egovlp"), egovlp[:, indexes], rtol=1e-4,
                               atol=1e-7)


def test_the_periodic_evaluation_reports_the_scalars_the_config_declares(run, loaded):
    config, _ = run
    model, params, mesh = loaded
    result = ek100_mir.evaluate(model, params, mesh, config)
    assert tuple(result.scalars) == config_lib.EVALUATORS["ek100_mir"]
    assert set(result.record) == {"mAP", "nDCG"}
    assert result.scalars["mAP_avg"] == result.record["mAP"]["avg"]


def test_the_evaluation_forced_onto_the_devices_reports_the_hosts_metrics(run, loaded):
    config, _ = run
    results = {}
    for backend in ("host", "device"):
        config.eval.metrics_backend = backend
        results[backend] = ek100_mir.evaluate(*loaded, config).scalars
    assert results["device"] == pytest.approx(results["host"], abs=1e-4)


def test_embedded_split_covers_every_prepared_clip_and_sentence(run, embedded):
    config, _ = run
    clips, sentences = prepare.load_annotations(config.dataset_dir, "test")
    assert embedded.video.shape[0] == len(pipeline.open_split(config.dataset_dir, "test"))
    np.testing.assert_array_equal(embedded.sentence_rows, np.arange(len(sentences)))
    np.testing.assert_allclose(np.linalg.norm(embedded.video, axis=1), 1, atol=1e-5)
    assert embedded.rel.shape == (len(embedded.clip_rows), len(sentences))
    assert embedded.text_tokens.shape[1] == embedded.text_mask.shape[1] < 77  # padding trimmed


# ---------------------------------------------------------------------------------------------
# Reranking.


def test_itm_scores_are_the_cross_encoder_on_each_query_candidate_pair(run, loaded, embedded):
    config, _ = run
    model, params, mesh = loaded
    sim = embedded.similarity()
    k = 3
    full = embedding.text_features(model, params, embedding.sentence_batches(
        list(prepare.load_annotations(config.dataset_dir, "test")[1].narration), 8, 0, 1), mesh,
        tokens=True)  # untrimmed 77 tokens: trimming the padding must not change a score
    for direction in rerank.DIRECTIONS:
        cands = rerank.top_k(sim, k, direction)
        got = rerank.itm_scores(model, params, mesh, embedded, cands, direction, batch_size=1)
        for q in range(len(cands)):
            for j, c in enumerate(cands[q]):
                t, v = (q, c) if direction == "t2v" else (c, q)
                logit = model.apply({"params": params}, full["tokens"][t], full["mask"][t],
                                    embedded.video_tokens[v], method=model.score_pairs)
                assert got[q, j] == pytest.approx(float(1 / (1 + np.exp(-logit))), abs=1e-5)


def _ranking(matrix, direction):
    rows = matrix.T if direction == "t2v" else matrix
    return np.argsort(-rows, axis=1, kind="stable")


def test_rerank_with_alpha_zero_is_the_dual_encoder_ranking(run, loaded, embedded):
    sim = embedded.similarity()
    sim[0, 1] = sim[0, 2]  # a tie: the smaller index must stay first
    reranker = rerank.Reranker.score(*loaded, embedded, sim, k=3, batch_size=2)
    for k in (1, 2, 3):
        matrices = reranker.matrices(alpha=0.0, k=k)
        for d in rerank.DIRECTIONS:
            np.testing.assert_array_equal(_ranking(matrices[d], d), _ranking(sim, d))
        assert reranker.metrics(0.0, k) == metrics.mir_metrics(sim, embedded.rel)


def test_rerank_orders_the_top_k_by_dual_plus_alpha_itm_and_keeps_the_rest(loaded, embedded):
    sim = embedded.similarity()
    k, alpha = 2, 5.0
    reranker = rerank.Reranker.score(*loaded, embedded, sim, k=k)
    for d in rerank.DIRECTIONS:
        dual = _ranking(sim, d)
        got = _ranking(reranker.matrices(alpha, k)[d], d)
        scores = (sim.T if d == "t2v" else sim)
        for q in range(len(dual)):
            top = dual[q, :k]
            new = scores[q, top] + alpha * reranker.itm[d][q, :k]
            np.testing.assert_array_equal(got[q, :k], top[np.argsort(-new, kind="stable")])
            np.testing.assert_array_equal(got[q, k:], dual[q, k:])


def test_the_sweep_picks_the_best_k_and_alpha(loaded, embedded):
    reranker = rerank.Reranker.score(*loaded, embedded, embedded.similarity(), k=4)
    (k, best), results = reranker.sweep([0.0, 1.0, 10.0], ks=(2, 4))
    assert set(results) == {2, 4} and set(results[2]) == {0.0, 1.0, 10.0}
    assert results[k][best] == max(v for row in results.values() for v in row.values())
    assert results[k][best] == reranker.metrics(best, k)["mAP"]["avg"]


# ---------------------------------------------------------------------------------------------
# The entry point and its outputs.


class _Html(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.images = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in ("meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag


def test_run_writes_metrics_similarity_submission_plots_and_gallery(run, tmp_path):
    config, workdir = run
    config.eval.update(tta=True, dual_softmax="egovlp")
    config.data.holdout_clips = 4
    config.eval.rerank.update(k=2, alphas=(0.0, 1.0), ks=(1, 2), curve_ks=(1, 2, 3))
    record = evaluate.run(config, workdir)
    out = workdir / "eval"
    written = json.loads((out / "metrics.json").read_text())
    assert written["step"] == 4 and written["views"] == 5 and written["dual_softmax"] == "egovlp"
    assert written["mAP"] == pytest.approx(record["mAP"])
    assert written["rerank"]["alpha"] in (0.0, 1.0) and written["rerank"]["k"] in (1, 2)
    assert set(written["rerank"]["sweep"]) == {"1", "2"}
    assert set(written["rerank"]["map_by_k"]) == {"1", "2", "3"}
    assert set(written["timings_s"]) >= {"embedding", "scoring", "reranking", "metrics"}

    clips, sentences = prepare.load_annotations(config.dataset_dir, "test")
    sim = np.load(out / "similarity.npy")
    assert sim.shape == (record["clips"], len(sentences))
    assert len(sim) == len(clips)  # SynthKitchens: no clip skipped at preparation
    rel = embedding.split_relevance(clips, sentences, np.arange(len(clips)))
    assert metrics.mir_metrics(sim, rel)["mAP"] == pytest.approx(record["mAP"])
    submission = metrics.read_submission(out / "submission.pkl", clips.narration_id,
                                         sentences.narration_id)
    np.testing.assert_array_equal(submission["sim_mat"], sim)
    assert submission["vis_ids"] == list(clips.narration_id)

    for name in ("verb_ap.png", "rerank_curve.png", "training_curves.png", "eval_curves.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    page = _Html()
    page.feed((out / "gallery.html").read_text())
    n_clips, n_sentences = sim.shape
    assert len(page.images) == n_sentences * min(5, n_clips) + min(20, n_clips)
    assert all(src.startswith("data:image/jpeg;base64,") for src in page.images)
    assert page.stack == []
    assert json.loads((out / "config.json").read_text())["name"] == config.name


def test_the_eval_mode_prints_the_table_and_writes_eval(run, tmp_path):
    config, workdir = run
    result = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--mode", "eval", "--config",
         "configs/synthetic.py:test", "--workdir", str(workdir), "--step", "2",
         f"--config.dataset_dir={config.dataset_dir}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "step 2" in result.stdout and "mAP" in result.stdout and "nDCG" in result.stdout
    assert json.loads((workdir / "eval" / "metrics.json").read_text())["step"] == 2


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--mode", "eval", "--config",
         "configs/synthetic.py:test", "--workdir", str(tmp_path), "--config.dataset_dir",
         str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (f"error: no checkpoint in {tmp_path / 'checkpoints'}: "
                                              f"train the run first")


def test_a_run_of_another_config_or_step_is_a_clear_error(run):
    config, workdir = run
    other = load_config("mean,test")
    with pytest.raises(checkpoint.CheckpointError,
                       match=f"holds a run of config '{config.name}', but the config "
                             f"given is '{other.name}'"):
        evaluate.run(other, workdir)
    with pytest.raises(checkpoint.CheckpointError,
                       match="has no checkpoint step 3; it has \\[2, 4\\]"):
        evaluate.run(config, workdir, step=3)


def test_a_converted_checkpoint_is_evaluated_with_its_parameters(run, loaded, tmp_path):
    config, _ = run
    _, params, _ = loaded
    checkpoint.save_params(tmp_path / "converted", params)
    again, step = state.TrainSetup(config).load_eval_params(tmp_path / "converted")
    assert step == -1
    for key, value in checkpoint.flatten(params).items():
        np.testing.assert_array_equal(np.asarray(checkpoint.flatten(again)[key]),
                                      np.asarray(value))
    record = evaluate.run(config, tmp_path, checkpoint=str(tmp_path / "converted"))
    assert record["step"] == -1 and record["checkpoint"] == str(tmp_path / "converted")
    assert record["mAP"] == json.loads((tmp_path / "eval" / "metrics.json").read_text())["mAP"]


def test_rerank_without_a_cross_encoder_names_the_key(run):
    config, workdir = run
    config.model.cross_encoder.enabled = False
    config.eval.rerank.k = 5
    with pytest.raises(config_lib.ConfigError, match="eval.rerank.k: expected 0 without a "
                                                     "cross-encoder"):
        evaluate.run(config, workdir)
