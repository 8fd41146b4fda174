"""Stage 2 of a preparation (`tempret_jax.data.prepare`): the TFDS data set (ArrayRecord)
assembled from the shards of stage 1 (`shards`), its records in table order.

The data set of corpus C is ``<output_dir>/<C>/<config_name>/<VERSION>``: the builder is named
after the corpus (`corpora.Corpus.name`), so TFDS writes it there and its dataset_info.json
names the corpus. Records are `verify.features` for every corpus. ``config`` is a
`prepare.PrepareConfig`.
"""

from __future__ import annotations

import itertools
import pathlib

import numpy as np

from tempret_jax import atomic
from tempret_jax.data import corpora, decode, ek100, shards, tasks, verify

VERSION = "1.0.0"
STAMP_FILE = "prepared_from.txt"  # in the data set: the digest of what its records were made from


def builder(config, tables: dict[str, ek100.ClipTable], results: list[dict], source=None):
    """A TFDS builder whose examples come from the shards of `config.work`, in table order (the
    shard of each video that ``results`` names, with the key they give). ``source`` has the
    signature of `examples` and gives a split's examples: an iterable (default `examples`) or a
    Beam PTransform (`beam_prepare`: then TFDS writes the split with Beam)."""
    import tensorflow_datasets as tfds
    corpus = corpora.get(config.corpus)

    class Clips(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        __doc__ = corpus.description
        name = corpus.name
        VERSION = tfds.core.Version(VERSION)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(
            name=config.config_name,
            description=f"{config.num_frames} frames per clip, short side {config.short_side}")]

        # The builder has no source folder of its own (no checksums, no metadata files); without
        # this TFDS 4.9 looks for one and needs `importlib_resources` on Python >= 3.11.
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=verify.features(),
                                         disable_shuffling=True)  # records in table order

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in tables}

        def _generate_examples(self, split):
            keys = {r["video_id"]: r["key"] for r in results if r["split"] == split}
            return (source or examples)(config, split, tables[split], keys)

    return Clips(data_dir=config.output_dir, file_format="array_record")


def examples(config, split: str, table: ek100.ClipTable, keys: dict[str, str]):
    """Yields (clip_index, record) for each clip of ``table`` with frames in the shard of its
    video (``keys``: video_id -> the key its shard must have; None or absent: skipped)."""
    # Tables group clips by video: each shard is read once.
    for video_id, rows in itertools.groupby(range(len(table)), lambda r: str(table.video_id[r])):
        yield from video_examples(config, split, video_id, keys.get(video_id),
                                  [row_fields(table, row) for row in rows])


def video_examples(config, split: str, video_id: str, key: str | None, rows: list[dict]):
    """Yields (clip_index, record) for each of ``rows`` (`row_fields` of clips of the video) with
    frames in the video's shard, which must have ``key`` (None: the video is skipped)."""
    if key is None:
        return
    path = shards.shard_path(config, split, video_id)
    meta, frames = shards.read_shard(path)
    if meta["key"] != key:
        raise tasks.PrepareError(f"{path}: rewritten while the data set was assembled "
                                 f"(key {meta['key']}, expected {key})")
    for fields in rows:
        if fields["narration_id"] in frames:
            times = decode.sample_times(fields["start_timestamp"], fields["stop_timestamp"],
                                        config.num_frames)
            yield fields["clip_index"], {
                **fields, "frames": frames[fields["narration_id"]],
                "frame_times": times.astype(np.float32),
                "noun_classes": np.asarray(fields["noun_classes"], np.int32)}


def row_fields(table: ek100.ClipTable, row: int) -> dict:
    """The fields a record takes from its table row, as JSON values: Beam workers get them as
    text (`beam_prepare`) and make the same record from them."""
    return {
        "narration_id": str(table.narration_id[row]),
        "participant_id": str(table.participant_id[row]), "video_id": str(table.video_id[row]),
        "narration": str(table.narration[row]), "verb_class": int(table.verb_class[row]),
        "noun_class": int(table.noun_class[row]),
        "noun_classes": [int(c) for c in table.noun_classes[row]],
        "start_timestamp": float(table.start_timestamp[row]),
        "stop_timestamp": float(table.stop_timestamp[row]),
        "start_frame": int(table.start_frame[row]), "stop_frame": int(table.stop_frame[row]),
        "clip_index": row,
    }


def assemble(config, tables: dict[str, ek100.ClipTable], todo: list[tasks.VideoTask],
             results: list[dict], source=None, beam_options=None) -> pathlib.Path:
    """Writes the TFDS data set from the shards (``results[i]`` is ``todo[i]``'s
    `shards.process_video` result) and returns its folder, unless one made from exactly these
    records is already there: the same rows (clip_index), each with the same shard key (its
    fields, frames, options). TFDS's own progress bars show only with ``config.progress``.
    ``source``: see `builder`; ``beam_options``: the Beam PipelineOptions TFDS runs it with."""
    import tensorflow_datasets as tfds
    made = builder(config, tables, results, source)
    made_from = tasks.digest([[t.split, c.row, c.narration_id, r["key"]]
                              for t, r in zip(todo, results) for written in [set(r["written"])]
                              for c in t.clips if c.narration_id in written])
    stamp = pathlib.Path(made.data_dir) / STAMP_FILE
    current = stamp.is_file() and stamp.read_text() == made_from
    mode = (tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS if current
            else tfds.download.GenerateMode.FORCE_REDOWNLOAD)
    tfds.display_progress_bar(config.progress)
    made.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=mode, beam_options=beam_options))
    if not current:
        atomic.write_text(stamp, made_from)
    return pathlib.Path(made.data_dir)
