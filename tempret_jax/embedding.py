"""Embedding a prepared split with the dual encoder: clip and sentence features, unit embeddings.

    eval batches  --encode (sharded)--> clip features (n_clips, E) [V views: mean or sum]
    sentences     --encode-->           sentence features (n_sentences, E)
    features --[refine over the other modality's whole gallery]--> unit embeddings

What the evaluators and search share (`embed_split`, `Embedded`); `split_settings(config)`
turns ``config.eval`` / ``config.data`` into its keyword arguments. Padding rows of the
pipelines (mask False) are dropped. Every process gets the whole result (outputs are gathered
to all devices), so any process can score.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tempret_jax import config as config_lib
from tempret_jax import progress
from tempret_jax import metrics
from tempret_jax import sharding as sharding_lib
from tempret_jax.data import ek100, pipeline, prepare



def eval_views(eval_config) -> tuple[pipeline.View, ...]:
    """The views ``config.eval`` asks for: ``tta_views`` when ``tta``, else the centre crop."""
    if not eval_config.tta:
        return (pipeline.View(),)
    return tuple(pipeline.parse_view(s) for s in eval_config.tta_views)


# The jitted functions below are built once per (model, mesh, option) (lru_cache): a new
# closure per call would be traced and compiled again every time (search embeds one query per
# call).


def _gather_rows(mesh, jitted, params, batches: Iterable[dict], data_keys, id_key,
                 desc: str, total: int | None) -> dict:
    """Runs ``jitted(params, ids, mask, *data) -> ({name: (B, ...)}, ids, mask)`` on every batch,
    with a progress bar (``desc``) over ``total`` rows.

    Returns {name: (n, ...) numpy} plus 'ids' (n,), sorted by id, padding dropped. ``jitted``
    has replicated outputs, so every process holds every row.
    """
    outputs: dict[str, list] = {}
    with progress.bar(total, desc, unit=desc.split()[-1]) as rows:
        _run_batches(mesh, jitted, params, batches, data_keys, id_key, outputs, rows)
    result = {k: np.concatenate(v) for k, v in outputs.items()}
    order = np.argsort(result["ids"], kind="stable")
    return {k: v[order] for k, v in result.items()}


def _run_batches(mesh, jitted, params, batches, data_keys, id_key, outputs, rows) -> None:
    for batch in batches:
        local = {k: batch[k] for k in data_keys}
        local["id"] = np.asarray(batch[id_key], np.int32)
        local["mask"] = np.asarray(batch["mask"], bool)
        arrays = sharding_lib.global_batch(local, mesh)
        out, ids, mask = jitted(params, arrays["id"], arrays["mask"],
                                *(arrays[k] for k in data_keys))
        mask = np.asarray(mask)
        for name, value in {**out, "ids": ids}.items():
            outputs.setdefault(name, []).append(np.asarray(value)[mask])
        rows.update(int(mask.sum()))


def video_features(model, params, batches: Iterable[dict], mesh, *, reduce: str = "mean",
                   tokens: bool = False, total: int | None = None) -> dict:
    """Clip features of eval batches (`pipeline.eval_pipeline` or `clip_batches`).

    Args:
      model: a `RetrievalModel`; params: its parameters (sharded or not).
      batches: dicts with video (B, V, T, R, R, 3), mask (B,), clip_index (B,).
      reduce: how the V views combine: 'mean' | 'sum' -> (n, E); 'none' -> (n, V, E).
      tokens: also return the cross-encoder tokens of the first view.
      total: the number of clips, for the progress bar's ETA.
    Returns:
      {'features': (n_clips, E) float32 unnormalised, 'ids': (n_clips,) CSV rows (sorted),
       ['tokens': (n_clips, M, D_v) in the compute dtype]}.
    """
    if reduce not in config_lib.TTA_REDUCE + ("none",):
        raise ValueError(f"eval.tta_reduce: expected one of {config_lib.TTA_REDUCE}, got {reduce!r}")
    return _gather_rows(mesh, _video_fn(model, mesh, reduce, tokens), params, batches,
                        ("video",), "clip_index", "embedding clips", total)


@functools.lru_cache(maxsize=64)
def _video_fn(model, mesh, reduce: str, tokens: bool):
    def fn(params, ids, mask, video):
        b, v = video.shape[:2]
        out = model.apply({"params": params}, video.reshape((b * v,) + video.shape[2:]),
                          method=model.encode_video)
        features = out["features"].astype(jnp.float32).reshape(b, v, -1)
        features = {"mean": features.mean(axis=1), "sum": features.sum(axis=1),
                    "none": features}[reduce]
        result = {"features": features}
        if tokens:
            result["tokens"] = out["tokens"].reshape((b, v) + out["tokens"].shape[1:])[:, 0]
        return result, ids, mask

    return jax.jit(fn, out_shardings=sharding_lib.replicated(mesh))


def text_features(model, params, batches: Iterable[dict], mesh, *, tokens: bool = False,
                  total: int | None = None) -> dict:
    """Sentence features of sentence batches (`sentence_batches`); ``total`` sentences (for the
    progress bar).

    batches: dicts with tokens (B, 77), mask (B,), index (B,) position in the sentence list.
    Returns {'features': (n, E) float32 unnormalised, 'ids': (n,) positions (sorted),
    ['tokens': (n, 77, D_t) compute dtype, 'mask': (n, 77) bool real tokens]}.
    """
    return _gather_rows(mesh, _text_fn(model, mesh, tokens), params, batches, ("tokens",),
                        "index", "embedding sentences", total)


@functools.lru_cache(maxsize=64)
def _text_fn(model, mesh, tokens: bool):
    def fn(params, ids, mask, token_ids):
        out = model.apply({"params": params}, token_ids, method=model.encode_text)
        result = {"features": out["features"].astype(jnp.float32)}
        if tokens:
            result.update(tokens=out["tokens"], mask=out["mask"])
        return result, ids, mask

    return jax.jit(fn, out_shardings=sharding_lib.replicated(mesh))


def sentence_batches(texts: Sequence[str], global_batch_size: int,
                     process_index: int | None = None, process_count: int | None = None):
    """This process's batches of ``texts``: tokens (B, 77) int32, mask (B,), index (B,) position.

    Every process gets the same number of batches (`pipeline.padded_indices`).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"eval.batch_size {global_batch_size} is not divisible by the "
                              f"{process_count} JAX processes")
    batch = global_batch_size // process_count
    indices = pipeline.padded_indices(len(texts), batch, process_index, process_count)
    tokens = pipeline.tokenize([texts[i] for i in indices[indices >= 0]])
    padded = np.zeros((len(indices), pipeline.CONTEXT_LENGTH), np.int32)
    padded[indices >= 0] = tokens
    for start in range(0, len(indices), batch):
        index = indices[start:start + batch]
        yield {"tokens": padded[start:start + batch], "mask": index >= 0, "index": index}


