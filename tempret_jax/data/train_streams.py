"""The training stream of each corpus: `pipeline.train_stream`'s Grain structure (shuffle,
repeat, per-element rng, batches per process, checkpointable state) and `pipeline.CropTransform`'s
frames and crops for all; the per-record transform is what differs, and with it the keys of a
batch besides `pipeline.CROP_KEYS` (`STREAM_KEYS`):

  ek100_mir     `pipeline.TrainTransform`: a sampled positive sentence and EK-100's class labels
  ego4d         `EgoClipTransform` (EgoClip): the clip's own narration and its multi-hot tags,
                for EgoNCE; with ``adjacent_seconds`` each sample brings an adjacent clip
                (`AdjacentClips`) as a second pair
  charades_ego  `CharadesEgoTransform`: the segment's class name and hard labels, for SMS on
                hard labels (EVA02-AT Eq. 17)

`corpus_train_pipeline` picks the transform by the data set's corpus (`corpora.of_dataset`).
"""

from __future__ import annotations

import itertools
import pathlib

import grain
import numpy as np

from tempret_jax.data import charades_ego, corpora, ego4d, ek100, pipeline, prepare, verify
from tempret_jax.data.text_tokens import TextTokenizer

# What a batch of each corpus's stream holds besides the crops (the trainer checks that the
# step's loss finds its inputs here before it starts).
STREAM_KEYS = {
    corpora.EK100_MIR.name: ("tokens", "clip_verb", "clip_nouns", "text_verb", "text_nouns",
                             "pos_relevance", "index"),
    corpora.EGO4D.name: ("tokens", "text_verbs", "text_nouns", "index"),
    corpora.CHARADES_EGO.name: ("tokens", "pos_relevance", "clip_classes", "text_class", "index"),
}


class MultiHot:
    """Rows of class-index tuples kept flat, each made a (num_classes,) bool row when asked:
    EgoClip's 3.8M rows as (n, 582) bool arrays would take 2.2 GB in every Grain worker."""

    def __init__(self, tags, num_classes: int):
        self.num_classes = num_classes
        self.offsets = np.concatenate([[0], np.cumsum([len(t) for t in tags])]).astype(np.int64)
        self.classes = np.fromiter(itertools.chain.from_iterable(tags), np.int32,
                                   int(self.offsets[-1]))

    def __call__(self, row: int) -> np.ndarray:
        """(num_classes,) bool, true at the classes of ``row``."""
        out = np.zeros(self.num_classes, bool)
        out[self.classes[self.offsets[row]:self.offsets[row + 1]]] = True
        return out


class AdjacentClips:
    """EgoVLP's scene-aware negatives (showlab/EgoVLP 928406c
    data_loader/EgoClip_EgoMCQ_dataset.py, ``neg_param``): for a clip, a clip drawn uniformly
    among those of its video whose narration_time // ``seconds`` is its own, itself included.

    Records are in table order with the skipped clips missing (`builder.examples`), so the
    record of a table row is found by bisection within the number of missing rows (one read
    when none is missing). A drawn row without a record, or whose record is in ``exclude``,
    gives the sample itself (one of EgoVLP's own candidates).
    """

    def __init__(self, table: ego4d.EgoClipTable, source, seconds: float, exclude=()):
        if not seconds > 0:
            raise ValueError(f"adjacent clips: seconds must be > 0, got {seconds}")
        clips = table.clips
        window = np.floor(clips.narration_timestamp / seconds)
        no_time = ~np.isfinite(window)
        window[no_time] = -1.0 - np.flatnonzero(no_time)  # a window of its own
        video = np.unique(clips.video_id, return_inverse=True)[1]
        _, self.group = np.unique(np.stack([video.astype(np.float64), window]), axis=1,
                                  return_inverse=True)
        self.group = self.group.reshape(-1).astype(np.int32)
        self.order = np.argsort(self.group, kind="stable").astype(np.int32)
        self.count = np.bincount(self.group)
        self.start = np.cumsum(self.count) - self.count
        self.source, self.missing = source, len(clips) - len(source)
        self.exclude = frozenset(int(i) for i in exclude)

    def group_rows(self, row: int) -> np.ndarray:
        """The table rows of ``row``'s video and window, ``row`` among them, ascending."""
        g = self.group[row]
        return np.sort(self.order[self.start[g]:self.start[g] + self.count[g]])

    def draw(self, index: int, record, rng: np.random.Generator):
        """(position, record) of the adjacent clip of the record at ``index``."""
        g = self.group[int(record["clip_index"])]
        row = int(self.order[self.start[g] + rng.integers(self.count[g])])
        found = self._record_of(row)
        if found is None or found[0] in self.exclude:
            return index, record
        return found

    def _record_of(self, row: int):
        lo, hi = max(0, row - self.missing), min(row, len(self.source) - 1)
        while lo <= hi:
            mid = (lo + hi) // 2
            record = self.source[mid]
            found = int(record["clip_index"])
            if found == row:
                return mid, record
            lo, hi = (mid + 1, hi) if found < row else (lo, mid - 1)
        return None


