"""EK-100 Multi-Instance Retrieval metrics, dual-softmax and the challenge submission.

Definitions: docs/design.md, Metrics.

`sim` and `rel` are (n_videos, n_texts). V2T ranks the texts of each video row, T2V the videos of
each text column. Numbers are percentages.

- mAP: a hit is an item with rel == 1 exactly; at a hit of rank k the precision is the sum of
  the RAW relevance of the top k items over k (partially relevant items above a hit raise it).
  AP is the mean precision over the row's hits; mAP the mean AP over rows.
- nDCG: k = the number of items with rel > 0 in the row; DCG = sum_{r<=k} rel(r) / log2(r + 1)
  with linear gains; IDCG the same over the row's relevances sorted descending.
- Ties in similarity are broken by a stable sort: among equal similarities the item with the
  smaller index ranks first. (The official code's order among ties is unspecified.)
- Rows with no hit (mAP) or no relevant item (nDCG) have no defined score; they are left out of
  the mean (the official code would return NaN). EK-100 has none: every clip and every
  sentence has a rel == 1 partner.

`mir_per_row` ranks only each query's relevant items (`ranking`, numba kernels: linear in the
row, exact in the input's float type, no row sorted), queries spread over every core.
`reference_mir_metrics` is the straightforward vectorised form of the official definition; the
tests hold the two equal. `sharded_metrics` is the same ranking as a jitted program for
accelerators.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
from typing import Sequence

import numpy as np

from tempret_jax import atomic, ranking

SUBMISSION_VERSION = "0.1"
SUBMISSION_CHALLENGE = "multi_instance_retrieval"


def _check(sim: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sim, rel = np.asarray(sim), np.asarray(rel)
    if sim.ndim != 2 or sim.shape != rel.shape:
        raise ValueError(f"sim {sim.shape} and rel {rel.shape} must be 2-D of the same shape "
                         "(n_videos, n_texts)")
    if sim.dtype not in (np.float32, np.float64):  # the kernels' types
        sim = sim.astype(np.float64)
    if rel.dtype not in (np.float32, np.float64):
        rel = rel.astype(np.float64)
    if not np.isfinite(sim).all():
        raise ValueError("sim has NaN or infinite values")
    return sim, rel


def summarize(per_row: dict[tuple[str, str], np.ndarray]) -> dict[str, dict[str, float]]:
    """Per-row results (`mir_per_row`) -> {'mAP' | 'nDCG': {'v2t', 't2v', 'avg'}} in percent;
    rows with an undefined score (NaN) are left out of the means."""
    out = {}
    for name in ("mAP", "nDCG"):
        v2t = 100 * float(np.nanmean(per_row[name, "v2t"]))
        t2v = 100 * float(np.nanmean(per_row[name, "t2v"]))
        out[name] = {"v2t": v2t, "t2v": t2v, "avg": (v2t + t2v) / 2}
    return out


# Queries per task: enough tasks to keep every core busy to the end, few enough to be cheap.
_QUERIES_PER_TASK = 256


def mir_per_row(sim: np.ndarray, rel: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """Per-query AP and nDCG (fractions, NaN where undefined) of both directions.

    Args:
      sim: (n_videos, n_texts) similarities.
      rel: (n_videos, n_texts) relevance in [0, 1].
    Returns:
      {('mAP' | 'nDCG', 'v2t'): (n_videos,), ('mAP' | 'nDCG', 't2v'): (n_texts,)}.
    """
    sim, rel = _check(sim, rel)
    directions = {"v2t": (sim, rel), "t2v": (sim.T, rel.T)}  # T2V: transposed views, no copy
    out = {(name, d): np.empty(s.shape[0]) for d, (s, _) in directions.items()
           for name in ("mAP", "nDCG")}

    def run(task: tuple[str, int]) -> None:
        d, first = task
        s, r = directions[d]
        ranking.score_queries(s, r, first, min(first + _QUERIES_PER_TASK, s.shape[0]),
                              out["mAP", d], out["nDCG", d])

    # T2V's tasks first: they are the longer ones (longer queries, copied in tiles), and the
    # short ones last fill the cores evenly to the end.
    tasks = [(d, first) for d in ("t2v", "v2t")
             for first in range(0, directions[d][0].shape[0], _QUERIES_PER_TASK)]
    # The kernels release the GIL: one thread per core.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(run, tasks))
    return out


def mir_metrics(sim: np.ndarray, rel: np.ndarray) -> dict[str, dict[str, float]]:
    """EK-100 MIR mAP and nDCG, in percent.

    Args:
      sim: (n_videos, n_texts) similarities.
      rel: (n_videos, n_texts) relevance in [0, 1].
    Returns:
      {'mAP': {'v2t', 't2v', 'avg'}, 'nDCG': {'v2t', 't2v', 'avg'}}.
    """
    return summarize(mir_per_row(sim, rel))


def _reference_direction(sim: np.ndarray, rel: np.ndarray) -> dict[str, np.ndarray]:
    order = np.argsort(-sim, axis=1, kind="stable")
    ranked = np.take_along_axis(rel, order, axis=1).astype(np.float64)
    position = np.arange(1, sim.shape[1] + 1)
    hits = ranked == 1
    precision = np.cumsum(ranked, axis=1) / position
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.sum(precision * hits, axis=1) / hits.sum(1)
        k = (rel > 0).sum(1, keepdims=True)
        gains = np.where(position <= k, 1 / np.log2(position + 1), 0)
        dcg = np.sum(ranked * gains, axis=1)
        idcg = np.sum(-np.sort(-rel.astype(np.float64), axis=1) * gains, axis=1)
        ndcg = np.where(idcg > 0, dcg / idcg, np.nan)
    return {"mAP": ap, "nDCG": ndcg}


def reference_mir_metrics(sim: np.ndarray, rel: np.ndarray) -> dict[str, dict[str, float]]:
    """The official definition vectorised plainly (full stable argsort); same output as
    `mir_metrics`, about 15x slower. Kept as the check and the benchmark baseline."""
    sim, rel = _check(sim, rel)
    per_row = {}
    for direction, (s, r) in {"v2t": (sim, rel), "t2v": (sim.T, rel.T)}.items():
        for name, value in _reference_direction(s, r).items():
            per_row[name, direction] = value
    return summarize(per_row)


def dual_softmax(sim: np.ndarray, temperature: float = 500.0,
                 counts: np.ndarray | None = None) -> np.ndarray:
    """Dual-softmax re-scoring used at inference (EgoVLP; docs/design.md, Metrics).

    With S = sim.T (texts x videos): S <- softmax(S / temperature over videos) * S, then
    S <- softmax(S over texts). ``counts`` (n_texts,) >= 0: how many times each text stands in
    the softmax over texts, i.e. its weight in the denominator (EgoVLP's form counts a
    narration once per clip that has it; a repeat of a text weighs 0 and is still scored);
    None counts each once. Returns (n_videos, n_texts) float64.
    """
    s = np.asarray(sim, np.float64).T
    s = _softmax(s / temperature, axis=1) * s
    return _softmax(s, axis=0, weights=None if counts is None else np.asarray(counts)[:, None]).T


def _softmax(x: np.ndarray, axis: int, weights: np.ndarray | None = None) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / (e if weights is None else e * weights).sum(axis=axis, keepdims=True)


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """The standard EK-100 MIR table: rows mAP and nDCG, columns V2T / T2V / avg."""
    lines = [f"{'':6}{'V2T':>8}{'T2V':>8}{'avg':>8}"]
    for name in ("mAP", "nDCG"):
        m = metrics[name]
        lines.append(f"{name:6}{m['v2t']:8.2f}{m['t2v']:8.2f}{m['avg']:8.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Challenge submission.


def write_submission(path, sim: np.ndarray, clip_ids: Sequence[str], sentence_ids: Sequence[str],
                     sls: tuple[int, int, int] = (4, 3, 3)) -> None:
    """Writes the EK-100 MIR challenge pickle atomically (temporary file, then rename).

    Args:
      path: output .pkl path.
      sim: (n_videos, n_texts) similarity, rows in ``clip_ids`` order, columns in
        ``sentence_ids`` order.
      clip_ids: the clips' narration_ids (vis_ids).
      sentence_ids: the sentences' narration_ids (txt_ids).
      sls: supervision levels (sls_pt, sls_tl, sls_td) declared to the challenge.
    """
    sim = np.asarray(sim, np.float32)
    submission = {
        "version": SUBMISSION_VERSION, "challenge": SUBMISSION_CHALLENGE,
        "sls_pt": int(sls[0]), "sls_tl": int(sls[1]), "sls_td": int(sls[2]),
        "sim_mat": sim, "txt_ids": [str(t) for t in sentence_ids],
        "vis_ids": [str(v) for v in clip_ids],
    }
    _validate_submission(submission, str(path))
    with atomic.writer(path, "wb") as f:
        pickle.dump(submission, f, protocol=pickle.HIGHEST_PROTOCOL)


class _SubmissionUnpickler(pickle.Unpickler):
    """Unpickles only builtins and NumPy arrays: a submission is data, never code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"), ("builtins", "bytearray"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a submission")
        return super().find_class(module, name)


