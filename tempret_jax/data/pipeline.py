"""Grain input pipelines on a prepared data set (`tempret_jax.data.prepare`).

  train:     shuffled, repeated clips, T of the N stored frames (one random frame per
             segment) with a random resized crop box, cut out as uint8 windows (the train step
             resamples and normalises them on the device: `crops`), and the corpus's text and
             labels: EK-100's sampled positive sentence here (docs/design.md, Relevance), the
             other corpora's in `train_streams`; batches per JAX process, the iterator state
             saved/restored.
  eval:      every clip of a split once, in record order, centre crops (optionally TTA views:
             horizontal flip, scales; `views`), the last batch padded and flagged by ``mask``.
  sentences: every sentence of a split once, tokenised, padded like eval.

Everything random is a function of (seed, position in the stream): grain's ``random_map``
seeds each element's generator from the pipeline seed and the element's index, so results do
not depend on the number of worker processes, and restoring an iterator state replays exactly.
Per-process sharding: the records are split between JAX processes (``process_index::count``)
before shuffling, so processes see disjoint data; batch sizes are per process (global batch /
process count). Eval and sentence shards are padded to the same number of batches in every
process, so all processes run the same number of steps.
"""

from __future__ import annotations

import grain
import numpy as np
import simplejpeg

from tempret_jax.data import crops, ek100, prepare, verify, workers
from tempret_jax.data.text_tokens import TextTokenizer
from tempret_jax.data.crops import CLIP_MEAN, CLIP_STD
from tempret_jax.data.views import View, center_view

CONTEXT_LENGTH = 77  # CLIP's rows (`TextTokenizer()`, the default of every pipeline)


def tokenize(texts) -> np.ndarray:
    """CLIP token ids: (n, 77) int32 (the vocabulary loads once per process)."""
    return TextTokenizer()(list(texts))


def open_split(dataset_dir, split: str):
    """The random-access source of a prepared split (records are dicts of the features `prepare`
    writes), checked (`verify`): features.json before TFDS reads it, and each record read
    against the split's clip table."""
    import tensorflow_datasets as tfds
    verify.check_features(dataset_dir)
    table, narration_ids = prepare.load_narration_ids(dataset_dir, split)
    source = tfds.builder_from_directory(str(dataset_dir)).as_data_source(split=split)
    return verify.CheckedRecords(source, f"{dataset_dir} ({split})", table, narration_ids)


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    return process_index, process_count


def _local_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{process_count} JAX processes")
    return global_batch_size // process_count


# ---------------------------------------------------------------------------------------------
# Frames.


def segment_indices(num_stored: int, num_frames: int, rng: np.random.Generator | None = None):
    """Which of the N stored frames to use: (T,) int64, one per equal segment of [0, N).

    With ``rng`` a random frame of each segment (training), else the segment's middle frame.
    Works for T > N too (segments then repeat frames).
    """
    edges = np.arange(num_frames + 1) * num_stored / num_frames
    u = rng.random(num_frames) if rng is not None else np.full(num_frames, 0.5)
    idx = np.floor(edges[:-1] + u * (edges[1:] - edges[:-1])).astype(np.int64)
    return np.clip(idx, 0, num_stored - 1)


def decode_jpeg(data: bytes) -> np.ndarray:
    """One JPEG byte string (RGB or greyscale, as `prepare` stores them) -> (H, W, 3) uint8.

    libjpeg-turbo through simplejpeg, straight into an array: the same pixels as PIL's decoder,
    without PIL's Python header parsing and image-to-array copy (together ~3.5 ms per 16-frame
    train clip at short side 256 in a profile; the whole train transform now takes ~8 ms).
    """
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def clip_frames(dataset_dir, split: str):
    """record position -> its frames, (N,) of (H, W, 3) uint8, from the prepared JPEGs."""
    source = open_split(dataset_dir, split)

    def frames(i: int):
        stored = source[int(i)]["frames"]
        return decode_jpegs(stored, range(len(stored)))

    return frames