class EgoClipTransform(pipeline.CropTransform):
    """An EgoClip record -> {crops, tokens (L,) int32, text_verbs (118,) bool, text_nouns (582,)
    bool, index}: the clip's own narration, ``clip_text`` as EgoVLP feeds it ('#C C opens the
    drawer': EgoClip_EgoMCQ_dataset.py ``_get_caption`` keeps the narrator prefix), and its
    tags (``verb_vec`` / ``noun_vec``), which EgoNCE reads for clip and text alike.

    With ``adjacent`` every value gets a leading axis of 2: the sample, then its adjacent clip
    with its own narration and tags (`AdjacentClips`), drawn from the same element rng."""

    def __init__(self, table: ego4d.EgoClipTable, num_frames: int, resolution: int,
                 short_side: int, crop_scale=(0.5, 1.0), tokenize: TextTokenizer = TextTokenizer(),
                 adjacent: AdjacentClips | None = None):
        super().__init__(num_frames, resolution, short_side, crop_scale)
        self.verbs = MultiHot(table.tag_verb, ego4d.NUM_VERBS)
        self.nouns = MultiHot(table.tag_noun, ego4d.NUM_NOUNS)
        self.tokenize, self.adjacent = tokenize, adjacent

    def random_map(self, element, rng: np.random.Generator) -> dict:
        index, record = element
        example = self.pair(index, record, rng)
        if self.adjacent is None:
            return example
        adjacent = self.pair(*self.adjacent.draw(index, record, rng), rng)
        return {k: np.stack([example[k], adjacent[k]]) for k in example}

    def pair(self, index: int, record, rng: np.random.Generator) -> dict:
        """The example of one record (no adjacent clip)."""
        row = int(record["clip_index"])
        return {**self.crop(index, record, rng),
                "tokens": self.tokenize([pipeline.as_str(record["narration"])])[0],
                "text_verbs": self.verbs(row), "text_nouns": self.nouns(row),
                "index": np.int64(index)}


class SamplesThenAdjacent(grain.transforms.Map):
    """A batch of (B, 2, ...) sample/adjacent pairs -> (2B, ...): the B samples, then their B
    adjacent clips in the same order (the loss does not depend on the order of the pairs)."""

    def map(self, batch: dict) -> dict:
        return {k: np.concatenate([v[:, 0], v[:, 1]]) for k, v in batch.items()}


def overlapping_classes(clips: ek100.ClipTable) -> np.ndarray:
    """(n, 157) bool: each Charades-Ego action segment's class and the classes of the other
    segments of its video whose interval overlaps it (by a positive length).

    Our reading of EVA02-AT's hard labels ("there could be multiple different hard labels for
    each video clip", its paper; its Charades-Ego code is not released): a segment shows every
    action that happens during it.
    """
    out = np.zeros((len(clips), charades_ego.NUM_CLASSES), bool)
    start, stop, cls = clips.start_timestamp, clips.stop_timestamp, clips.verb_class
    _, video = np.unique(clips.video_id, return_inverse=True)
    for rows in np.split(np.argsort(video, kind="stable"), np.cumsum(np.bincount(video))[:-1]):
        s, e = start[rows], stop[rows]
        i, j = np.nonzero((s[:, None] < e[None, :]) & (s[None, :] < e[:, None]))
        out[rows[i], cls[rows[j]]] = True
    return out


