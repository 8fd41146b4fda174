"""Run lengths in epochs of the prepared training split, resolved into steps at start-up.

A recipe whose paper counts epochs over a data set this code does not know the size of
(Charades-Ego's training segments, a synthetic set) sets ``epochs`` (> 0),
``optim.warmup_epochs`` and ``checkpoint.every_epochs``; `resolve` turns them into
``total_steps``, ``optim.warmup_steps`` and ``checkpoint.every_steps`` from the number of records the prepared split holds (TFDS's split info, without reading a
record), less the held-out clips, at the config's global batch (the last partial batch is
dropped, as the pipeline drops it). Configs with ``epochs`` = 0 count steps as given.
"""

from __future__ import annotations

import ml_collections


def split_records(dataset_dir, split: str) -> int:
    """The number of records of a prepared split (its TFDS split info; no record is read)."""
    import tensorflow_datasets as tfds
    splits = tfds.builder_from_directory(str(dataset_dir)).info.splits
    if split not in splits:
        raise ValueError(f"{dataset_dir}: no split {split!r} (it has {sorted(splits)})")
    return int(splits[split].num_examples)


def steps_per_epoch(config: ml_collections.ConfigDict, records: int) -> int:
    """Optimiser steps per pass over ``records`` training records, less the held-out ones."""
    per_epoch = (records - config.data.holdout_clips) // config.global_batch_size
    if per_epoch < 1:
        raise ValueError(f"epochs: the {records - config.data.holdout_clips} training records "
                         f"of {config.dataset_dir} make no batch of global_batch_size "
                         f"{config.global_batch_size}")
    return per_epoch


def resolve(config: ml_collections.ConfigDict, records: int | None = None) -> str | None:
    """Sets total_steps, optim.warmup_steps and checkpoint.every_steps from ``epochs``,
    ``optim.warmup_epochs`` and ``checkpoint.every_epochs`` (in place) when ``epochs`` > 0; ``records`` defaults to the size of the config's prepared
    training split. Returns the line to print at start-up, None when there was nothing to do."""
    epochs = config.get("epochs", 0)
    if epochs <= 0:
        return None
    if records is None:
        records = split_records(config.dataset_dir, config.data.train_split)
    per_epoch = steps_per_epoch(config, records)
    config.total_steps = max(1, round(epochs * per_epoch))
    config.optim.warmup_steps = min(config.total_steps,
                                    round(config.optim.get("warmup_epochs", 0) * per_epoch))
    every = config.checkpoint.get("every_epochs", 0)
    if every > 0:
        config.checkpoint.every_steps = max(1, round(every * per_epoch))
    return (f"epochs: {epochs:g} x {per_epoch} steps ({records} records, global batch "
            f"{config.global_batch_size}) = {config.total_steps} steps, warmup "
            f"{config.optim.warmup_steps}")
