"""Charades-Ego action recognition as retrieval: video-to-text mAP over the 157 classes.

    test video (whole, uniform frames) --video tower--> v (n, E)
    class names ("Holding some clothes", ...) --text tower--> t (157, E)
    scores = v @ t.T (n, 157)  ->  AP of each class over the videos  ->  mean

As EgoVLP computes it (showlab/EgoVLP 928406c, model/metric.py `charades_metrics` and `map`,
trainer/trainer_charades.py), which EVA02-AT reports too: a video with no action gets -inf in
every class (it ranks last everywhere, so it only adds nothing), and a class's AP is the mean of
the precision at each of its positives, ranked by score. A class with no positive video has no
AP: EgoVLP's mean would be NaN there (the real test split has positives for all 157), ours
leaves it out of the mean.

`evaluate` scores the prepared Charades-Ego data set's 'test' split (one whole-video clip per
video; `evaluators.dataset`: ``eval.charades_ego_dir`` or ``dataset_dir``) against the class
names as written after 'cNNN ' in Charades_v1_classes.txt (EgoVLP's run/test_charades.py takes
``line[0][5:]`` of a csv.reader row: the same text for a name without a comma), tokenised as
the text tower's rows. A video skipped at preparation is left out. The eval mode
also writes ``charades_ego_scores.npy``: the (videos, 157) cosines, rows in clip order.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from tempret_jax import atomic, embedding, evaluators
from tempret_jax.data import charades_ego, corpora, prepare, verify

CORPUS = corpora.CHARADES_EGO  # `evaluators.dataset`
SPLIT = "test"
SCORES = "charades_ego_scores.npy"


def class_map(scores, labels) -> float:
    """mAP in percent over the classes (columns) that have a positive.

    Args:
      scores: (n, C) float, each video's score for each class.
      labels: (n, C) bool, the classes each video shows.
    Returns:
      The mean over classes of AP = (1 / n_pos) sum over positives of precision at their rank;
      ties keep the videos' order (a stable sort).
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels (n, C) of the same shape expected, got "
                         f"{scores.shape} and {labels.shape}")
    scores = np.where(labels.any(axis=1, keepdims=True), scores, -np.inf)
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(labels, order, axis=0)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(scores) + 1)[:, None]
    positives = hits.sum(axis=0)
    present = positives > 0
    if not present.any():
        raise ValueError("no class has a positive video: mAP is undefined")
    ap = (precision * hits).sum(axis=0)[present] / positives[present]
    return 100.0 * float(ap.mean())


def read_labels(dataset_dir) -> charades_ego.CharadesEgoTable:
    """The test videos of a prepared Charades-Ego data set with their label sets and the class
    names (its annotation copies, checked against the digests taken at preparation)."""
    folder = pathlib.Path(dataset_dir) / prepare.ANNOTATIONS
    verify.check_copies(folder, CORPUS.split_files[SPLIT])
    return charades_ego.read_charades_ego(folder, SPLIT)


def evaluate(model, params, mesh, config, out: pathlib.Path | None = None) -> evaluators.Result:
    """Video-to-text mAP over the classes (module docstring). Returns scalar
    'charades_ego_mAP' (percent); record {'charades_ego': {'mAP', 'videos', 'classes'}}."""
    dataset_dir = evaluators.dataset(config, "charades_ego")
    table = read_labels(dataset_dir)
    clip_ids, video, text = embedding.embed_clips_and_texts(
        model, params, mesh, dataset_dir, SPLIT, [str(n) for n in table.class_names],
        **embedding.split_settings(config))
    scores = embedding.similarity(video, text)  # (videos, 157)
    labels = table.multi_hot()[clip_ids]
    m_ap = class_map(scores, labels)
    classes = int(labels.any(axis=0).sum())
    record = {"charades_ego": {"mAP": m_ap, "videos": int(len(clip_ids)), "classes": classes}}
    if out is not None and jax.process_index() == 0:
        with atomic.writer(out / SCORES, "wb") as f:
            np.save(f, scores)
    return evaluators.Result(
        record=record, scalars={"charades_ego_mAP": m_ap},
        table=f"Charades-Ego ({len(clip_ids)} videos, {classes} classes with a positive)\n"
              f"  video-to-text mAP {m_ap:6.2f} %")
