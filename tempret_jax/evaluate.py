"""Embedding a prepared split and scoring it: the evaluation core shared by training and tools.

    eval pipeline batches --encode (sharded, batched)--> video features (n_clips, E), CSV order
    sentence batches      --encode-->                    text features (n_sentences, E)
    features --[refine over the other modality's whole gallery]--> unit embeddings
    similarity = video @ text.T  (n_clips, n_sentences)  --metrics.mir_metrics--> mAP / nDCG

Test-time views (flip, scales) are averaged in feature space, before refinement and
normalisation. Padding rows of the pipelines (mask False) are dropped. Every process gets the
whole result (the encoders' outputs are gathered to all devices), so any process can score.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from tempret_jax import metrics
from tempret_jax import sharding as sharding_lib
from tempret_jax.data import ek100, pipeline, prepare


def _gather_rows(mesh, fn, params, batches: Iterable[dict], data_keys, id_key):
    """Runs ``fn(params, *data)`` on every batch; returns (outputs (n, ...), ids (n,)) sorted
    by id, padding dropped. ``fn`` is jitted with replicated outputs."""
    out_sharding = sharding_lib.replicated(mesh)
    jitted = jax.jit(fn, out_shardings=(out_sharding,) * 3)
    outputs, ids = [], []
    for batch in batches:
        local = {k: batch[k] for k in data_keys}
        local["id"] = np.asarray(batch[id_key], np.int32)
        local["mask"] = np.asarray(batch["mask"], bool)
        arrays = sharding_lib.global_batch(local, mesh)
        y, i, m = jitted(params, arrays["id"], arrays["mask"], *(arrays[k] for k in data_keys))
        m = np.asarray(m)
        outputs.append(np.asarray(y)[m])
        ids.append(np.asarray(i)[m])
    outputs, ids = np.concatenate(outputs), np.concatenate(ids)
    order = np.argsort(ids, kind="stable")
    return outputs[order], ids[order]


def video_features(model, params, batches: Iterable[dict], mesh):
    """Unnormalised clip features of an eval pipeline (`pipeline.eval_pipeline`).

    Args:
      model: a `RetrievalModel`; params: its parameters (sharded or not).
      batches: dicts with video (B, V, T, R, R, 3), mask (B,), clip_index (B,).
    Returns:
      (features (n_clips, E) float32, clip_index (n_clips,) int32) sorted by CSV row.
    """
    def fn(params, ids, mask, video):
        b, v = video.shape[:2]
        out = model.apply({"params": params}, video.reshape((b * v,) + video.shape[2:]),
                          method=model.encode_video)
        features = out["features"].astype(jnp.float32).reshape(b, v, -1).mean(axis=1)
        return features, ids, mask

    return _gather_rows(mesh, fn, params, batches, ("video",), "clip_index")


def text_features(model, params, batches: Iterable[dict], mesh):
    """Unnormalised sentence features of a sentence pipeline (`pipeline.sentence_pipeline`).

    batches: dicts with tokens (B, 77), mask (B,), index (B,) row in the sentence file.
    Returns (features (n_sentences, E) float32, row (n_sentences,) int32) in file order.
    """
    def fn(params, ids, mask, tokens):
        out = model.apply({"params": params}, tokens, method=model.encode_text)
        return out["features"].astype(jnp.float32), ids, mask

    return _gather_rows(mesh, fn, params, batches, ("tokens",), "index")


def embed(model, params, features: np.ndarray, gallery: np.ndarray, modality: str,
          chunk: int = 1024) -> np.ndarray:
    """Unit embeddings (n, E) of ``features`` (n, E); refinement (if the model has it) attends
    over ``gallery`` (G, E), the other modality's unnormalised features. Chunked over rows."""
    method = {"video": model.embed_video, "text": model.embed_text}[modality]
    gallery_key = {"video": "text_gallery", "text": "video_gallery"}[modality]

    @jax.jit
    def fn(params, x, gallery):
        return model.apply({"params": params}, x, **{gallery_key: gallery}, method=method)

    n = len(features)
    chunk = min(chunk, max(n, 1))
    padded = np.zeros((-(-n // chunk) * chunk, features.shape[1]), np.float32)
    padded[:n] = features
    out = [np.asarray(fn(params, padded[i:i + chunk], gallery))
           for i in range(0, len(padded), chunk)]
    return np.concatenate(out)[:n]


def similarity(video: np.ndarray, text: np.ndarray) -> np.ndarray:
    """video (n_videos, E), text (n_texts, E) unit embeddings -> (n_videos, n_texts) float32."""
    return np.matmul(np.asarray(video, np.float32), np.asarray(text, np.float32).T)


def split_relevance(dataset_dir, split: str, clip_rows: np.ndarray) -> np.ndarray:
    """Relevance (len(clip_rows), n_sentences) of the prepared clips (CSV rows ``clip_rows``,
    clips skipped at preparation are absent) against every sentence of the split."""
    clips, sentences = prepare.load_annotations(dataset_dir, split)
    return ek100.relevance_by_keys(clips.labels().take(np.asarray(clip_rows)),
                                   sentences.labels(clips))


def evaluate_split(model, params, mesh, dataset_dir, *, split: str = "test",
                   batch_size: int = 64, num_frames: int = 16, resolution: int = 224,
                   views=(pipeline.View(),), num_workers: int = 0, dtype=np.float32,
                   chunk: int = 1024) -> dict:
    """Embeds every clip and sentence of a prepared split and scores them.

    Args:
      batch_size: global eval batch (a multiple of the process count).
    Returns:
      {'metrics': mir_metrics (percent), 'similarity': (n_clips, n_sentences) float32,
       'clip_rows': (n_clips,) CSV rows of the similarity's rows}.
    """
    videos = pipeline.eval_pipeline(dataset_dir, batch_size, split=split, num_frames=num_frames,
                                    resolution=resolution, views=views, num_workers=num_workers,
                                    dtype=dtype)
    texts = pipeline.sentence_pipeline(dataset_dir, batch_size, split=split)
    v_feat, clip_rows = video_features(model, params, videos, mesh)
    t_feat, _ = text_features(model, params, texts, mesh)
    sim = similarity(embed(model, params, v_feat, t_feat, "video", chunk),
                     embed(model, params, t_feat, v_feat, "text", chunk))
    rel = split_relevance(dataset_dir, split, clip_rows)
    return {"metrics": metrics.mir_metrics(sim, rel), "similarity": sim, "clip_rows": clip_rows}
