"""The embedded demo reaches 3x the random baseline of its split (slow: about 8 minutes)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tempret_jax import metrics
from tempret_jax.data import ek100


@pytest.mark.slow
def test_demo_beats_three_times_random(tmp_path):
    subprocess.run([sys.executable, "-m", "tempret_jax.main", "--config", "configs/synthetic.py",
                    "--workdir", str(tmp_path)], check=True)
    result = json.loads((tmp_path / "metrics.json").read_text())
    rel, _, _ = ek100.load_test_relevance(tmp_path / "synthkitchens" / "annotations")
    random = np.mean([metrics.mir_metrics(np.random.default_rng(s).standard_normal(rel.shape),
                                          rel)["mAP"]["avg"] for s in range(5)])
    assert result["mAP"]["avg"] >= 3 * random, (result["mAP"], random)
