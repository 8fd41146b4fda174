"""Entry point: python -m tempret_jax.main --config configs/X.py[:arg] --workdir DIR.

Until the trainer lands (issue 6), the one job is the evaluator on a random-similarity baseline
of the EK-100 MIR test split: it scores random similarities against the real relevance, prints
the standard table and writes <workdir>/metrics.json. Configs pick the job by `config.job`.
"""

import json
import os
import pathlib
import tempfile
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from tempret_jax import metrics
from tempret_jax.data import ek100

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (a Python file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def write_json(path: pathlib.Path, value) -> None:
    """Writes JSON atomically (temporary file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def random_baseline(config, workdir: pathlib.Path) -> dict:
    """Scores seeded random similarities on the test split: the floor every model must beat."""
    rel, _, _ = ek100.load_test_relevance(config.annotation_dir)
    sim = np.random.default_rng(config.seed).standard_normal(rel.shape).astype(np.float32)
    start = time.perf_counter()
    result = metrics.mir_metrics(sim, rel)
    print(f"EK-100 MIR test split ({rel.shape[0]} clips x {rel.shape[1]} sentences), "
          f"random similarities (seed {config.seed}); metrics in {time.perf_counter() - start:.1f} s")
    print(metrics.format_table(result))
    write_json(workdir / "metrics.json", {"config": config.name, "job": config.job, **result})
    return result


JOBS = {"random_baseline": random_baseline}


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config.job not in JOBS:
        raise app.UsageError(f"config.job is {config.job!r}; expected one of {sorted(JOBS)}")
    JOBS[config.job](config, pathlib.Path(_WORKDIR.value))


if __name__ == "__main__":
    app.run(main)
