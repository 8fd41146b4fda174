"""The main entry point runs the configured job and writes its metrics."""

import json
import subprocess
import sys


def test_random_baseline_job_prints_the_table_and_writes_metrics(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--config", "configs/random_baseline.py",
         "--workdir", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "mAP" in out and "nDCG" in out and "V2T" in out
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["config"] == "random_baseline"
    assert 5.4 < result["mAP"]["avg"] < 5.9 and 10.6 < result["nDCG"]["avg"] < 11.1


def test_a_misspelt_config_key_names_the_nearest_one(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--config", "configs/random_baseline.py",
         "--workdir", str(tmp_path), "--config.sed=1"], capture_output=True, text=True)
    assert run.returncode != 0 and 'Did you mean "seed"' in run.stderr
