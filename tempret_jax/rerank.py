"""Two-stage retrieval: each query's top-K of the dual encoder rescored by the cross-encoder.

    score = s_dual + alpha * P(match)   on the top K of each query, which then rank first

Reranking runs both directions (text->video and video->text), each on its own score matrix, so
the metrics take V2T from one and T2V from the other. The towers run once: their token outputs
(the first view's, `embedding.embed_split(tokens=True)`) are cached at embedding time and the
cross-encoder reads them by index.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np

from tempret_jax import metrics, progress
from tempret_jax import sharding as sharding_lib
from tempret_jax.embedding import Embedded

DIRECTIONS = ("t2v", "v2t")


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
    with progress.bar(n, f"reranking {direction}", unit="query") as queries:
        for start in range(0, n, batch):
            _score_batch(jitted, params, mesh, candidates, start, batch, n, out,
                         (text_tokens, text_mask, video_tokens))
            queries.update(min(batch, n - start))
    return out


def _score_batch(jitted, params, mesh, candidates, start, batch, n, out, cached) -> None:
    """Scores queries start .. start + batch of ``candidates`` into ``out``; the last batch
    is padded to ``batch`` queries. ``cached``: the replicated (text tokens, mask, video
    tokens)."""
    query = np.arange(start, min(start + batch, n))
    pad = batch - len(query)
    cands = np.pad(candidates[query], ((0, pad), (0, 0)))
    query = np.pad(query, (0, pad))
    scores = jitted(params, _batch_rows(mesh, query.astype(np.int32)),
                    _batch_rows(mesh, cands.astype(np.int32)), *cached)
    out[start:start + batch - pad] = np.asarray(scores)[:batch - pad]


@functools.lru_cache(maxsize=64)  # one compiled scorer per (model, mesh, direction)
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

    def sweep(self, alphas: Sequence[float], ks: Sequence[int] = (None,)) -> tuple[tuple, dict]:
        """Every (K, alpha) pair's avg mAP: ((the best K, its alpha), {K: {alpha: avg mAP}}).
        Ties keep the first K, then the first alpha; K None is every cached candidate."""
        results = {k: {float(a): self.metrics(float(a), k)["mAP"]["avg"] for a in alphas}
                   for k in ks}
        order = [(k, a) for k in results for a in results[k]]
        best = max(order, key=lambda ka: (results[ka[0]][ka[1]], -order.index(ka)))
        return best, results
