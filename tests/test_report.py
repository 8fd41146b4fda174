"""Evaluation reports: plots are PNG files described in their metadata (the gallery:
tests/test_gallery.py)."""

import json

import numpy as np
import pytest
from PIL import Image

from tempret_jax import metrics, report


def _is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and im.width > 100


def test_verb_ap_averages_per_class_and_ignores_nan():
    ap = np.array([0.5, 1.0, np.nan, 0.2])
    assert report.verb_ap(ap, np.array([3, 3, 7, 9])) == {3: 75.0, 9: pytest.approx(20.0)}


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(0)
    sim, rel = rng.standard_normal((40, 30)), rng.choice([0, 0.5, 1], size=(40, 30))
    ap = metrics.mir_per_row(sim, rel)["mAP", "v2t"]
    report.plot_verb_ap(tmp_path / "verbs.png", ap, rng.integers(0, 25, 40), {0: "take"}, top=5)
    report.plot_rerank_curve(tmp_path / "rerank.png", {10: 5.0, 50: 6.0, 100: 6.5}, baseline=4.0)
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 2.0, "lr": 1e-4}, {"step": 2, "loss": 1.5, "lr": 2e-4},
        {"step": 2, "mAP": {"avg": 10.0}, "nDCG": {"avg": 20.0}}]))
    names = report.plot_training_curves(tmp_path / "curves.png", jsonl)
    assert names == ["loss", "lr", "mAP/avg", "nDCG/avg"]
    for name in ("verbs.png", "rerank.png", "curves.png"):
        assert _is_png(tmp_path / name)
        described = report.panels(tmp_path / name)
        titles = [p["title"] for p in described]
        assert len(set(titles)) == len(titles) and all(titles), name  # distinct, present
        assert all(p["xlabel"] and p["ylabel"] for p in described), name
    assert [p["title"] for p in report.panels(tmp_path / "curves.png")] == names
    assert len(report.panels(tmp_path / "verbs.png")) == 2  # 19 classes: best 5, worst 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "curves.png", "metrics.jsonl", "rerank.png", "verbs.png"]  # no temporaries left


def test_few_verb_classes_are_one_panel_and_bookkeeping_is_no_curve(tmp_path):
    ap = np.array([0.5, 0.25, 1.0, 0.0])
    report.plot_verb_ap(tmp_path / "verbs.png", ap, np.array([0, 1, 2, 3]))
    assert [p["title"] for p in report.panels(tmp_path / "verbs.png")] == [
        "all 4 verb classes, best first"]
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text(json.dumps({"config": "x", "step": 2, "time": "t", "elapsed_s": 3.0,
                                 "mAP": {"avg": 1.0}}))
    assert report.plot_training_curves(tmp_path / "eval.png", jsonl) == ["mAP/avg"]


def test_a_malformed_metrics_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not JSON"):
        report.plot_training_curves(tmp_path / "c.png", path)