def clip_batches(dataset_dir, split: str, global_batch_size: int, *, records=None,
                 num_frames: int, resolution: int, views, num_workers: int = 0,
                 dtype=np.float32):
    """Eval batches of a prepared split: every clip (`pipeline.eval_pipeline`), or only the
    records (positions in the split) listed in ``records``, with the same keys."""
    if records is None:
        return pipeline.eval_pipeline(dataset_dir, global_batch_size, split=split,
                                      num_frames=num_frames, resolution=resolution, views=views,
                                      num_workers=num_workers, dtype=dtype)
    import grain
    records = np.asarray(records, np.int64)
    count = jax.process_count()
    batch = global_batch_size // count
    positions = pipeline.padded_indices(len(records), batch, jax.process_index(), count)
    indices = np.where(positions >= 0, records[np.maximum(positions, 0)], -1)
    transform = pipeline.EvalTransform(pipeline.open_split(dataset_dir, split), num_frames,
                                       resolution, views, dtype)
    return grain.MapDataset.source(indices).map(transform).batch(batch).to_iter_dataset()


def embed(model, params, features: np.ndarray, gallery: np.ndarray, modality: str,
          chunk: int = 1024) -> np.ndarray:
    """Unit embeddings (n, E) of ``features`` (n, E); refinement (if the model has it) attends
    over ``gallery`` (G, E), the other modality's unnormalised features. Chunked over rows."""
    fn = _embed_fn(model, modality)
    n = len(features)
    chunk = min(chunk, max(n, 1))
    padded = np.zeros((-(-n // chunk) * chunk, features.shape[1]), np.float32)
    padded[:n] = features
    out = [np.asarray(fn(params, padded[i:i + chunk], gallery))
           for i in range(0, len(padded), chunk)]
    return np.concatenate(out)[:n]


@functools.lru_cache(maxsize=64)
def _embed_fn(model, modality: str):
    method = {"video": model.embed_video, "text": model.embed_text}[modality]
    gallery_key = {"video": "text_gallery", "text": "video_gallery"}[modality]

    def fn(params, x, gallery):
        return model.apply({"params": params}, x, **{gallery_key: gallery}, method=method)

    return jax.jit(fn)


def similarity(video: np.ndarray, text: np.ndarray) -> np.ndarray:
    """video (n_videos, E), text (n_texts, E) unit embeddings -> (n_videos, n_texts) float32."""
    return np.matmul(np.asarray(video, np.float32), np.asarray(text, np.float32).T)


def split_relevance(clips: ek100.ClipTable, sentences: ek100.SentenceTable,
                    clip_rows: np.ndarray) -> np.ndarray:
    """Relevance (len(clip_rows), n_sentences) of the prepared clips (CSV rows ``clip_rows``;
    clips skipped at preparation are absent) against every sentence of the split."""
    return ek100.relevance_by_keys(clips.labels().take(np.asarray(clip_rows)),
                                   sentences.labels(clips))



# ---------------------------------------------------------------------------------------------
# Embedding a split.


@dataclasses.dataclass
class Embedded:
    """A split embedded by the dual encoder, with what reranking needs.

    video, text: (n_clips, E), (n_sentences, E) unit embeddings; video_features,
    text_features: the unnormalised ones; clip_rows (n_clips,): CSV rows of the prepared clips;
    sentence_rows (n_sentences,): rows of the sentence file; rel (n_clips, n_sentences);
    video_tokens (n_clips, M, D_v), text_tokens (n_sentences, L, D_t), text_mask
    (n_sentences, L): cached tower outputs (None unless asked for; L trimmed to the longest
    sentence).
    """

    video: np.ndarray
    text: np.ndarray
    video_features: np.ndarray
    text_features: np.ndarray
    clip_rows: np.ndarray
    sentence_rows: np.ndarray
    rel: np.ndarray
    video_tokens: np.ndarray | None = None
    text_tokens: np.ndarray | None = None
    text_mask: np.ndarray | None = None

    def similarity(self, dual_softmax: bool = False) -> np.ndarray:
        """(n_clips, n_sentences) cosine similarity, or its dual-softmax re-scoring."""
        sim = similarity(self.video, self.text)
        return metrics.dual_softmax(sim).astype(np.float32) if dual_softmax else sim


def embed_split(model, params, mesh, dataset_dir, *, split: str = "test", batch_size: int = 64,
                num_frames: int = 16, resolution: int = 224, views=(pipeline.View(),),
                reduce: str = "mean", num_workers: int = 0, dtype=np.float32,
                chunk: int = 1024, tokens: bool = False, records=None,
                only_hit_sentences: bool = False) -> Embedded:
    """Embeds the clips and sentences of a prepared split (see `Embedded`).

    Args:
      batch_size: global eval batch (a multiple of the process count and of the mesh's batch
        devices).
      views, reduce: test-time views and how their features combine ('mean' | 'sum').
      tokens: keep the towers' token outputs (for reranking).
      records: only these records (positions in the prepared split), e.g. a held-out sample.
      only_hit_sentences: only the sentences that are a hit (rel == 1) for one of the clips
        (a sample's own sentences), else every sentence of the split.
    """
    videos = video_features(model, params, clip_batches(
        dataset_dir, split, batch_size, records=records, num_frames=num_frames,
        resolution=resolution, views=views, num_workers=num_workers, dtype=dtype),
        mesh, reduce=reduce, tokens=tokens,
        total=len(pipeline.open_split(dataset_dir, split) if records is None else records))
    clip_table, sentence_table = prepare.load_annotations(dataset_dir, split)
    rel = split_relevance(clip_table, sentence_table, videos["ids"])
    sentence_rows = (np.flatnonzero((rel == 1).any(axis=0)) if only_hit_sentences
                     else np.arange(len(sentence_table)))
    texts = text_features(model, params, sentence_batches(
        [str(sentence_table.narration[i]) for i in sentence_rows], batch_size), mesh,
        tokens=tokens, total=len(sentence_rows))
    v, t = videos["features"], texts["features"]
    out = Embedded(video=embed(model, params, v, t, "video", chunk),
                   text=embed(model, params, t, v, "text", chunk), video_features=v,
                   text_features=t, clip_rows=videos["ids"], sentence_rows=sentence_rows,
                   rel=rel[:, sentence_rows])
    if tokens:
        length = max(1, int(texts["mask"].sum(axis=1).max()))  # the rest is padding
        out.video_tokens = videos["tokens"]
        out.text_tokens = texts["tokens"][:, :length]
        out.text_mask = texts["mask"][:, :length]
    return out


def split_settings(config) -> dict:
    """`embed_split` keyword arguments from ``config.eval`` / ``config.data``."""
    e, d = config.eval, config.data
    return dict(batch_size=e.batch_size, num_frames=d.num_frames, resolution=d.resolution,
                views=eval_views(e), reduce=e.tta_reduce, num_workers=e.num_workers,
                dtype=np.dtype(d.dtype), chunk=e.chunk)