def read_submission(path, clip_ids: Sequence[str] | None = None,
                    sentence_ids: Sequence[str] | None = None) -> dict:
    """Reads and validates a challenge submission pickle (safely: no code is loaded).

    When ``clip_ids`` / ``sentence_ids`` are given, the submission must list exactly those ids
    (any order). Returns the dict, with ``sim_mat`` as a float32 (n_videos, n_texts) array.
    """
    with open(path, "rb") as f:
        try:
            submission = _SubmissionUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: not a readable submission pickle: {e}") from None
    _validate_submission(submission, str(path), clip_ids, sentence_ids)
    submission["sim_mat"] = np.asarray(submission["sim_mat"], np.float32)
    return submission


def _validate_submission(sub, path: str, clip_ids=None, sentence_ids=None) -> None:
    if not isinstance(sub, dict):
        raise ValueError(f"{path}: a submission is a dict, got {type(sub).__name__}")
    expected = {"version", "challenge", "sls_pt", "sls_tl", "sls_td", "sim_mat", "txt_ids",
                "vis_ids"}
    missing = expected - set(sub)
    if missing:
        raise ValueError(f"{path}: submission is missing key(s) {sorted(missing)}")
    if sub["version"] != SUBMISSION_VERSION or sub["challenge"] != SUBMISSION_CHALLENGE:
        raise ValueError(f"{path}: version/challenge are {sub['version']!r}/{sub['challenge']!r}, "
                         f"expected {SUBMISSION_VERSION!r}/{SUBMISSION_CHALLENGE!r}")
    for key in ("sls_pt", "sls_tl", "sls_td"):
        if not isinstance(sub[key], (int, np.integer)) or not 0 <= sub[key] <= 5:
            raise ValueError(f"{path}: {key} is {sub[key]!r}, expected an integer in [0, 5]")
    sim = np.asarray(sub["sim_mat"])
    n_vis, n_txt = len(sub["vis_ids"]), len(sub["txt_ids"])
    if sim.shape != (n_vis, n_txt):
        raise ValueError(f"{path}: sim_mat has shape {sim.shape}, expected (len(vis_ids), "
                         f"len(txt_ids)) = ({n_vis}, {n_txt})")
    if not np.issubdtype(sim.dtype, np.floating) or not np.isfinite(sim).all():
        raise ValueError(f"{path}: sim_mat must be finite floats")
    for key, ids, want in (("vis_ids", sub["vis_ids"], clip_ids),
                           ("txt_ids", sub["txt_ids"], sentence_ids)):
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: {key} has duplicate ids")
        if want is not None and set(ids) != set(map(str, want)):
            extra = sorted(set(ids) - set(map(str, want)))[:3]
            absent = sorted(set(map(str, want)) - set(ids))[:3]
            raise ValueError(f"{path}: {key} do not match the annotations "
                             f"(unexpected e.g. {extra}, missing e.g. {absent})")
