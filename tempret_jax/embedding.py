"""Embedding a prepared split with the dual encoder: clip and sentence features, unit embeddings.

    eval batches  --encode (sharded)--> clip features (n_clips, V views, D_v)
    sentences     --encode-->           sentence features (n_sentences, D_t)
    features --[refine over the other modality's whole gallery]--> unit embeddings
    V views --mean of the views' unit embeddings (or: embed the mean feature)--> (n_clips, E)

Test-time views and their aggregation, and the sentences' text (each sentence's clip's own
narration): docs/design.md, Test-time augmentation and Sentence text.

What the evaluators and search share (`embed_split`, `Embedded`); `split_settings(config)`
turns ``config.eval`` / ``config.data`` into its keyword arguments. Padding rows of the
pipelines (mask False) are dropped. Every process gets the whole result (outputs are gathered
to all devices), so any process can score.
"""

from __future__ import annotations

import collections
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
from tempret_jax.data import ek100, pipeline, prepare, views as views_lib
from tempret_jax.data.text_tokens import TextTokenizer


def eval_views(eval_config) -> tuple[views_lib.View, ...]:
    """The views ``config.eval`` asks for: ``tta_views`` when ``tta``, else the centre crop."""
    if not eval_config.tta:
        return (views_lib.View(),)
    return tuple(views_lib.parse_view(s) for s in eval_config.tta_views)


def distinct_views(views) -> tuple[tuple[views_lib.View, ...], np.ndarray]:
    """(the distinct views: the centre crop first when listed, the rest as first listed; (V,)
    float32 how often each is listed). A view listed twice (CR-CLIP's 1.0x beside the
    original) is computed once and weighs twice. The first view gives the video gallery
    (`combine_views`) and the cross-encoder tokens."""
    distinct = sorted(dict.fromkeys(views), key=lambda v: v != views_lib.View())  # stable
    return tuple(distinct), np.asarray([list(views).count(v) for v in distinct], np.float32)


def view_mean(per_view: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, V, D) -> (n, D): the mean over the views, weighted by ``weights`` (V,)."""
    return np.einsum("nvd,v->nd", per_view, (weights / weights.sum()).astype(np.float32))


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
        with jax.set_mesh(mesh):  # per-shard attention kernels (models/attention.py) see it
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
      reduce: 'mean' -> the mean over the V views (n, D_v); 'none' -> each view's (n, V, D_v).
      tokens: also return the cross-encoder tokens of the first view.
      total: the number of clips, for the progress bar's ETA.
    Returns:
      {'features': (n_clips, [V,] D_v) float32 unnormalised, 'ids': (n_clips,) CSV rows
       (sorted), ['tokens': (n_clips, M, D_v) in the compute dtype]}.
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"video_features: reduce is 'mean' or 'none', got {reduce!r}")
    return _gather_rows(mesh, video_fn(model, mesh, reduce, tokens), params, batches,
                        ("video",), "clip_index", "embedding clips", total)


@functools.lru_cache(maxsize=64)
def video_fn(model, mesh, reduce: str, tokens: bool):
    """The jitted clip embedding of `video_features`: (params, ids (B,), mask (B,), video
    (B, V, T, R, R, 3)) -> ({'features': (B, [V,] D_v)}, ids, mask); also AOT-compiled (aot)."""
    def fn(params, ids, mask, video):
        b, v = video.shape[:2]
        out = model.apply({"params": params}, video.reshape((b * v,) + video.shape[2:]),
                          method=model.encode_video)
        features = out["features"].astype(jnp.float32).reshape(b, v, -1)
        features = features.mean(axis=1) if reduce == "mean" else features
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
    return _gather_rows(mesh, text_fn(model, mesh, tokens), params, batches, ("tokens",),
                        "index", "embedding sentences", total)


@functools.lru_cache(maxsize=64)
def text_fn(model, mesh, tokens: bool):
    """The jitted sentence embedding of `text_features`: (params, ids (B,), mask (B,), tokens
    (B, L)) -> ({'features': (B, E)}, ids, mask); also AOT-compiled (aot)."""
    def fn(params, ids, mask, token_ids):
        out = model.apply({"params": params}, token_ids, method=model.encode_text)
        result = {"features": out["features"].astype(jnp.float32)}
        if tokens:
            result.update(tokens=out["tokens"], mask=out["mask"])
        return result, ids, mask

    return jax.jit(fn, out_shardings=sharding_lib.replicated(mesh))


def sentence_batches(texts: Sequence[str], global_batch_size: int,
                     process_index: int | None = None, process_count: int | None = None,
                     tokenize: TextTokenizer = TextTokenizer()):
    """This process's batches of ``texts``: tokens (B, L) int32 (``tokenize``'s rows), mask
    (B,), index (B,) position.

    Every process gets the same number of batches (`pipeline.padded_indices`).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"eval.batch_size {global_batch_size} is not divisible by the "
                              f"{process_count} JAX processes")
    batch = global_batch_size // process_count
    indices = pipeline.padded_indices(len(texts), batch, process_index, process_count)
    tokens = tokenize([texts[i] for i in indices[indices >= 0]])
    padded = np.zeros((len(indices), tokenize.context_length), np.int32)
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
# Sentence text and view aggregation.