class CharadesEgoTransform(pipeline.CropTransform):
    """A Charades-Ego train record (one action segment) -> {crops, tokens (L,) int32 of its
    class name (EgoVLP's metadata_train.csv narration), pos_relevance 1.0, clip_classes (157,)
    bool (`overlapping_classes`), text_class int32, index}."""

    def __init__(self, table: charades_ego.CharadesEgoTable, num_frames: int, resolution: int,
                 short_side: int, crop_scale=(0.5, 1.0), tokenize: TextTokenizer = TextTokenizer()):
        super().__init__(num_frames, resolution, short_side, crop_scale)
        self.class_tokens = tokenize(table.class_names)  # (157, L)
        self.text_class = table.clips.verb_class.astype(np.int32)
        self.clip_classes = overlapping_classes(table.clips)

    def random_map(self, element, rng: np.random.Generator) -> dict:
        index, record = element
        row = int(record["clip_index"])
        return {**self.crop(index, record, rng),
                "tokens": self.class_tokens[self.text_class[row]],
                "pos_relevance": np.float32(1.0), "clip_classes": self.clip_classes[row],
                "text_class": self.text_class[row], "index": np.int64(index)}


def corpus_train_pipeline(dataset_dir, global_batch_size: int, *, split: str = "train",
                          num_frames: int = 16, resolution: int = 224, crop_scale=(0.5, 1.0),
                          seed: int = 0, num_workers: int = 0, process_index: int | None = None,
                          process_count: int | None = None, exclude=(),
                          tokenize: TextTokenizer = TextTokenizer(),
                          positive_threshold: float = 0.1,
                          adjacent_seconds: float = 0.0) -> grain.IterDataset:
    """The training stream of a prepared data set of any corpus, batches of B =
    global_batch_size / process_count samples holding `pipeline.CROP_KEYS` and the corpus's
    `STREAM_KEYS` (shapes: `pipeline.train_pipeline`, `EgoClipTransform`,
    `CharadesEgoTransform`). ``positive_threshold``: EK-100's positives (rel > it).
    ``adjacent_seconds`` > 0 (ego4d only): 2B pairs per batch, the B samples then their
    adjacent clips (`AdjacentClips`)."""
    corpus = corpora.of_dataset(dataset_dir)
    if adjacent_seconds and corpus is not corpora.EGO4D:
        raise ValueError(f"{dataset_dir}: adjacent clips are EgoClip's (corpus ego4d); this "
                         f"data set is {corpus.name}")
    common = dict(seed=seed, num_workers=num_workers, process_index=process_index,
                  process_count=process_count, exclude=exclude)
    if corpus is corpora.EK100_MIR:
        clips, sentences = prepare.load_annotations(dataset_dir, split)
        relevance = ek100.TrainRelevance.from_tables(clips, sentences,
                                                     threshold=positive_threshold)
        return pipeline.train_pipeline(
            dataset_dir, global_batch_size, split=split, num_frames=num_frames,
            resolution=resolution, crop_scale=crop_scale, relevance=relevance,
            tokenize=tokenize, **common)
    if split != "train":
        raise ValueError(f"{dataset_dir}: corpus {corpus.name} trains on its 'train' split, "
                         f"not {split!r}")
    source = pipeline.open_split(dataset_dir, split)
    frames = (num_frames, resolution, pipeline.stored_short_side(source), crop_scale, tokenize)
    folder = pathlib.Path(dataset_dir) / prepare.ANNOTATIONS
    verify.check_copies(folder, corpus.split_files[split])
    if corpus is corpora.CHARADES_EGO:
        transform = CharadesEgoTransform(charades_ego.read_charades_ego(folder, split), *frames)
        return pipeline.train_stream(source, transform, global_batch_size, **common)
    table = ego4d.read_egoclip(folder / ego4d.EGOCLIP_FILE)
    adjacent = (AdjacentClips(table, source, adjacent_seconds, exclude) if adjacent_seconds
                else None)
    return pipeline.train_stream(source, EgoClipTransform(table, *frames, adjacent=adjacent),
                                 global_batch_size,
                                 batch_map=SamplesThenAdjacent() if adjacent else None,
                                 **common)
