"""A run's own config: saved beside it with paths relative to the run, read back as a config.

Training saves ``<workdir>/config.json``, the eval mode ``eval/config.json``, search
``search/config.json`` (`save`). A path inside the workdir (the demo's prepared data, a
converted checkpoint copied in) is saved relative to it, so a run folder that is moved or
copied elsewhere still finds them; a path outside stays absolute. `load` resolves them again.

This file is also a config file for ``--config``: ``--config tempret_jax/run_config.py:RUN``
is RUN's saved config, with ``--config.key=value`` overrides as for any config; main uses it
when ``--config`` is left out and the workdir has a saved config.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections

from tempret_jax import atomic
from tempret_jax import config as config_lib
from tempret_jax.models import retrieval

# The paths a config names.
PATH_KEYS = ("dataset_dir", "annotation_dir", "init_from.path", "model.text.vocab_file",
             "eval.egomcq_dir", "eval.charades_ego_dir")
SAVED = (config_lib.CONFIG_FILE, f"eval/{config_lib.CONFIG_FILE}",
         f"search/{config_lib.CONFIG_FILE}")  # where a run's config may be, in this order


def _paths(tree: dict):
    """(parent dict, key) of each path key present in a config's dict."""
    for dotted in PATH_KEYS:
        *blocks, key = dotted.split(".")
        node = tree
        for block in blocks:
            node = node.get(block) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            yield node, key


def save(config: ml_collections.ConfigDict, path, workdir) -> None:
    """Writes ``config`` as JSON to ``path``, paths inside ``workdir`` made relative to it."""
    tree = json.loads(config.to_json_best_effort())
    root = pathlib.Path(workdir).absolute()
    for node, key in _paths(tree):
        value = pathlib.Path(node[key]).absolute()
        if value.is_relative_to(root):
            node[key] = str(value.relative_to(root))
    atomic.write_text(path, json.dumps(tree, indent=2))


def load(workdir) -> ml_collections.ConfigDict:
    """The config a run saved (`SAVED`, first found), its relative paths resolved against
    ``workdir`` where it is now. Raises config.ConfigError if it saved none."""
    root = pathlib.Path(workdir).absolute()
    found = next((root / name for name in SAVED if (root / name).is_file()), None)
    if found is None:
        raise config_lib.ConfigError(
            f"{root} has no saved config ({', '.join(SAVED)}): pass the run's config "
            f"(--config configs/X.py) once")
    tree = json.loads(found.read_text())
    for node, key in _paths(tree):
        if not pathlib.Path(node[key]).is_absolute():
            node[key] = str(root / node[key])
    config = ml_collections.ConfigDict(tree)
    if "model" in config:
        retrieval.fill_added_keys(config.model)
    return config


def get_config(arg: str) -> ml_collections.ConfigDict:
    """``--config tempret_jax/run_config.py:RUN``: RUN's saved config."""
    if not arg:
        raise config_lib.ConfigError("tempret_jax/run_config.py needs the run's folder: "
                                     "--config tempret_jax/run_config.py:RUN")
    return load(arg)
