"""Evaluators, chosen by name from ``config.evals`` (big_vision's plug-in shape).

Each evaluator is a module of this package with one function,

    evaluate(model, params, mesh, config, out=None) -> Result

``out`` is None during training (the periodic evaluation: metrics only, kept cheap); the eval
mode passes ``<workdir>/eval``, where the evaluator runs its full protocol and writes its
artefacts. Training (`train.train_and_evaluate`) and the eval mode (`evaluate.evaluate_run`)
both call `run`, which runs every configured evaluator and merges their results; neither
knows any evaluator by name. Adding a benchmark is adding a module here and its name to
`config.EVALUATORS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib


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
