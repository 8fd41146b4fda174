"""EK-100 Multi-Instance Retrieval: mAP and nDCG of both directions on a prepared split.

    clips, sentences --embedding.embed_split--> unit embeddings (TTA views, refinement)
    similarity = video @ text.T (n_clips, n_sentences) [or dual-softmax: EgoVLP's | over them]
    [rerank: each query's top-K by the similarity get s + alpha * P(match) of the cross-encoder]
    --metrics.mir_per_row (host) | sharded_metrics.mir_per_row (the mesh's accelerators)-->
    each query's AP / nDCG --metrics.summarize--> mAP / nDCG (percent; V2T, T2V, average)

Config keys (``config.eval``, documented in `tempret_jax.config`): split, batch_size,
num_workers, chunk, tta, tta_views, tta_reduce, dual_softmax, dual_softmax_temperature,
metrics_backend, submission_sls, rerank.*.

During training (``out`` None) the evaluation stops at the dual encoder's metrics. The eval
mode (``out`` = ``<workdir>/eval``) also reranks (``rerank.k`` > 0; ``rerank.alphas`` /
``rerank.ks`` pick alpha and K on the training clips held out of training, ``data.holdout_clips``,
and the sentences that are a hit for one of them: data neither the cross-encoder nor the
choice of K saw in training) and writes similarity.npy (clips x sentences, the dual encoder's final
scores), submission.pkl (challenge format), verb_ap.png, rerank_curve.png (with reranking),
training_curves.png / eval_curves.png (from the run's train_metrics.jsonl / metrics.jsonl) and
gallery.html. Process 0 writes.
"""

from __future__ import annotations

import pathlib
import time

import jax
import numpy as np

from tempret_jax import atomic, embedding, gallery, metrics, rerank, sharded_metrics
from tempret_jax import config as config_lib
from tempret_jax.data import pipeline, prepare
from tempret_jax.evaluators import Result