def sentence_texts(clips: ek100.ClipTable, sentences: ek100.SentenceTable,
                   rows: Sequence[int]) -> list[str]:
    """The text embedded for each sentence row: the narration of the clip that the sentence
    names by narration_id, as the official evaluations embed it (AVION
    main_lavila_finetune_mir.py, SMS-Loss test_mir.py, EgoVLP test_epic.py: every clip's
    narration, sentence columns picked by narration_id); the sentence file's own text only for
    a narration_id that is no clip of ``clips``. Six EK-100 test sentences differ
    (docs/design.md, Sentence text)."""
    index = clips.index()
    return [str(clips.narration[index[nid]]) if nid in index else str(sentences.narration[i])
            for i, nid in ((int(i), str(sentences.narration_id[i])) for i in rows)]


def text_rows(sentences: Sequence[str], narrations: Sequence[str]
              ) -> tuple[list[str], np.ndarray]:
    """(texts, counts): the texts to embed and their weights in EgoVLP's softmax over texts.

    texts: ``sentences`` (in order), then the clips' ``narrations`` that no sentence has (sorted;
    none on EK-100's test split); counts (n_texts,) float64: how many clips narrate the text, on
    its first row (at least 1: a sentence no clip narrates stands once), 0 on a repeat.
    """
    texts = list(sentences) + sorted(set(narrations) - set(sentences))
    per_text = collections.Counter(narrations)
    first = {text: i for i, text in reversed(list(enumerate(texts)))}
    counts = np.zeros(len(texts))
    for text, i in first.items():
        counts[i] = max(per_text[text], 1)
    return texts, counts


def combine_views(model, params, per_view: np.ndarray, weights: np.ndarray,
                  text_gallery: np.ndarray, reduce: str, chunk: int = 1024
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The clips' scoring embeddings from their views' features, and the video gallery.

    Args:
      per_view: (n, V, D_v) features of the distinct views, weights (V,) how often each is
        listed (`distinct_views`: the centre crop first when listed).
      text_gallery: (G, D_t) the sentences' unrefined features (video refinement attends over).
      reduce: 'embeddings_mean': each view refined, projected and normalised on its own, then
        the weighted mean of those unit vectors, not renormalised (the SMS-Loss code sums them:
        the same up to a factor); the gallery is the centre view's features (the first view's
        when the centre crop is not listed). 'features_mean': the weighted mean of the
        features, embedded once, and it is the gallery.
    Returns:
      (video (n, E) float32, video gallery (n, D_v): the unrefined features that text
      refinement attends over).
    """
    if reduce not in config_lib.TTA_REDUCE:
        raise ValueError(f"eval.tta_reduce: expected one of {config_lib.TTA_REDUCE}, "
                         f"got {reduce!r}")
    if reduce == "features_mean":
        mean = view_mean(per_view, weights)
        return embed(model, params, mean, text_gallery, "video", chunk), mean
    embedded = [embed(model, params, per_view[:, k], text_gallery, "video", chunk)
                for k in range(len(weights))]
    return view_mean(np.stack(embedded, axis=1), weights), per_view[:, 0]


# ---------------------------------------------------------------------------------------------
# Embedding a split.


@dataclasses.dataclass
class Embedded:
    """A split embedded by the dual encoder, with what scoring and reranking need.

    video, text: (n_clips, E), (n_sentences, E) the scoring embeddings (unit vectors; with
    several views the mean of unit vectors, `combine_views`); video_features (n_clips, D_v):
    the video gallery of text refinement and search (the centre view's unnormalised features,
    or their mean under 'features_mean'); text_features (n_sentences, D_t) unnormalised;
    clip_rows (n_clips,): CSV rows of the prepared clips; sentence_rows (n_sentences,): rows of
    the sentence file; rel (n_clips, n_sentences);
    video_raw (n_clips, E), text_raw (n_texts, E), text_counts (n_texts,): EgoVLP's
    dual-softmax inputs, the embeddings before normalisation (the towers' features, the views'
    mean; a model with refinement exposes only its unit embeddings, which stand in) of the
    clips and of `text_rows` (the sentences first) with their counts;
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
    video_raw: np.ndarray
    text_raw: np.ndarray
    text_counts: np.ndarray
    video_tokens: np.ndarray | None = None
    text_tokens: np.ndarray | None = None
    text_mask: np.ndarray | None = None

    def similarity(self, dual_softmax: str = "none", temperature: float = 500.0) -> np.ndarray:
        """(n_clips, n_sentences) float32 scores (docs/design.md, Metrics).

        dual_softmax: 'none': video @ text.T; 'sentences': its `metrics.dual_softmax` over the
        split's sentences; 'egovlp': EgoVLP's (run/test_epic.py): the raw dot products of
        video_raw with every text_raw row, dual-softmax with each text counted once per clip
        that narrates it (as EgoVLP's rows, one per clip), then the sentences' columns.
        """
        if dual_softmax == "egovlp":
            sim = metrics.dual_softmax(similarity(self.video_raw, self.text_raw), temperature,
                                       self.text_counts)
            return sim[:, :len(self.sentence_rows)].astype(np.float32)
        sim = similarity(self.video, self.text)
        if dual_softmax == "sentences":
            return metrics.dual_softmax(sim, temperature).astype(np.float32)
        if dual_softmax != "none":
            raise ValueError(f"dual_softmax: expected 'none', 'sentences' or 'egovlp', got "
                             f"{dual_softmax!r}")
        return sim


