"""Evaluation: embedding a prepared split, scoring, reranking, and the evaluation entry point.

    python -m tempret_jax.evaluate --config configs/X.py[:arg] --workdir DIR [--step N]
                                   [--checkpoint PATH]

scores a trained run (``<workdir>/checkpoints``, latest step or ``--step``) or a converted
checkpoint (``--checkpoint``, `convert.save_converted` output) and writes ``<workdir>/eval/``.

    eval batches  --encode (sharded)--> clip features (n_clips, E) [V views: mean or sum]
    sentences     --encode-->           sentence features (n_sentences, E)
    features --[refine over the other modality's whole gallery]--> unit embeddings
    similarity = video @ text.T (n_clips, n_sentences) [--dual-softmax]
    [rerank: each query's top-K by the similarity get s + alpha * P(match) of the cross-encoder]
    --metrics.mir_metrics--> mAP / nDCG

Config keys (``config.eval``, defaults in `train.default_config`):

    split, batch_size, num_workers, chunk    what to score and how (chunk: refinement rows)
    tta                 use ``tta_views`` (else the centre crop alone)
    tta_views           view specs (`parse_view`): 'orig', 'flip', 'scale=0.875', 'scale=1.125+flip'
    tta_reduce          'mean' (ContextRefine-CLIP) | 'sum' (SMS code) of the views' features;
                        after L2 normalisation the two rank alike unless refinement runs on them
    dual_softmax        re-score the similarity with `metrics.dual_softmax` (DESIGN.md §5)
    rerank.k            candidates per query rescored by the cross-encoder (0: no rerank)
    rerank.alpha        score = s_dual + alpha * P(match) on the top-K
    rerank.alphas       if non-empty, alpha is picked among them on a held-out set:
    rerank.tune_split, rerank.tune_clips   ``tune_clips`` random clips of ``tune_split`` and the
                        sentences that are a hit (rel == 1) for one of them
    rerank.curve_ks     the K of the mAP-vs-K plot
    rerank.batch_size   queries per cross-encoder call (x K pairs)

Reranking runs both directions (text->video and video->text), each on its own score matrix, so
the metrics take V2T from one and T2V from the other. The towers run once: their token outputs
(the first view's) are cached at embedding time and the cross-encoder reads them by index.

Outputs in ``<workdir>/eval/``: metrics.json (and the table on stdout), similarity.npy
(clips x sentences, the dual encoder's final scores), submission.pkl (challenge format),
verb_ap.png, rerank_curve.png (with reranking), training_curves.png / eval_curves.png (from
train_metrics.jsonl / metrics.jsonl when present), gallery.html, config.json.

Padding rows of the pipelines (mask False) are dropped. Every process gets the whole result
(outputs are gathered to all devices), so any process can score; process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import pathlib
import time
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tempret_jax import checkpoint as checkpoint_lib
from tempret_jax import metrics
from tempret_jax import sharding as sharding_lib
from tempret_jax.data import ek100, pipeline, prepare

TTA_REDUCE = ("mean", "sum")
DIRECTIONS = ("t2v", "v2t")
EVAL_DIR = "eval"
CONFIG_FILE = "config.json"


class EvaluationError(ValueError):
    """The evaluation cannot run: no checkpoint, a checkpoint of another config, a bad key."""


# ---------------------------------------------------------------------------------------------
# Test-time views.


def parse_view(spec: str) -> pipeline.View:
    """'orig' | 'flip' | 'scale=S' | 'scale=S+flip' -> a `pipeline.View` (resize the short side to
    S x resolution, centre crop, maybe mirror)."""
    scale, flip = 1.0, False
    for part in str(spec).split("+"):
        part = part.strip()
        if part == "flip":
            flip = True
        elif part.startswith("scale="):
            try:
                scale = float(part[len("scale="):])
            except ValueError:
                scale = -1.0
            if not scale > 0:
                raise EvaluationError(f"eval.tta_views: {spec!r}: scale must be a positive number")
        elif part != "orig":
            raise EvaluationError(f"eval.tta_views: {spec!r}: expected 'orig', 'flip', 'scale=S' "
                                  f"or 'scale=S+flip'")
    return pipeline.View(scale=scale, flip=flip)


def eval_views(eval_config) -> tuple[pipeline.View, ...]:
    """The views ``config.eval`` asks for: ``tta_views`` when ``tta``, else the centre crop."""
    if not eval_config.tta:
        return (pipeline.View(),)
    views = tuple(parse_view(s) for s in eval_config.tta_views)
    if not views:
        raise EvaluationError("eval.tta_views: empty while eval.tta is True")
    return views


# ---------------------------------------------------------------------------------------------
# Encoding.


# The jitted functions are built once per (model, mesh, option): a new closure per call would
# be traced and compiled again every time (search embeds one query per call).
_cached = functools.lru_cache(maxsize=64)


def _gather_rows(mesh, jitted, params, batches: Iterable[dict], data_keys, id_key) -> dict:
    """Runs ``jitted(params, ids, mask, *data) -> ({name: (B, ...)}, ids, mask)`` on every batch.

    Returns {name: (n, ...) numpy} plus 'ids' (n,), sorted by id, padding dropped. ``jitted``
    has replicated outputs, so every process holds every row.
    """
    outputs: dict[str, list] = {}
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
    result = {k: np.concatenate(v) for k, v in outputs.items()}
    order = np.argsort(result["ids"], kind="stable")
    return {k: v[order] for k, v in result.items()}


def video_features(model, params, batches: Iterable[dict], mesh, *, reduce: str = "mean",
                   tokens: bool = False) -> dict:
    """Clip features of eval batches (`pipeline.eval_pipeline` or `clip_batches`).

    Args:
      model: a `RetrievalModel`; params: its parameters (sharded or not).
      batches: dicts with video (B, V, T, R, R, 3), mask (B,), clip_index (B,).
      reduce: how the V views combine: 'mean' | 'sum' -> (n, E); 'none' -> (n, V, E).
      tokens: also return the cross-encoder tokens of the first view.
    Returns:
      {'features': (n_clips, E) float32 unnormalised, 'ids': (n_clips,) CSV rows (sorted),
       ['tokens': (n_clips, M, D_v) in the compute dtype]}.
    """
    if reduce not in TTA_REDUCE + ("none",):
        raise EvaluationError(f"eval.tta_reduce: expected one of {TTA_REDUCE}, got {reduce!r}")
    return _gather_rows(mesh, _video_fn(model, mesh, reduce, tokens), params, batches,
                        ("video",), "clip_index")


@_cached
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


def text_features(model, params, batches: Iterable[dict], mesh, *, tokens: bool = False) -> dict:
    """Sentence features of sentence batches (`sentence_batches`).

    batches: dicts with tokens (B, 77), mask (B,), index (B,) position in the sentence list.
    Returns {'features': (n, E) float32 unnormalised, 'ids': (n,) positions (sorted),
    ['tokens': (n, 77, D_t) compute dtype, 'mask': (n, 77) bool real tokens]}.
    """
    return _gather_rows(mesh, _text_fn(model, mesh, tokens), params, batches, ("tokens",),
                        "index")


@_cached
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
        raise EvaluationError(f"eval.batch_size {global_batch_size} is not divisible by the "
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


@_cached
def _embed_fn(model, modality: str):
    method = {"video": model.embed_video, "text": model.embed_text}[modality]
    gallery_key = {"video": "text_gallery", "text": "video_gallery"}[modality]

    def fn(params, x, gallery):
        return model.apply({"params": params}, x, **{gallery_key: gallery}, method=method)

    return jax.jit(fn)


def similarity(video: np.ndarray, text: np.ndarray) -> np.ndarray:
    """video (n_videos, E), text (n_texts, E) unit embeddings -> (n_videos, n_texts) float32."""
    return np.matmul(np.asarray(video, np.float32), np.asarray(text, np.float32).T)


def split_relevance(dataset_dir, split: str, clip_rows: np.ndarray,
                    sentence_rows: np.ndarray | None = None) -> np.ndarray:
    """Relevance (len(clip_rows), n_sentences) of the prepared clips (CSV rows ``clip_rows``,
    clips skipped at preparation are absent) against the split's sentences (all, or the rows
    ``sentence_rows`` of the sentence file)."""
    clips, sentences = prepare.load_annotations(dataset_dir, split)
    text_labels = sentences.labels(clips)
    if sentence_rows is not None:
        text_labels = text_labels.take(np.asarray(sentence_rows))
    return ek100.relevance_by_keys(clips.labels().take(np.asarray(clip_rows)), text_labels)


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
    clips = video_features(model, params, clip_batches(
        dataset_dir, split, batch_size, records=records, num_frames=num_frames,
        resolution=resolution, views=views, num_workers=num_workers, dtype=dtype),
        mesh, reduce=reduce, tokens=tokens)
    _, table = prepare.load_annotations(dataset_dir, split)
    rel = split_relevance(dataset_dir, split, clips["ids"])
    sentence_rows = (np.flatnonzero((rel == 1).any(axis=0)) if only_hit_sentences
                     else np.arange(len(table)))
    texts = text_features(model, params, sentence_batches(
        [str(table.narration[i]) for i in sentence_rows], batch_size), mesh, tokens=tokens)
    v, t = clips["features"], texts["features"]
    out = Embedded(video=embed(model, params, v, t, "video", chunk),
                   text=embed(model, params, t, v, "text", chunk), video_features=v,
                   text_features=t, clip_rows=clips["ids"], sentence_rows=sentence_rows,
                   rel=rel[:, sentence_rows])
    if tokens:
        length = max(1, int(texts["mask"].sum(axis=1).max()))  # the rest is padding
        out.video_tokens = clips["tokens"]
        out.text_tokens = texts["tokens"][:, :length]
        out.text_mask = texts["mask"][:, :length]
    return out


def evaluate_split(model, params, mesh, dataset_dir, *, split: str = "test",
                   batch_size: int = 64, num_frames: int = 16, resolution: int = 224,
                   views=(pipeline.View(),), reduce: str = "mean", num_workers: int = 0,
                   dtype=np.float32, chunk: int = 1024, dual_softmax: bool = False) -> dict:
    """Embeds every clip and sentence of a prepared split and scores them (no rerank).

    Returns:
      {'metrics': mir_metrics (percent), 'similarity': (n_clips, n_sentences) float32,
       'clip_rows': (n_clips,) CSV rows of the similarity's rows}.
    """
    e = embed_split(model, params, mesh, dataset_dir, split=split, batch_size=batch_size,
                    num_frames=num_frames, resolution=resolution, views=views, reduce=reduce,
                    num_workers=num_workers, dtype=dtype, chunk=chunk)
    sim = e.similarity(dual_softmax)
    return {"metrics": metrics.mir_metrics(sim, e.rel), "similarity": sim,
            "clip_rows": e.clip_rows}


def evaluate_split_from_config(model, params, mesh, config, **overrides) -> dict:
    """`evaluate_split` with the ``config.eval`` / ``config.data`` settings (what training's
    periodic evaluation runs)."""
    e, d = config.eval, config.data
    kwargs = dict(split=e.split, batch_size=e.batch_size, num_frames=d.num_frames,
                  resolution=d.resolution, views=eval_views(e), reduce=e.tta_reduce,
                  num_workers=e.num_workers, dtype=np.dtype(d.dtype), chunk=e.chunk,
                  dual_softmax=e.dual_softmax)
    return evaluate_split(model, params, mesh, config.dataset_dir, **{**kwargs, **overrides})


# ---------------------------------------------------------------------------------------------
# Two-stage reranking.


def _queries(sim: np.ndarray, direction: str) -> np.ndarray:
    """The score matrix with one row per query: texts for 't2v', videos for 'v2t'."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    return sim.T if direction == "t2v" else sim


def top_k(sim: np.ndarray, k: int, direction: str) -> np.ndarray:
    """Each query's k best candidates: (n_queries, k) int indices, best first.

    Ties rank the smaller index first, as the metrics' stable sort does, so the top-K is
    exactly the head of the order the metrics score.
    """
    scores = _queries(np.asarray(sim), direction)
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _replicate(mesh, x: np.ndarray) -> jax.Array:
    sharding = sharding_lib.replicated(mesh)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _batch_rows(mesh, x: np.ndarray) -> jax.Array:
    """A host array every process holds whole -> sharded over the mesh's batch axes."""
    sharding = sharding_lib.batch_sharding(mesh)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def itm_scores(model, params, mesh, embedded: Embedded, candidates: np.ndarray,
               direction: str, batch_size: int = 64) -> np.ndarray:
    """P(match) of the cross-encoder for each query and each of its candidates.

    Args:
      embedded: with cached tokens (`embed_split(..., tokens=True)`).
      candidates: (n_queries, K) from `top_k` (videos for 't2v', sentences for 'v2t').
      batch_size: queries per call, rounded up to a multiple of the batch devices; each call
        scores batch_size x K pairs. The cached tokens go to the devices once and are gathered
        there by index.
    Returns:
      (n_queries, K) float32.
    """
    if embedded.video_tokens is None:
        raise ValueError("itm_scores: embedded has no cached tokens (embed_split(tokens=True))")
    _queries(np.empty((0, 0)), direction)  # validates the name
    text_tokens = _replicate(mesh, embedded.text_tokens)
    text_mask = _replicate(mesh, embedded.text_mask)
    video_tokens = _replicate(mesh, embedded.video_tokens)
    jitted = _itm_fn(model, mesh, direction)
    unit = sharding_lib.batch_devices(mesh)
    batch = -(-batch_size // unit) * unit
    n = len(candidates)
    out = np.empty(candidates.shape, np.float32)
    for start in range(0, n, batch):
        query = np.arange(start, min(start + batch, n))
        pad = batch - len(query)
        cands = np.pad(candidates[query], ((0, pad), (0, 0)))
        query = np.pad(query, (0, pad))
        scores = jitted(params, _batch_rows(mesh, query.astype(np.int32)),
                        _batch_rows(mesh, cands.astype(np.int32)), text_tokens, text_mask,
                        video_tokens)
        out[start:start + batch - pad] = np.asarray(scores)[:batch - pad]
    return out


@_cached
def _itm_fn(model, mesh, direction: str):
    def fn(params, query, cands, text_tokens, text_mask, video_tokens):
        if direction == "t2v":
            t, m, v = text_tokens[query][:, None], text_mask[query][:, None], video_tokens[cands]
        else:
            t, m, v = text_tokens[cands], text_mask[cands], video_tokens[query][:, None]
        logits = model.apply({"params": params}, t, m, v, method=model.score_pairs)
        return jax.nn.sigmoid(logits)

    return jax.jit(fn, out_shardings=sharding_lib.replicated(mesh))


def rerank(sim: np.ndarray, candidates: np.ndarray, itm: np.ndarray, alpha: float,
           direction: str, k: int | None = None) -> np.ndarray:
    """The score matrix of one direction after reranking each query's top ``k`` candidates.

    The first ``k`` candidates of each query (default all) get s_dual + alpha * itm and are
    lifted above every other item by a constant (float64 keeps the original order exact),
    so they rank first, ordered by the new score; the rest keep their dual-encoder order.
    With alpha = 0 the ranking is the dual encoder's.

    Args:
      sim: (n_videos, n_texts) dual-encoder scores.
      candidates, itm: (n_queries, K) from `top_k` and `itm_scores`.
    Returns:
      (n_videos, n_texts) float64, to be read in ``direction`` only.
    """
    scores = _queries(np.asarray(sim, np.float64), direction).copy()
    k = candidates.shape[1] if k is None else min(k, candidates.shape[1])
    idx, p = candidates[:, :k], np.asarray(itm[:, :k], np.float64)
    rows = np.arange(len(scores))[:, None]
    spread = float(np.ptp(p)) if p.size else 0.0
    lift = float(np.ptp(scores)) + abs(alpha) * spread + 1.0
    scores[rows, idx] = scores[rows, idx] + alpha * p + lift
    return scores.T if direction == "t2v" else scores


def directional_metrics(sim_v2t: np.ndarray, sim_t2v: np.ndarray,
                        rel: np.ndarray) -> dict[str, dict[str, float]]:
    """`metrics.mir_metrics` with V2T read from ``sim_v2t`` and T2V from ``sim_t2v`` (percent)."""
    v2t, t2v = metrics.mir_per_row(sim_v2t, rel), metrics.mir_per_row(sim_t2v, rel)
    return metrics.summarize({key: (v2t if key[1] == "v2t" else t2v)[key] for key in v2t})


@dataclasses.dataclass
class Reranker:
    """Cached cross-encoder scores of both directions' top ``k`` (any smaller K and any alpha
    reuse them): candidates / itm {direction: (n_queries, k)}."""

    sim: np.ndarray
    rel: np.ndarray
    candidates: dict
    itm: dict

    @classmethod
    def score(cls, model, params, mesh, embedded: Embedded, sim: np.ndarray, k: int,
              batch_size: int = 64) -> "Reranker":
        candidates = {d: top_k(sim, k, d) for d in DIRECTIONS}
        itm = {d: itm_scores(model, params, mesh, embedded, candidates[d], d, batch_size)
               for d in DIRECTIONS}
        return cls(sim, embedded.rel, candidates, itm)

    def matrices(self, alpha: float, k: int | None = None) -> dict[str, np.ndarray]:
        return {d: rerank(self.sim, self.candidates[d], self.itm[d], alpha, d, k)
                for d in DIRECTIONS}

    def metrics(self, alpha: float, k: int | None = None) -> dict:
        m = self.matrices(alpha, k)
        return directional_metrics(m["v2t"], m["t2v"], self.rel)

    def sweep(self, alphas: Sequence[float], k: int | None = None) -> tuple[float, dict]:
        """(the alpha of the best avg mAP, {alpha: avg mAP}); ties keep the first alpha."""
        results = {float(a): self.metrics(float(a), k)["mAP"]["avg"] for a in alphas}
        best = max(results, key=lambda a: (results[a], -list(results).index(a)))
        return best, results


# ---------------------------------------------------------------------------------------------
# Loading a run and the entry point.


def _meta(step_dir: pathlib.Path) -> dict:
    path = step_dir / "meta" / "metadata"
    return json.loads(path.read_text()) if path.is_file() else {}


def find_step_dir(config, workdir, step: int | None = None) -> pathlib.Path:
    """The checkpoint step folder of the run in ``workdir`` that ``config`` trained.

    Raises EvaluationError when the workdir has no checkpoint (or not ``step``) or when its
    checkpoints were written under another config name.
    """
    workdir = pathlib.Path(workdir)
    folder = workdir / checkpoint_lib.CHECKPOINTS
    if not folder.is_dir() or not any(p.name.isdigit() for p in folder.iterdir()):
        raise EvaluationError(f"no checkpoint in {folder}: train the run first "
                              f"(python -m tempret_jax.main ...) or pass --checkpoint")
    try:
        step_dir = checkpoint_lib.checkpoint_step_dir(folder, step)
    except checkpoint_lib.CheckpointError as e:
        raise EvaluationError(str(e).replace("init_from: ", "")) from None
    trained_as = _meta(step_dir).get("config")
    if trained_as is not None and trained_as != config.name:
        raise EvaluationError(f"{workdir} holds a run of config {trained_as!r}, but the config "
                              f"given is {config.name!r}: pass the config it was trained with")
    return step_dir


def load_model(config, workdir=None, *, step: int | None = None, checkpoint: str = ""):
    """The model, mesh and parameters to evaluate.

    From ``checkpoint`` (a converted or params-only checkpoint, a run folder) when given, else
    from the run in ``workdir`` (`find_step_dir`; its EMA parameters when the config keeps them).
    Parameters are placed directly in the trainer's shardings.
    Returns (model, mesh, params, step): step is -1 for a converted checkpoint.
    """
    from tempret_jax import train  # train imports this module for its periodic evaluation

    mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
    trainer = train.Trainer(config, mesh)
    abstract = trainer.abstract_state()
    if checkpoint:
        source_dir, number = pathlib.Path(checkpoint), -1
        source = checkpoint_lib.load_flat_params(source_dir)
    else:
        source_dir = find_step_dir(config, workdir, step)
        number = int(source_dir.name)
        key = "ema_params" if abstract.ema_params is not None else "params"
        source = checkpoint_lib.load_flat_params(source_dir, key=key)
    params = checkpoint_lib.merge_params(abstract.params, source, source_name=str(source_dir))
    return trainer.model, mesh, params, number


def _rerank_settings(config) -> dict | None:
    r = config.eval.rerank
    if r.k <= 0:
        return None
    if not config.model.cross_encoder.enabled:
        raise EvaluationError("eval.rerank.k > 0 needs a cross-encoder "
                              "(model.cross_encoder.enabled = True, a stage-2 run)")
    return r


def embed_kwargs(config) -> dict:
    """`embed_split` keyword arguments from ``config.eval`` / ``config.data``."""
    e, d = config.eval, config.data
    return dict(batch_size=e.batch_size, num_frames=d.num_frames, resolution=d.resolution,
                views=eval_views(e), reduce=e.tta_reduce, num_workers=e.num_workers,
                dtype=np.dtype(d.dtype), chunk=e.chunk)


def tune_alpha(model, params, mesh, config) -> tuple[float, dict]:
    """Picks rerank.alpha among rerank.alphas on the held-out sample (module docstring)."""
    r = config.eval.rerank
    n = len(pipeline.open_split(config.dataset_dir, r.tune_split))
    rng = np.random.default_rng(config.seed)
    records = np.sort(rng.choice(n, min(r.tune_clips, n), replace=False))
    held_out = embed_split(model, params, mesh, config.dataset_dir, split=r.tune_split,
                           tokens=True, records=records, only_hit_sentences=True,
                           **embed_kwargs(config))
    reranker = Reranker.score(model, params, mesh, held_out,
                              held_out.similarity(config.eval.dual_softmax), r.k, r.batch_size)
    return reranker.sweep(r.alphas)


def run(config: ml_collections.ConfigDict, workdir, *, step: int | None = None,
        checkpoint: str = "", report: bool = True) -> dict:
    """Evaluates and writes ``<workdir>/eval/`` (module docstring). Returns the record written
    to eval/metrics.json, with the timings of each stage (seconds)."""
    workdir = pathlib.Path(workdir)
    timings = {}
    tick = time.perf_counter()
    rerank_config = _rerank_settings(config)
    model, mesh, params, number = load_model(config, workdir, step=step, checkpoint=checkpoint)
    timings["load"] = time.perf_counter() - tick

    tick = time.perf_counter()
    embedded = embed_split(model, params, mesh, config.dataset_dir, split=config.eval.split,
                           tokens=rerank_config is not None, **embed_kwargs(config))
    timings["embedding"] = time.perf_counter() - tick
    tick = time.perf_counter()
    sim = embedded.similarity(config.eval.dual_softmax)
    timings["scoring"] = time.perf_counter() - tick
    tick = time.perf_counter()
    result = metrics.mir_metrics(sim, embedded.rel)
    per_row = metrics.mir_per_row(sim, embedded.rel)
    timings["metrics"] = time.perf_counter() - tick

    record = {"config": config.name, "step": number, "checkpoint": checkpoint or None,
              "split": config.eval.split, "clips": int(sim.shape[0]),
              "sentences": int(sim.shape[1]), "views": len(eval_views(config.eval)),
              "tta_reduce": config.eval.tta_reduce, "dual_softmax": bool(config.eval.dual_softmax),
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **result}
    tables = [f"{config.eval.split} split ({sim.shape[0]} clips x {sim.shape[1]} sentences), "
              f"step {number}\n{metrics.format_table(result)}"]
    curve = None
    if rerank_config is not None:
        r = rerank_config
        tick = time.perf_counter()
        alpha, sweep = float(r.alpha), None
        if len(r.alphas):
            alpha, sweep = tune_alpha(model, params, mesh, config)
        timings["alpha_sweep"] = time.perf_counter() - tick
        tick = time.perf_counter()
        kmax = max([r.k, *r.curve_ks])
        reranker = Reranker.score(model, params, mesh, embedded, sim, kmax, r.batch_size)
        reranked = reranker.metrics(alpha, r.k)
        timings["reranking"] = time.perf_counter() - tick
        curve = {int(k): reranker.metrics(alpha, int(k))["mAP"]["avg"] for k in r.curve_ks}
        record["rerank"] = {"k": int(r.k), "alpha": alpha, "alpha_sweep": sweep,
                            "map_by_k": curve, **reranked}
        tables.append(f"reranked: top {r.k}, alpha {alpha:g}\n{metrics.format_table(reranked)}")
    record["timings_s"] = {k: round(v, 3) for k, v in timings.items()}

    if jax.process_index() == 0:
        print("\n\n".join(tables), flush=True)
        out = workdir / EVAL_DIR
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "similarity.npy", sim)
        clips, sentences = prepare.load_annotations(config.dataset_dir, config.eval.split)
        metrics.write_submission(out / "submission.pkl", sim,
                                 clips.narration_id[embedded.clip_rows],
                                 sentences.narration_id[embedded.sentence_rows],
                                 tuple(config.eval.submission_sls))
        (out / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
        if report:
            write_report(out, workdir, config, embedded, sim, per_row, curve, result)
        tmp = out / ".metrics.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(out / "metrics.json")
    return record


def clip_frames(dataset_dir, split: str):
    """record position -> its frames, (N,) of (H, W, 3) uint8, from the prepared JPEGs."""
    source = pipeline.open_split(dataset_dir, split)

    def frames(i: int):
        stored = source[int(i)]["frames"]
        return pipeline.decode_jpegs(stored, range(len(stored)))

    return frames


def write_report(out: pathlib.Path, workdir: pathlib.Path, config, embedded: Embedded,
                 sim: np.ndarray, per_row: dict, curve: dict | None, result: dict) -> None:
    """The plots and the gallery of ``run`` (see the module docstring)."""
    from tempret_jax import report as report_lib  # matplotlib: only when a report is written

    clips, sentences = prepare.load_annotations(config.dataset_dir, config.eval.split)
    verbs = clips.verb_class[embedded.clip_rows]
    names = {int(c): str(v) for c, v in zip(clips.verb_class, clips.verb)}
    report_lib.plot_verb_ap(out / "verb_ap.png", per_row["mAP", "v2t"], verbs, names)
    if curve:
        report_lib.plot_rerank_curve(out / "rerank_curve.png", curve,
                                     baseline=result["mAP"]["avg"])
    for source, name in (("train_metrics.jsonl", "training_curves.png"),
                         ("metrics.jsonl", "eval_curves.png")):
        if (workdir / source).is_file():
            report_lib.plot_training_curves(out / name, workdir / source)
    # Prepared records are in CSV order without the skipped clips: sorted clip rows are records.
    report_lib.write_gallery(
        out / "gallery.html", sim, embedded.rel, clips.narration_id[embedded.clip_rows],
        clips.narration[embedded.clip_rows], sentences.narration[embedded.sentence_rows],
        clip_frames(config.dataset_dir, config.eval.split),
        title=f"{config.name}: {config.eval.split} split")


def _main(argv) -> None:
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every file it reads at INFO
        logging.set_verbosity(logging.WARNING)
    config = flags.FLAGS.config
    workdir = pathlib.Path(flags.FLAGS.workdir)
    if not config.dataset_dir and config.get("synthetic") is not None:
        with config.unlocked():  # the demo prepares SynthKitchens inside its workdir
            config.dataset_dir = str(_synthetic_dataset_dir(config, workdir).absolute())
    if not config.dataset_dir:
        raise app.UsageError("config.dataset_dir is empty: pass --config.dataset_dir=<prepared "
                             "data set>")
    step = flags.FLAGS.step if flags.FLAGS.step >= 0 else None
    try:
        run(config, workdir, step=step, checkpoint=flags.FLAGS.checkpoint)
    except (EvaluationError, checkpoint_lib.CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None


def _synthetic_dataset_dir(config, workdir: pathlib.Path) -> pathlib.Path:
    """Where `main.synthetic_dataset` prepared the demo's SynthKitchens in ``workdir``."""
    path = prepare.dataset_dir(workdir / "data", config.prepare.num_frames,
                               config.prepare.short_side)
    if not path.is_dir():
        raise EvaluationError(f"{path} does not exist: train the demo in {workdir} first")
    return path


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    # Defined here only: `python -m` runs this file as __main__ while train imports it again as
    # tempret_jax.evaluate, and absl flags may be defined once.
    config_flags.DEFINE_config_file("config", None, "Experiment config (a Python file).")
    flags.DEFINE_string("workdir", None, "The run's directory (checkpoints/; eval/ is written).")
    flags.DEFINE_integer("step", -1, "Checkpoint step to evaluate (default: the latest).")
    flags.DEFINE_string("checkpoint", "", "A converted / params-only checkpoint to evaluate "
                        "instead of the run's own.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_main)
