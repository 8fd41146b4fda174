"""The eval mode: a trained run's (or a converted) checkpoint through the configured evaluators.

    python -m tempret_jax.main --mode eval --config configs/X.py[:arg] --workdir DIR
                               [--step N] [--checkpoint PATH]

scores the run's checkpoint in ``<workdir>/checkpoints`` (the latest step, or ``--step``; its
EMA copy when the config keeps one) or a converted / params-only checkpoint (``--checkpoint``)
with every evaluator of ``config.evals`` in its full protocol (`tempret_jax.evaluators`), and
writes ``<workdir>/eval/``: metrics.json (the evaluators' records; the tables are printed),
config.json (the config used) and each evaluator's artefacts.
"""

from __future__ import annotations

import datetime
import pathlib

import jax
import ml_collections

from tempret_jax import atomic, evaluators, run_config, state
from tempret_jax import config as config_lib

EVAL_DIR = "eval"


def run(config: ml_collections.ConfigDict, workdir, *, step: int | None = None,
        checkpoint: str = "") -> dict:
    """Evaluates and writes ``<workdir>/eval/`` (module docstring); returns the record written
    to eval/metrics.json: config, step (-1 for a converted checkpoint), checkpoint, time and
    the evaluators' records.

    Raises config.ConfigError for a bad config and checkpoint.CheckpointError when the run has
    no checkpoint (or not ``step``), was trained under another config name, or does not fit.
    """
    workdir = pathlib.Path(workdir)
    setup = state.TrainSetup(config)
    params, number = setup.load_eval_params(checkpoint or workdir, step,
                                            expect_config=None if checkpoint else config.name)
    out = workdir / EVAL_DIR
    result = evaluators.run(setup.model, params, setup.mesh, config, out)
    record = {"config": config.name, "step": number, "checkpoint": checkpoint or None,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **result.record}
    if jax.process_index() == 0:
        print(f"step {number}: {result.table}", flush=True)
        run_config.save(config, out / config_lib.CONFIG_FILE, workdir)
        atomic.write_json(out / "metrics.json", record)
    return record