def embed_split(model, params, mesh, dataset_dir, *, split: str = "test", batch_size: int = 64,
                num_frames: int = 16, resolution: int = 224, views=(views_lib.View(),),
                reduce: str = "embeddings_mean", num_workers: int = 0, dtype=np.float32,
                chunk: int = 1024, tokens: bool = False, records=None,
                only_hit_sentences: bool = False) -> Embedded:
    """Embeds the clips and sentences of a prepared split (see `Embedded`).

    Args:
      batch_size: global eval batch (a multiple of the process count and of the mesh's batch
        devices).
      views, reduce: test-time views and how they combine (`combine_views`).
      tokens: keep the towers' token outputs (for reranking; the first view's clip tokens).
      records: only these records (positions in the prepared split), e.g. a held-out sample.
      only_hit_sentences: only the sentences that are a hit (rel == 1) for one of the clips
        (a sample's own sentences), else every sentence of the split.
    """
    listed, weights = distinct_views(views)
    videos = video_features(model, params, clip_batches(
        dataset_dir, split, batch_size, records=records, num_frames=num_frames,
        resolution=resolution, views=listed, num_workers=num_workers, dtype=dtype),
        mesh, reduce="none", tokens=tokens,
        total=len(pipeline.open_split(dataset_dir, split) if records is None else records))
    clip_table, sentence_table = prepare.load_annotations(dataset_dir, split)
    rel = split_relevance(clip_table, sentence_table, videos["ids"])
    sentence_rows = (np.flatnonzero((rel == 1).any(axis=0)) if only_hit_sentences
                     else np.arange(len(sentence_table)))
    n = len(sentence_rows)
    texts, counts = text_rows(sentence_texts(clip_table, sentence_table, sentence_rows),
                              [str(t) for t in clip_table.narration[videos["ids"]]])
    encoded = text_features(model, params, sentence_batches(
        texts, batch_size, tokenize=TextTokenizer.of(model.config.text)), mesh,
                            tokens=tokens, total=len(texts))
    t, per_view = encoded["features"], videos["features"]
    video, gallery = combine_views(model, params, per_view, weights, t[:n], reduce, chunk)
    text = embed(model, params, t, gallery, "text", chunk)
    refined = model.config.refine.enabled  # refinement: only unit embeddings come out
    out = Embedded(video=video, text=text[:n], video_features=gallery, text_features=t[:n],
                   clip_rows=videos["ids"], sentence_rows=sentence_rows,
                   rel=rel[:, sentence_rows],
                   video_raw=video if refined else view_mean(per_view, weights),
                   text_raw=text if refined else t, text_counts=counts)
    if tokens:
        mask = encoded["mask"][:n]
        length = max(1, int(mask.sum(axis=1).max()))  # the rest is padding
        out.video_tokens = videos["tokens"]
        out.text_tokens = encoded["tokens"][:n, :length]
        out.text_mask = mask[:, :length]
    return out


def embed_clips_and_texts(model, params, mesh, dataset_dir, split: str, texts: Sequence[str], *,
                          batch_size: int, num_frames: int, resolution: int, views,
                          reduce: str, num_workers: int = 0, dtype=np.float32,
                          chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every clip of a prepared split and ``texts`` as unit embeddings, for the benchmarks
    that score their own texts (EgoMCQ's queries, Charades-Ego's class names); refinement
    attends over the other one's features. Keywords as `embed_split` (`split_settings`).

    Returns (clip_ids (n,) the records' clip_index, sorted; video (n, E); text (m, E)).
    """
    listed, weights = distinct_views(views)
    videos = video_features(model, params, clip_batches(
        dataset_dir, split, batch_size, num_frames=num_frames, resolution=resolution,
        views=listed, num_workers=num_workers, dtype=dtype), mesh, reduce="none",
        total=len(pipeline.open_split(dataset_dir, split)))
    t = text_features(model, params, sentence_batches(
        texts, batch_size, tokenize=TextTokenizer.of(model.config.text)), mesh,
        total=len(texts))["features"]
    video, gallery = combine_views(model, params, videos["features"], weights, t, reduce, chunk)
    return videos["ids"], video, embed(model, params, t, gallery, "text", chunk)


def split_settings(config) -> dict:
    """`embed_split` keyword arguments from ``config.eval`` / ``config.data``."""
    e, d = config.eval, config.data
    return dict(batch_size=e.batch_size, num_frames=d.num_frames, resolution=d.resolution,
                views=eval_views(e), reduce=e.tta_reduce, num_workers=e.num_workers,
                dtype=np.dtype(d.dtype), chunk=e.chunk)