def decode_jpegs(frames, indices) -> list[np.ndarray]:
    """The JPEG byte strings ``frames[i]`` for i in ``indices``, decoded: (H, W, 3) uint8 each."""
    return [decode_jpeg(frames[i]) for i in indices]


class Normalize:
    """uint8 RGB (..., W, 3) -> (x / 255 - CLIP_MEAN) / CLIP_STD in ``dtype``.

    The per-channel constants are tiled over a whole row (W, 3): broadcasting a length-3 vector
    makes numpy's inner loop 3 elements long, about 5x slower. Called on one frame at a time
    with ``out`` a slice of the clip's array, the float32 passes stay in cache.
    """

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        std = np.asarray(CLIP_STD, np.float32)
        self.scale = 1 / (255 * std)
        self.offset = -np.asarray(CLIP_MEAN, np.float32) / std
        self._rows = {}  # width -> (scale, offset) tiled to (W, 3)

    def _tiled(self, width: int):
        if width not in self._rows:
            self._rows[width] = (np.tile(self.scale, (width, 1)), np.tile(self.offset, (width, 1)))
        return self._rows[width]

    def __call__(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalised ``pixels``: a new array, or written into ``out`` (same shape, ``dtype``)."""
        scale, offset = self._tiled(pixels.shape[-2])
        if out is None:
            out = np.empty(pixels.shape, self.dtype)
        # x * scale + offset in float32 (x is exact in float32), then cast if dtype is narrower.
        work = out if self.dtype == np.float32 else np.empty(pixels.shape, np.float32)
        work[...] = pixels
        work *= scale
        work += offset
        if work is not out:
            out[...] = work
        return out


CROP_KEYS = ("frames", "crop_box", "crop_window")  # a clip's crop, as `cut_crops` returns it


def cut_crops(images, num_frames: int, rng: np.random.Generator, resolution: int, crop_scale,
              canvas: int) -> dict:
    """A clip's frames -> one random crop box for all of them, cut out onto uint8 canvases.

    ``images``: T (H, W, 3) uint8 frames of one size, any iterable (a generator that decodes on
    demand keeps one frame in flight). The box is drawn from ``rng`` when the first frame arrives
    (`crops.random_resized_crop_box`) with its window (`crops.crop_window`); each frame's window
    goes to the top-left of its canvas, the rest stays 0. Returns {'frames': (T, C, C, 3) uint8,
    'crop_box': (4,) float32, 'crop_window': (2,) int32}, which `crops.resized_crops` turns into
    (T, R, R, 3) normalised crops.
    """
    frames = np.zeros((num_frames, canvas, canvas, 3), np.uint8)
    size, count = None, 0
    for count, img in enumerate(images, 1):
        if count > num_frames:
            break
        if size is None:
            height, width = img.shape[:2]
            box = crops.random_resized_crop_box(width, height, rng, crop_scale)
            (y0, y1, x0, x1), crop_box, size = crops.crop_window(width, height, box,
                                                                 resolution, canvas)
        frames[count - 1, :y1 - y0, :x1 - x0] = img[y0:y1, x0:x1]
    if count != num_frames:
        raise ValueError(f"{'more than ' if count > num_frames else ''}{count} frames, expected "
                         f"num_frames={num_frames}")
    return dict(zip(CROP_KEYS, (frames, crop_box, size)))


# ---------------------------------------------------------------------------------------------
# Train.


class CropTransform(grain.transforms.RandomMap):
    """What every corpus's train transform does first (`crop`): T of the N stored frames, one at
    random per segment, then one random crop box (`cut_crops`); a subclass adds its text."""

    def __init__(self, num_frames: int, resolution: int, short_side: int, crop_scale=(0.5, 1.0)):
        self.num_frames, self.resolution, self.crop_scale = num_frames, resolution, crop_scale
        self.canvas = crops.canvas_size(short_side, resolution)

    def crop(self, index, record, rng: np.random.Generator) -> dict:
        """`CROP_KEYS` of record ``index``; ValueError naming the record if a frame is bad."""
        frames = record["frames"]
        indices = segment_indices(len(frames), self.num_frames, rng)
        try:
            return cut_crops((decode_jpeg(frames[i]) for i in indices), self.num_frames, rng,
                             self.resolution, self.crop_scale, self.canvas)
        except ValueError as e:
            raise _record_error("train", index, record, e) from e


class TrainTransform(CropTransform):
    """One EK-100 record -> one training example (see `train_pipeline` for the keys and shapes).

    The sentences are tokenised once here by ``tokenize`` ((S, 77) int32, 4.9 MB for EK-100's
    15,989), not per example; only the fallback to a clip's own narration tokenises on the fly.
    """

    def __init__(self, relevance: ek100.TrainRelevance, sentences: ek100.SentenceTable,
                 num_frames: int, resolution: int, short_side: int, crop_scale=(0.5, 1.0),
                 tokenize: TextTokenizer = TextTokenizer()):
        super().__init__(num_frames, resolution, short_side, crop_scale)
        self.relevance = relevance
        self.tokenize = tokenize
        self.sentence_tokens = tokenize(sentences.narration)
        self.sentence_labels = sentences.labels()

    def random_map(self, element, rng: np.random.Generator) -> dict:
        index, record = element
        clip = int(record["clip_index"])
        example = self.crop(index, record, rng)
        tokens, text_labels, c = self.positive(clip, record["narration"], rng)
        clip_labels = self.relevance.clip_keys.take(self.relevance.clip_key_of[clip])
        return {
            **example,
            "tokens": tokens,
            "clip_verb": np.int32(clip_labels.verb), "clip_nouns": clip_labels.nouns,
            "text_verb": np.int32(text_labels.verb), "text_nouns": text_labels.nouns,
            "pos_relevance": np.float32(c),
            "index": np.int64(index),
        }

    def positive(self, clip: int, narration, rng: np.random.Generator):
        """(tokens (L,) int32, the sentence's ek100.ClassLabels, rel) of a sampled positive.

        Uniform among the sentences with rel > 0.1 (docs/design.md, Relevance); with none, the clip's own
        ``narration`` and classes, rel = 1.
        """
        sentence, c = self.relevance.sample_positive(clip, rng)
        if sentence < 0:
            labels = self.relevance.clip_keys.take(self.relevance.clip_key_of[clip])
            return self.tokenize([as_str(narration)])[0], labels, c
        return self.sentence_tokens[sentence], self.sentence_labels.take(sentence), c


def _record_error(kind: str, index, record, error: Exception) -> ValueError:
    return ValueError(f"{kind} record {index} ({as_str(record['narration_id'])}): {error}")


def as_str(value) -> str:
    """A record's string field (bytes from TFDS) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def holdout_records(num_records: int, clips: int, seed: int) -> np.ndarray:
    """The records kept out of training (``data.holdout_clips`` / ``holdout_seed``): sorted
    positions (clips,) int64 drawn without replacement from a split of ``num_records``.

    The same config draws the same clips on every machine and in every stage, so a stage-2
    run trains its cross-encoder without them and its evaluator tunes the rerank on them.
    """
    if not 0 <= clips < num_records:
        raise ValueError(f"data.holdout_clips: expected 0 <= clips < {num_records} (the "
                         f"split's records), got {clips}")
    rng = np.random.default_rng([seed, num_records])
    return np.sort(rng.choice(num_records, clips, replace=False)).astype(np.int64)


def holdout(dataset_dir, data_config) -> np.ndarray:
    """`holdout_records` of a config's ``data`` block (holdout_clips, holdout_seed) in its
    training split: (clips,) int64, empty when ``holdout_clips`` is 0."""
    d = data_config
    if d.holdout_clips == 0:
        return np.zeros(0, np.int64)
    n = len(open_split(dataset_dir, d.train_split))
    return holdout_records(n, d.holdout_clips, d.holdout_seed)


class _Positioned:
    """position -> (record index, record) of a subset of the split's records."""

    def __init__(self, source, records: np.ndarray):
        self.source, self.records = source, records

    def __call__(self, position: int):
        index = int(self.records[position % len(self.records)])
        return index, self.source[index]


def train_pipeline(dataset_dir, global_batch_size: int, *, split: str = "train",
                   num_frames: int = 16, resolution: int = 224, crop_scale=(0.5, 1.0),
                   seed: int = 0, num_workers: int = 0, process_index: int | None = None,
                   process_count: int | None = None,
                   relevance: ek100.TrainRelevance | None = None,
                   exclude=(), tokenize: TextTokenizer = TextTokenizer()) -> grain.IterDataset:
    """EK-100's training stream of this process (`train_stream`: iter() it, get/set_state).

    Each batch (B = global_batch_size / process_count, drop_remainder) holds:
      frames (B, T, C, C, 3) uint8, crop_box (B, 4) float32, crop_window (B, 2) int32: each
      clip's random resized crop cut out onto canvases (`cut_crops`; C = `crops.canvas_size` of
      the stored frames' short side, read from the first record); `crops.resized_crops` makes
      them (B, T, R, R, 3) CLIP-normalised crops on the device;
      tokens (B, L) int32 of the sampled positive sentence (``tokenize``'s rows, CLIP's 77 by
      default); clip_verb (B,) int32, clip_nouns (B, 300) bool: the clip's classes; text_verb,
      text_nouns: the sentence's; pos_relevance (B,) float32: rel(clip, sentence); index (B,)
      int64: the record.
    ``relevance``: by default built from the split's annotations. ``exclude``: record positions
    never drawn (`holdout_records`)."""
    clips, sentences = prepare.load_annotations(dataset_dir, split)
    if not sentences.has_classes:
        raise ValueError(f"{sentences.path}: training needs a sentence file with class columns")
    if relevance is None:
        relevance = ek100.TrainRelevance.from_tables(clips, sentences)
    source = open_split(dataset_dir, split)
    transform = TrainTransform(relevance, sentences, num_frames, resolution,
                               stored_short_side(source), crop_scale, tokenize)
    return train_stream(source, transform, global_batch_size, seed=seed, num_workers=num_workers,
                        process_index=process_index, process_count=process_count,
                        exclude=exclude)


def train_stream(source, transform: grain.transforms.RandomMap, global_batch_size: int, *,
                 seed: int = 0, num_workers: int = 0, process_index: int | None = None,
                 process_count: int | None = None, exclude=(),
                 batch_map: grain.transforms.Map | None = None) -> grain.IterDataset:
    """Every corpus's training stream: this process's share of the records of ``source``
    (`open_split`) but ``exclude``, shuffled, repeated, each (position, record) through
    ``transform``, in batches of global_batch_size / process_count, then ``batch_map``."""
    process_index, process_count = _process(process_index, process_count)
    records = np.setdiff1d(np.arange(len(source)), np.asarray(exclude, np.int64))
    if len(records) == 0:
        raise ValueError(f"{source.name}: every record of the split is excluded")
    ds = grain.MapDataset.range(len(records)).map(_Positioned(source, records))
    ds = ds[process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat().random_map(transform, seed=seed)
    ds = ds.batch(_local_batch(global_batch_size, process_count), drop_remainder=True)
    if batch_map is not None:
        ds = ds.map(batch_map)
    return _iterable(ds, num_workers)


def stored_short_side(source) -> int:
    """The short side of a prepared split's frames (all one size), from its first record."""
    if len(source) == 0:
        raise ValueError(f"{source.name}: the split holds no clips")
    return min(decode_jpeg(source[0]["frames"][0]).shape[:2])


# What each process (or Grain worker) decodes ahead of the step: its elements are batches.
# Grain's default (16 threads, 500 elements buffered) held up to 516 batches: 14.5 GB of host
# memory for a 2-step run of 8 clips of 32 frames at short side 256 (measured, killed by the
# OOM killer), where 4 threads and 4 batches keep the step fed.
READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)


def _iterable(ds: grain.MapDataset, num_workers: int) -> grain.IterDataset:
    it = ds.to_iter_dataset(READ_OPTIONS)
    if num_workers > 0:
        # grain 0.2.18 reads an absl flag in mp_prefetch and fails if flags were never parsed
        # (google/grain#1355); scripts without absl.app have nothing to parse.
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                            worker_init_fn=workers.tie_to_parent)  # no orphans after a kill -9
    return it


# ---------------------------------------------------------------------------------------------
# Eval and sentences.


def padded_indices(n: int, batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """This process's share of range(n), padded with -1 to whole batches.

    Every process gets the same number of batches, ceil(ceil(n / count) / batch_size).
    """
    local = np.arange(process_index, n, process_count)
    per_process = -(-n // process_count)
    padded = -(-per_process // batch_size) * batch_size
    return np.concatenate([local, np.full(padded - len(local), -1, np.int64)])


class EvalTransform(grain.transforms.Map):
    """A record index -> an eval example, or the padding example for index -1."""

    def __init__(self, source, num_frames: int, resolution: int, views, dtype):
        self.source, self.num_frames, self.resolution = source, num_frames, resolution
        self.views, self.normalize = tuple(views), Normalize(dtype)

    def map(self, index):
        shape = (len(self.views), self.num_frames, self.resolution, self.resolution, 3)
        if index < 0:
            return {"video": np.zeros(shape, self.normalize.dtype), "mask": np.False_,
                    "index": np.int64(-1), "clip_index": np.int64(-1), "narration_id": ""}
        record = self.source[int(index)]
        frames = record["frames"]
        video = np.empty(shape, self.normalize.dtype)
        for t, i in enumerate(segment_indices(len(frames), self.num_frames)):
            try:
                frame = decode_jpeg(frames[i])
            except ValueError as e:
                raise _record_error("eval", index, record, e) from e
            for v, view in enumerate(self.views):
                self.normalize(center_view(frame, self.resolution, view), out=video[v, t])
        return {"video": video, "mask": np.True_, "index": np.int64(index),
                "clip_index": np.int64(record["clip_index"]),
                "narration_id": as_str(record["narration_id"])}


def eval_pipeline(dataset_dir, global_batch_size: int, *, split: str = "test",
                  num_frames: int = 16, resolution: int = 224, views=(View(),),
                  num_workers: int = 0, dtype=np.float32, process_index: int | None = None,
                  process_count: int | None = None) -> grain.IterDataset:
    """Every clip of ``split`` once, in record order (this process's share).

    Batches: video (B, V, T, R, R, 3) one entry per view (`TTA_VIEWS`: flip and scales), mask
    (B,) bool (False on padding), index (B,) int64 record, clip_index (B,) int64 CSV row,
    narration_id (B,) str ('' on padding).
    """
    process_index, process_count = _process(process_index, process_count)
    source = open_split(dataset_dir, split)
    batch = _local_batch(global_batch_size, process_count)
    indices = padded_indices(len(source), batch, process_index, process_count)
    ds = grain.MapDataset.source(indices).map(
        EvalTransform(source, num_frames, resolution, views, dtype)).batch(batch)
    return _iterable(ds, num_workers)


def sentence_pipeline(dataset_dir, global_batch_size: int, *, split: str = "test",
                      process_index: int | None = None, process_count: int | None = None,
                      tokenize: TextTokenizer = TextTokenizer()) -> grain.IterDataset:
    """Every sentence of ``split`` once, in file order (this process's share), tokenised.

    Batches: tokens (B, L) int32 (``tokenize``'s rows), mask (B,) bool, index (B,) int64
    row in the sentence file, narration_id (B,) str.
    """
    process_index, process_count = _process(process_index, process_count)
    _, sentences = prepare.load_annotations(dataset_dir, split)
    tokens = tokenize(sentences.narration)
    batch = _local_batch(global_batch_size, process_count)
    indices = padded_indices(len(sentences), batch, process_index, process_count)

    def element(i):
        valid = i >= 0
        return {"tokens": tokens[i] if valid else np.zeros(tokens.shape[1], np.int32),
                "mask": np.bool_(valid), "index": np.int64(i),
                "narration_id": str(sentences.narration_id[i]) if valid else ""}

    return grain.MapDataset.source(indices).map(element).batch(batch).to_iter_dataset(
        READ_OPTIONS)
