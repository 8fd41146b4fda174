"""Entry point: python -m tempret_jax.main --config configs/X.py[:arg] --workdir DIR [--mode M].

Modes: train | eval | train_and_eval (default). Any config key can be overridden on the
command line (``--config.optim.lr=1e-4``); a misspelt key is an error naming the nearest one.

A config with a ``synthetic`` block (configs/synthetic.py) first generates SynthKitchens under
<workdir>/synthkitchens and prepares it through the real preparation path into <workdir>/data
(both skipped or resumed when already there), then trains on it. EK-100 configs take the
prepared data set from ``--config.dataset_dir``. A config whose ``job`` is 'random_baseline'
scores random similarities on the EK-100 test split instead (the floor of every table).
"""

import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from tempret_jax import checkpoint, metrics, train
from tempret_jax.data import ek100, prepare, synthetic

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (a Python file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints.")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"],
                          "train: no evaluation; eval: score the latest checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])

SYNTHETIC_DONE = ".generated"  # written once generation has finished


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


def synthetic_dataset(config, workdir: pathlib.Path) -> str:
    """Generates and prepares SynthKitchens under ``workdir``; returns the prepared data set."""
    root = workdir / "synthkitchens"
    if not (root / SYNTHETIC_DONE).exists():
        start = time.perf_counter()
        synthetic.generate(root, synthetic.SynthConfig(**config.synthetic.to_dict()))
        (root / SYNTHETIC_DONE).touch()
        print(f"SynthKitchens generated in {time.perf_counter() - start:.1f} s: {root}", flush=True)
    summary = prepare.prepare(prepare.PrepareConfig(
        annotation_dir=str(root / synthetic.ANNOTATION_DIR), video_root=str(root),
        output_dir=str(workdir / "data"), num_frames=config.prepare.num_frames,
        short_side=config.prepare.short_side, progress=False))
    print(f"prepared {summary['clips']} clips in {summary['seconds']} s: "
          f"{summary['dataset_dir']}", flush=True)
    return summary["dataset_dir"]


def run(config, workdir: pathlib.Path, mode: str) -> int:
    """Runs the configured job; returns the process exit code."""
    if config.get("job") == "random_baseline":
        random_baseline(config, workdir)
        return 0
    if config.get("synthetic") is not None and not config.dataset_dir:
        with config.unlocked():
            config.dataset_dir = synthetic_dataset(config, workdir)
    if not config.dataset_dir:
        raise app.UsageError("config.dataset_dir is empty: pass --config.dataset_dir=<prepared "
                             "data set> (tools/prepare_ek100.py makes one)")
    if mode == "eval":
        try:
            train.evaluate(config, workdir)
        except checkpoint.CheckpointError as e:
            print(f"error: --mode eval needs a trained run in --workdir: {e}", file=sys.stderr)
            return 2
        return 0
    # The resolved config beside the run: search and evaluation reopen the run from it.
    write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
    if mode == "train":
        config.eval.every_steps = -1
    try:
        result = train.train_and_evaluate(config, workdir)
    except train.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result["preempted"]:
        print(f"preempted at step {result['step']}; rerun the same command to resume")
    return 0


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every file it writes at INFO
        logging.set_verbosity(logging.WARNING)
    sys.exit(run(_CONFIG.value, pathlib.Path(_WORKDIR.value), _MODE.value))


if __name__ == "__main__":
    app.run(main)
