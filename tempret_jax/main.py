"""The command line: python -m tempret_jax.main --config configs/X.py[:arg] --workdir DIR [--mode M].

Modes:
  train_and_eval (default)  train (resuming from DIR), evaluating every eval.every_steps
  train                     the same without evaluation
  eval                      score the run's checkpoint (``--step``, default the latest) or a
                            converted one (``--checkpoint``) with every evaluator of
                            ``config.evals``; writes DIR/eval/ (`tempret_jax.evaluate`)
  search                    the run's test clips best matching ``--query`` (`tempret_jax.search`);
                            with ``--checkpoint``, a converted checkpoint's

``--config`` may be left out once the run has saved its config (`tempret_jax.run_config`): the
run is resumed, evaluated or searched from ``--workdir`` alone, overrides included, also after
the folder was moved (the paths inside it are saved relative to it). ``--mode eval --checkpoint
CONVERTED`` without it is the zero-shot evaluation of a converted checkpoint
(`tempret_jax.zero_shot`: its own model config, the eval protocol of the benchmark whose corpus
``--config.dataset_dir`` is: EK-100 MIR, EgoMCQ or Charades-Ego).

Any config key can be overridden on the command line (``--config.optim.lr=1e-4``); a misspelt
key is an error naming the nearest one. The config is validated before any work starts.
Errors are one line on stderr (exit 2: bad input; 1: anything else); ``--debug`` or
TEMPRET_DEBUG=1 shows the traceback instead.

Several processes (the hosts of a TPU slice, the nodes of a GPU cluster) train one run when
each runs the same command with ``--distributed`` (on TPU VMs, Slurm and Open MPI JAX finds
the others; elsewhere add ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I``): the mesh spans every process's devices, each reads its share of the batch,
process 0 writes the logs and metrics (docs/design.md, Scaling out).

A config with a ``synthetic`` block (configs/synthetic.py) first generates SynthKitchens under
<workdir>/synthkitchens and prepares it through the real preparation path into <workdir>/data
(both skipped or resumed when already there). EK-100 configs take the prepared data set from
``--config.dataset_dir``. A config whose ``job`` is 'random_baseline' scores random
similarities on the EK-100 test split instead (the floor of every table).
"""

import os
import pathlib
import re
import shlex
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from tempret_jax import (atomic, auto_fit, checkpoint, convert, epochs, evaluate, evaluators,
                         lock, metrics, run_config, search, train, zero_shot)
from tempret_jax import config as config_lib
from tempret_jax.data import ek100, prepare, synthetic, verify
from tempret_jax.data.text_tokens import TextTokenizer
from tempret_jax.models import retrieval

MODES = ("train_and_eval", "train", "eval", "search")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (a Python file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints.")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", MODES, "What to run (see the module doc).")
_STEP = flags.DEFINE_integer("step", -1, "eval / search: the checkpoint step (-1: the latest).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "eval / search: a converted / params-only "
                                  "checkpoint to use instead of the run's own.")
_QUERY = flags.DEFINE_string("query", "", "search: the text to search for.")
_TOP = flags.DEFINE_integer("top", 10, "search: how many clips to print.")
flags.DEFINE_bool("debug", False, "Print the traceback of an error (also: TEMPRET_DEBUG=1).")
# Several processes (hosts) on one run: each runs the same command (module docstring).
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join the run's other processes "
                                 "(jax.distributed) before anything else.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of "
                                   "process 0 (default: found on TPU VMs, Slurm, Open MPI).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process's index.")
flags.mark_flags_as_required(["workdir"])

_AUTO_KEYS: list[str] = []  # --config.KEY=auto of the command line (`_take_auto`)
SYNTHETIC_DONE = ".generated"  # written once generation has finished


