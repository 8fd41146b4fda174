"""Evaluators, chosen by name from ``config.evals`` (big_vision's plug-in shape).

Each evaluator is a module of this package with one function,

    evaluate(model, params, mesh, config, out=None) -> Result

``out`` is None during training (the periodic evaluation: metrics only, kept cheap); the eval
mode passes ``<workdir>/eval``, where the evaluator runs its full protocol and writes its
artefacts. Training (`train.train_and_evaluate`) and the eval mode (`evaluate.evaluate_run`)
both call `run`, which runs every configured evaluator and merges their results; neither
knows any evaluator by name. Adding a benchmark is adding a module here and its name to
`config.EVALUATORS`. An evaluator of one corpus only (egomcq: Ego4D, charades_ego) names it
as its module's ``CORPUS`` and scores the data set ``config.eval.<name>_dir`` (`dataset`), so
that a run trained on one corpus is evaluated on another.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib

from tempret_jax import config as config_lib
from tempret_jax.data import corpora, prepare, verify


@dataclasses.dataclass
class Result:
    """What an evaluator returns.

    record: JSON-able numbers and settings, merged into metrics.json ({'mAP': {'v2t': ..}, ..}).
    scalars: flat {name: float} (checkpoint ranking by ``checkpoint.best_metric``, logs).
    table: the human-readable summary printed after the evaluation.
    images: {name: PNG bytes} figures for TensorBoard (training logs them as eval/<name>).
    """

    record: dict
    scalars: dict[str, float]
    table: str
    images: dict[str, bytes] = dataclasses.field(default_factory=dict)


def get(name: str):
    """The evaluator module ``name`` (one of `config.EVALUATORS`)."""
    return importlib.import_module(f"{__name__}.{name}")


def dataset(config, name: str) -> str:
    """The prepared data set evaluator ``name`` scores: ``config.eval.<name>_dir``, or
    ``config.dataset_dir`` where that key is '' or absent (configs saved before it), a
    preparation's output folder resolved to its one data set (`prepare.find_dataset`).

    Raises config.ConfigError naming the key unless the data set is of the module's ``CORPUS``
    (an evaluator without one takes any).
    """
    key = f"{name}_dir"
    chosen = config.eval.get(key, "")
    path = prepare.find_dataset(chosen or config.dataset_dir)
    corpus = getattr(get(name), "CORPUS", None)
    found = _what_is(path)
    if corpus is not None and found != f"a data set of corpus {corpus.name}":
        raise config_lib.ConfigError(
            f"config: {'eval.' + key if chosen else 'dataset_dir'}: evaluator {name!r} expected "
            f"a prepared {corpus.name} data set (tools/prepare.py --corpus {corpus.name}; or "
            f"set eval.{key}), got {path!r}: {found}")
    return path


def _what_is(path: str) -> str:
    """'a data set of corpus <name>', or what the folder is instead."""
    if not (pathlib.Path(path) / prepare.ANNOTATIONS).is_dir():
        return "no prepared data set there"
    try:
        return f"a data set of corpus {corpora.of_dataset(path).name}"
    except verify.DatasetError as e:
        return str(e)


def check_datasets(config) -> None:
    """`dataset` of every evaluator of ``config.evals``: a wrong data set is an error before
    a run starts, not at its first evaluation."""
    for name in config.evals:
        dataset(config, name)


def run(model, params, mesh, config, out: pathlib.Path | None = None) -> Result:
    """Runs every evaluator of ``config.evals`` and merges their results.

    Raises ValueError if two evaluators report the same record or scalar name.
    """
    merged = Result(record={}, scalars={}, table="", images={})
    tables = []
    for name in config.evals:
        result = get(name).evaluate(model, params, mesh, config, out)
        for field in ("record", "scalars", "images"):
            mine, theirs = getattr(merged, field), getattr(result, field)
            clash = sorted(set(mine) & set(theirs))
            if clash:
                raise ValueError(f"evaluator {name!r} reports {field} {clash} already reported "
                                 f"by another evaluator of config.evals")
            mine.update(theirs)
        tables.append(result.table)
    merged.table = "\n\n".join(tables)
    return merged