def evaluate(model, params, mesh, config, out: pathlib.Path | None = None) -> Result:
    """Scores ``config.eval.split`` (see the module docstring). Returns record {'mAP', 'nDCG'}
    (+ settings, 'rerank' and 'timings_s' when ``out`` is given) and scalars 'mAP_avg', ..."""
    e = config.eval
    full = out is not None
    timings, tick = {}, time.perf_counter()
    embedded = embedding.embed_split(model, params, mesh, config.dataset_dir, split=e.split,
                                     tokens=full and e.rerank.k > 0,
                                     **embedding.split_settings(config))
    timings["embedding"], tick = time.perf_counter() - tick, time.perf_counter()
    dual_softmax = config_lib.dual_softmax_settings(e)
    sim = embedded.similarity(*dual_softmax)
    timings["scoring"], tick = time.perf_counter() - tick, time.perf_counter()
    per_row = mir_per_row(sim, embedded.rel, mesh,
                          metrics_backend(config_lib.eval_key(e, "metrics_backend"), mesh))
    result = metrics.summarize(per_row)
    timings["metrics"] = time.perf_counter() - tick
    scalars = {f"{name}_{k}": float(v) for name, d in result.items() for k, v in d.items()}
    title = f"{e.split} split ({sim.shape[0]} clips x {sim.shape[1]} sentences)"
    images = {"verb_ap": _verb_ap_png(config, embedded, per_row)}
    if not full:
        return Result(record=dict(result), scalars=scalars,
                      table=f"{title}\n{metrics.format_table(result)}", images=images)

    record = {"split": e.split, "clips": int(sim.shape[0]), "sentences": int(sim.shape[1]),
              "views": len(embedding.eval_views(e)), "tta_reduce": e.tta_reduce,
              "dual_softmax": dual_softmax[0], **result}
    tables = [f"{title}\n{metrics.format_table(result)}"]
    curve = None
    if e.rerank.k > 0:
        record["rerank"], curve, table = _rerank(model, params, mesh, config, embedded, sim,
                                                 timings)
        tables.append(table)
    record["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    if jax.process_index() == 0:
        atomic.write_bytes(out / "verb_ap.png", images["verb_ap"])
        _write_outputs(out, config, embedded, sim, result, curve, per_row)
    return Result(record=record, scalars=scalars, table="\n\n".join(tables), images=images)


def metrics_backend(setting: str, mesh) -> str:
    """'host' or 'device': where ``eval.metrics_backend`` = ``setting`` (config.METRICS_BACKENDS)
    computes the metrics of an evaluation on ``mesh``; 'auto' is 'device' on TPUs and GPUs."""
    if setting == "auto":
        return "host" if mesh.devices.flat[0].platform == "cpu" else "device"
    return setting


def mir_per_row(sim: np.ndarray, rel: np.ndarray, mesh, backend: str) -> dict:
    """`metrics.mir_per_row` of (n_clips, n_sentences) ``sim`` and ``rel`` on the host or by
    `sharded_metrics` on ``mesh``'s devices (``backend``): {('mAP' | 'nDCG', 'v2t'): (n_clips,),
    (..., 't2v'): (n_sentences,)} float64 fractions, NaN where undefined."""
    if backend == "host":
        return metrics.mir_per_row(sim, rel)
    # float64 as the host's: the means over thousands of queries are taken in float64.
    return {key: value.astype(np.float64)
            for key, value in sharded_metrics.mir_per_row(sim, rel, mesh).items()}


def _verb_ap_png(config, embedded: embedding.Embedded, per_row: dict) -> bytes:
    """The per-verb AP chart (`report.verb_ap_png`) of the split's clips."""
    from tempret_jax import report  # matplotlib: only when a figure is drawn

    clips, _ = prepare.load_annotations(config.dataset_dir, config.eval.split)
    names = {int(c): str(v) for c, v in zip(clips.verb_class, clips.verb)}
    return report.verb_ap_png(per_row["mAP", "v2t"], clips.verb_class[embedded.clip_rows], names)


def _rerank(model, params, mesh, config, embedded, sim, timings) -> tuple[dict, dict, str]:
    """(the record's 'rerank' entry, mAP by K, the table) of the two-stage ranking."""
    r = config.eval.rerank
    tick = time.perf_counter()
    (k, alpha), sweep = (int(r.k), float(r.alpha)), None
    if len(r.alphas) or len(r.ks):
        (k, alpha), sweep = tune(model, params, mesh, config)
    timings["tuning"], tick = time.perf_counter() - tick, time.perf_counter()
    kmax = max([k, *r.curve_ks])
    reranker = rerank.Reranker.score(model, params, mesh, embedded, sim, kmax, r.batch_size)
    reranked = reranker.metrics(alpha, k)
    timings["reranking"] = time.perf_counter() - tick
    curve = {int(c): reranker.metrics(alpha, int(c))["mAP"]["avg"] for c in r.curve_ks}
    entry = {"k": k, "alpha": alpha, "sweep": sweep, "map_by_k": curve, **reranked}
    return entry, curve, f"reranked: top {k}, alpha {alpha:g}\n{metrics.format_table(reranked)}"


def tune(model, params, mesh, config) -> tuple[tuple[int, float], dict]:
    """Picks K among rerank.ks and alpha among rerank.alphas (either defaults to rerank.k /
    rerank.alpha) by the avg mAP of the held-out training clips (`pipeline.holdout`).

    Returns ((K, alpha), {K: {alpha: avg mAP}})."""
    r = config.eval.rerank
    ks = [int(k) for k in r.ks] or [int(r.k)]
    alphas = [float(a) for a in r.alphas] or [float(r.alpha)]
    held_out = embedding.embed_split(
        model, params, mesh, config.dataset_dir, split=config.data.train_split, tokens=True,
        records=pipeline.holdout(config.dataset_dir, config.data), only_hit_sentences=True,
        **embedding.split_settings(config))
    reranker = rerank.Reranker.score(model, params, mesh, held_out,
                                     held_out.similarity(
                                         *config_lib.dual_softmax_settings(config.eval)),
                                     max(ks),
                                     r.batch_size)
    best, results = reranker.sweep(alphas, ks)
    return best, {str(k): {f"{a:g}": v for a, v in row.items()} for k, row in results.items()}


def _write_outputs(out: pathlib.Path, config, embedded: embedding.Embedded, sim: np.ndarray,
                   result: dict, curve: dict | None, per_row: dict) -> None:
    """similarity.npy, submission.pkl, the other plots and the gallery (module docstring)."""
    from tempret_jax import report  # matplotlib: only when a report is written

    split = config.eval.split
    clips, sentences = prepare.load_annotations(config.dataset_dir, split)
    with atomic.writer(out / "similarity.npy", "wb") as f:
        np.save(f, sim)
    metrics.write_submission(out / "submission.pkl", sim, clips.narration_id[embedded.clip_rows],
                             sentences.narration_id[embedded.sentence_rows],
                             tuple(config.eval.submission_sls))
    if curve:
        report.plot_rerank_curve(out / "rerank_curve.png", curve, baseline=result["mAP"]["avg"])
    run_dir = out.parent
    for source, name in (("train_metrics.jsonl", "training_curves.png"),
                         ("metrics.jsonl", "eval_curves.png")):
        if (run_dir / source).is_file():
            report.plot_training_curves(out / name, run_dir / source)
    # Prepared records are in CSV order without the skipped clips: sorted clip rows are records.
    gallery.write_gallery(
        out / "gallery.html", sim, embedded.rel, clips.narration_id[embedded.clip_rows],
        clips.narration[embedded.clip_rows], sentences.narration[embedded.sentence_rows],
        pipeline.clip_frames(config.dataset_dir, split), title=f"{config.name}: {split} split",
        per_row=per_row)