def random_baseline(config, workdir: pathlib.Path) -> dict:
    """Scores seeded random similarities on the test split: the floor every model must beat."""
    rel, _, _ = ek100.load_test_relevance(config.annotation_dir)
    sim = np.random.default_rng(config.seed).standard_normal(rel.shape).astype(np.float32)
    start = time.perf_counter()
    result = metrics.mir_metrics(sim, rel)
    print(f"EK-100 MIR test split ({rel.shape[0]} clips x {rel.shape[1]} sentences), "
          f"random similarities (seed {config.seed}); metrics in {time.perf_counter() - start:.1f} s")
    print(metrics.format_table(result))
    atomic.write_json(workdir / "metrics.json", {"config": config.name, "job": config.job, **result})
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


def _find_dataset(config, workdir: pathlib.Path) -> None:
    """Sets ``config.dataset_dir`` (SynthKitchens made under ``workdir`` if configured), checks
    it was prepared from ``config.annotation_dir`` when one is given, and that each evaluator
    has a data set of its corpus (`evaluators.check_datasets`)."""
    if config.get("synthetic") is not None and not config.dataset_dir:
        with config.unlocked():
            config.dataset_dir = synthetic_dataset(config, workdir)
    if not config.dataset_dir:
        raise config_lib.ConfigError("config: dataset_dir: expected a prepared data set "
                                     "(tools/prepare_ek100.py makes one), got ''")
    config.dataset_dir = prepare.find_dataset(config.dataset_dir)
    if config.get("annotation_dir"):  # the user's annotations: the data set must be made of them
        prepare.check_annotation_dir(config.dataset_dir, config.annotation_dir)
    evaluators.check_datasets(config)


def _check_tokenizer(config) -> None:
    """The text tower's tokenizer can be made (a DistilBERT tower's vocabulary file exists and
    fits its embedding table): checked before any data is read or made."""
    try:
        TextTokenizer.of(config.model.text)
    except (ValueError, OSError) as e:
        raise config_lib.ConfigError(f"config: {e}") from None


def _adopt_architecture(config) -> None:
    """``init_from.architecture='checkpoint'``: the model takes the architecture of what it
    starts from, a converted checkpoint's or a run's (its saved config; e.g. a fine-tune from
    a pretraining run whose model the fine-tuning recipe does not name)."""
    f = config.init_from
    if f.architecture != "checkpoint" or not f.path:
        return
    if convert.is_converted(f.path):
        convert.adopt_architecture(config.model, f.path)
        return
    path = pathlib.Path(f.path)
    run = path.parent if path.name == checkpoint.CHECKPOINTS else path
    if (run / config_lib.CONFIG_FILE).is_file():
        retrieval.adopt_architecture(config.model, run_config.load(run).model)


