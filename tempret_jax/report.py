"""Evaluation reports: plots (PNG) of an evaluation and of training (the HTML gallery of
retrieval results is `tempret_jax.gallery`).

- `plot_verb_ap` / `verb_ap_png`: mean V2T AP per verb class, the top and bottom 20 classes
  (a file, or PNG bytes for TensorBoard).
- `plot_rerank_curve`: average mAP against the rerank depth K.
- `plot_training_curves`: every numeric series of <workdir>/metrics.jsonl against the step.

Everything is written atomically (`tempret_jax.atomic`).
"""

from __future__ import annotations

import io
import json

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tempret_jax import atomic  # noqa: E402


PANELS_KEY = "tempret-panels"  # PNG text chunk: the panels' titles and axis labels (JSON)


def _figure_png(fig) -> bytes:
    """``fig`` as PNG bytes with a description of each panel in its metadata (`panels`);
    closes the figure."""
    described = [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel()}
                 for ax in fig.axes if ax.axison]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight",
                metadata={PANELS_KEY: json.dumps(described)})
    plt.close(fig)
    return buffer.getvalue()


def _save_figure(fig, path) -> None:
    """Writes ``fig`` as PNG (`_figure_png`)."""
    atomic.write_bytes(path, _figure_png(fig))


def panels(path) -> list[dict]:
    """The panels a PNG of this module shows: [{'title', 'xlabel', 'ylabel'}], read back from
    the image file."""
    with Image.open(path) as image:
        return json.loads(image.text[PANELS_KEY])


def verb_ap(ap_per_clip: np.ndarray, verb_class: np.ndarray) -> dict[int, float]:
    """Mean AP (percent) per verb class over the clips that have one (NaN rows ignored).

    ap_per_clip (n_clips,) fractions, e.g. `metrics.mir_per_row(...)[('mAP', 'v2t')]`;
    verb_class (n_clips,) int.
    """
    out = {}
    for verb in np.unique(verb_class):
        values = ap_per_clip[verb_class == verb]
        if np.isfinite(values).any():
            out[int(verb)] = 100 * float(np.nanmean(values))
    return out


def plot_verb_ap(path, ap_per_clip: np.ndarray, verb_class: np.ndarray,
                 verb_names: dict[int, str] | None = None, top: int = 20) -> None:
    """Writes `verb_ap_png` to ``path``."""
    atomic.write_bytes(path, verb_ap_png(ap_per_clip, verb_class, verb_names, top))


def verb_ap_png(ap_per_clip: np.ndarray, verb_class: np.ndarray,
                verb_names: dict[int, str] | None = None, top: int = 20) -> bytes:
    """PNG of bar charts of the ``top`` best and worst verb classes by mean V2T AP; one chart
    of every class when there are at most 2 * top (two would show the same classes twice).
    ap_per_clip, verb_class (n_clips,): as `verb_ap` takes them."""
    per_verb = sorted(verb_ap(ap_per_clip, verb_class).items(), key=lambda kv: -kv[1])
    names = verb_names or {}
    if len(per_verb) <= 2 * top:
        parts = [(f"all {len(per_verb)} verb classes, best first", per_verb)]
    else:
        parts = [(f"the {top} best verb classes", per_verb[:top]),
                 (f"the {top} worst verb classes", per_verb[-top:][::-1])]
    rows = max(len(part) for _, part in parts)
    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 0.25 * rows + 1.5),
                             squeeze=False, layout="constrained")
    for ax, (title, part) in zip(axes.flat, parts):
        labels = [names.get(v, str(v)) for v, _ in part]
        ax.barh(range(len(part)), [a for _, a in part], color="tab:blue")
        ax.set_yticks(range(len(part)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("mean AP of its clips (V2T, %)")
        ax.set_ylabel("verb class")
        ax.set_title(title, fontsize=10)
    return _figure_png(fig)


def plot_rerank_curve(path, map_by_k: dict[int, float], baseline: float | None = None) -> None:
    """Average mAP (percent) against the rerank depth K; ``baseline`` is the dual encoder."""
    ks = sorted(map_by_k)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, [map_by_k[k] for k in ks], marker="o", label="reranked")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="dual encoder")
    ax.set_xlabel("K (candidates rescored per query)")
    ax.set_ylabel("avg mAP (%)")
    ax.set_title("mAP against the rerank depth")
    ax.legend()
    _save_figure(fig, path)


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file; a malformed line is an error naming its number."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
    return records


def _numeric_series(records: list[dict]) -> dict[str, tuple[list, list]]:
    """Flattens nested numeric fields ('mAP/avg') into (steps, values) series."""
    series: dict[str, tuple[list, list]] = {}

    def walk(prefix, value, step):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else k, v, step)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            steps, values = series.setdefault(prefix, ([], []))
            steps.append(step)
            values.append(value)

    for record in records:
        if "step" in record:
            walk("", {k: v for k, v in record.items() if k not in NOT_METRICS},
                 record["step"])
    return series


# Bookkeeping fields of metrics.jsonl records, not curves.
NOT_METRICS = ("step", "time", "elapsed_s", "config")


def plot_training_curves(path, metrics_jsonl) -> list[str]:
    """One panel per numeric series of a metrics.jsonl, against the step. Returns the names."""
    series = _numeric_series(read_jsonl(metrics_jsonl))
    if not series:
        raise ValueError(f"{metrics_jsonl}: no records with a 'step' and numeric values")
    names = sorted(series)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes.flat, names):
        steps, values = series[name]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(name.split("/")[0])
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    _save_figure(fig, path)
    return names