def run(config, workdir: pathlib.Path, mode: str, *, step: int | None = None,
        checkpoint_path: str = "") -> int:
    """Runs the configured job in ``mode`` (train_and_eval | train | eval); returns the exit
    code. Raises config.ConfigError / checkpoint.CheckpointError on bad input."""
    workdir = pathlib.Path(workdir)
    if config.get("job") == "random_baseline":
        random_baseline(config, workdir)
        return 0
    _adopt_architecture(config)
    config_lib.validate(config, jax.device_count(), jax.process_count(), allow_auto=True)
    if auto_fit.has_auto(config):  # before the config is saved: the run keeps what was chosen
        auto_fit.resolve(config, jax.devices(), auto_fit.device_memory(jax.devices()[0]),
                         say=print if jax.process_index() == 0 else lambda _: None)
        config_lib.validate(config, jax.device_count(), jax.process_count())
    _check_tokenizer(config)
    if mode == "eval":
        _find_dataset(config, workdir)
        evaluate.run(config, workdir, step=step, checkpoint=checkpoint_path)
        _print_outputs(workdir)
        return 0
    with lock.WorkdirLock(workdir):  # before anything is written: data, config, checkpoints
        _find_dataset(config, workdir)
        resolved = epochs.resolve(config)  # a recipe in epochs of its data set: now steps
        if resolved:
            if jax.process_index() == 0:
                print(resolved, flush=True)
            config_lib.validate(config, jax.device_count(), jax.process_count())
        # The resolved config beside the run: eval and search reopen the run from it.
        run_config.save(config, workdir / config_lib.CONFIG_FILE, workdir)
        if mode == "train":
            config.eval.every_steps = -1
        try:
            result = train.train_and_evaluate(config, workdir)
        except (train.NonFiniteError, train.EvaluationError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if result["preempted"]:
        print(f"preempted at step {result['step']}; rerun the same command to resume")
    else:
        _print_outputs(workdir)
    return 0


def outputs(workdir: pathlib.Path) -> str:
    """Where the run in ``workdir`` keeps its metrics, plots, gallery and TensorBoard logs
    (what exists; for plots and gallery not written yet, the command that writes them): the
    lines a run or an evaluation ends with, paths as given on the command line."""
    eval_dir = workdir / evaluate.EVAL_DIR
    metrics_files = [p for p in (workdir / "metrics.json", eval_dir / "metrics.json")
                     if p.is_file()]
    plots, gallery = sorted(eval_dir.glob("*.png")), eval_dir / "gallery.html"
    make = (f"not written yet: python -m tempret_jax.main --mode eval --workdir "
            f"{shlex.quote(str(workdir))} writes them to {eval_dir}/")
    lines = [f"outputs of {workdir}:",
             f"  metrics      {', '.join(map(str, metrics_files)) or 'none yet'}",
             f"  plots        {', '.join(map(str, plots)) or make}",
             f"  gallery      {gallery if gallery.is_file() else make}"]
    logs = workdir / "tensorboard"
    if logs.is_dir():
        lines.append(f"  TensorBoard  tensorboard --logdir {shlex.quote(str(logs))}")
    return "\n".join(lines)


def _print_outputs(workdir: pathlib.Path) -> None:
    if jax.process_index() == 0:
        print(f"\n{outputs(workdir)}", flush=True)


def print_search(workdir: pathlib.Path, query: str, top: int, config=None,
                 step: int | None = None, checkpoint_path: str = "") -> None:
    """Prints the ``top`` clips of the run in ``workdir`` (or of a converted checkpoint) for
    ``query``."""
    if config is not None and config.get("dataset_dir"):
        config.dataset_dir = prepare.find_dataset(config.dataset_dir)
    searcher = search.Searcher.open(workdir, config, step=step, checkpoint=checkpoint_path)
    hits = searcher.search(query, top)
    meta = searcher.index.meta
    print(f"{meta['config']} step {meta['step']}, {meta['split']} split "
          f"({len(searcher.index.clip_rows)} clips, index {'built' if searcher.rebuilt else 'cached'})")
    print(f"{'rank':>4}  {'score':>7}  {'narration_id':<16} narration")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:7.4f}  {h.narration_id:<16} {h.narration}")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every file it writes at INFO
        logging.set_verbosity(logging.WARNING)
    workdir, step = pathlib.Path(_WORKDIR.value), _STEP.value if _STEP.value >= 0 else None
    try:
        _join_processes()
        if _MODE.value == "search":
            print_search(workdir, _QUERY.value, _TOP.value, _CONFIG.value, step,
                         _CHECKPOINT.value)
            return
        if _CONFIG.value is None:
            raise app.UsageError(f"--config is required for --mode {_MODE.value}")
        config_lib.set_auto(_CONFIG.value, _AUTO_KEYS)
        code = run(_CONFIG.value, workdir, _MODE.value, step=step,
                   checkpoint_path=_CHECKPOINT.value)
    except (config_lib.ConfigError, checkpoint.CheckpointError, search.SearchError,
            convert.ConversionError,
            lock.WorkdirBusyError, verify.DatasetError, ek100.AnnotationError,
            prepare.PrepareError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001  anything else: one line, the traceback on request
        if _debugging():
            raise
        print(f"error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the "
              f"traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


def _join_processes() -> None:
    """jax.distributed.initialize with the --distributed flags: before any JAX computation,
    so that every process sees the devices of all (TPU slices, Slurm and Open MPI clusters
    are found without the address flags)."""
    given = {"coordinator_address": _COORDINATOR.value, "num_processes": _NUM_PROCESSES.value,
             "process_id": _PROCESS_ID.value}
    if not _DISTRIBUTED.value:
        named = [f"--{k}" for k, v in given.items() if v is not None]
        if named:
            raise config_lib.ConfigError(f"command line: {', '.join(named)} needs "
                                         f"--distributed")
        return
    jax.distributed.initialize(**given)


def _debugging(argv=None) -> bool:
    """--debug on the command line (read before the flags parse) or TEMPRET_DEBUG=1."""
    return "--debug" in (argv or sys.argv) or os.environ.get("TEMPRET_DEBUG", "0") != "0"


def _one_line(e: BaseException) -> str:
    # ml_collections' messages arrive as the repr of a string: escaped quotes and newlines.
    text = str(e).replace("\\n", " ").replace("\\'", "'").strip("'\" ")
    return " ".join(text.split())[:500]


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=V`` / ``--name V`` in argv (None when absent)."""
    value = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)
    if value is None and f"--{name}" in argv[:-1]:
        value = argv[argv.index(f"--{name}") + 1]
    return value


def _with_run_config(argv: list[str]) -> list[str]:
    """argv, with a ``--config`` added when it names none: ``tempret_jax/run_config.py:WORKDIR``
    when WORKDIR holds a saved config (a run is reopened: resumed, evaluated, searched, from
    its folder alone), else ``tempret_jax/zero_shot.py:CKPT[,benchmark]`` when ``--checkpoint
    CKPT`` is a converted checkpoint (zero-shot evaluation on the corpus of
    ``--config.dataset_dir``); ``--config.key=value`` overrides included."""
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    workdir, ckpt = _flag_value(argv, "workdir"), _flag_value(argv, "checkpoint")
    if workdir is not None and any((pathlib.Path(workdir) / n).is_file()
                                   for n in run_config.SAVED):
        return [argv[0], f"--config={run_config.__file__}:{workdir}", *argv[1:]]
    if ckpt and convert.is_converted(ckpt):  # the benchmark of --config.dataset_dir's corpus
        arg = zero_shot.config_arg(ckpt, _flag_value(argv, "config.dataset_dir"))
        return [argv[0], f"--config={zero_shot.__file__}:{arg}", *argv[1:]]
    return argv


def _take_auto(argv: list[str]) -> tuple[list[str], list[str]]:
    """argv without its ``--config.KEY=auto`` / ``--config.KEY auto`` (KEY of
    `config.AUTO_KEYS`), and those keys: absl parses an override by the type of the key's
    value, a bool or an int, which refuses 'auto'. `main` sets them once the config is read."""
    kept, keys, i = [], [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        key = flag.removeprefix("--config.")
        if not eq:  # --config.KEY VALUE
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if key != flag and key in config_lib.AUTO_KEYS and value == config_lib.AUTO:
            keys.append(key)
            i += 1 if eq else 2
        else:
            kept.append(argv[i])
            i += 1
    return kept, keys


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag or config override as one line, exit 2 (a
    misspelt ``--config.key`` raises from deep inside ml_collections); ``--config.KEY=auto``
    is taken out first (`_take_auto`)."""
    global _AUTO_KEYS
    argv, _AUTO_KEYS = _take_auto(argv)
    try:
        return flags.FLAGS(_with_run_config(argv))
    except Exception as e:  # noqa: BLE001  flags.Error, or the AttributeError of an override
        if _debugging(argv):
            raise
        text = _one_line(e)
        typo = re.search(r"(\w+)\W* Did you mean \"(\w+)\"", text)
        if typo:  # ml_collections' wording of a misspelt --config.key
            text = f"--config override: no such key {typo[1]!r}; did you mean {typo[2]!r}?"
        print(f"error: command line: {text}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
