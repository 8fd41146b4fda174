"""SynthKitchens: a procedurally generated, egocentric-flavoured video data set in EK-100's formats.

It exists so that the real preparation path (MP4 or JPEG folders + annotation CSVs -> TFDS) and
everything after it run end to end without the 700 GB of EPIC-KITCHENS-100 videos.

Content. A video is a sequence of clips separated by short idle gaps, seen by a jittering camera
over a cluttered table (static muted rectangles). In each clip one or two *objects* (nouns:
shape x colour, e.g. ``square:red``) are acted on by a *verb*, next to one or two static
distractor objects whose nouns are not in the narration. Verbs come in time-mirrored pairs:
move-left / move-right, lift / lower, open (grow) / close (shrink), put-in (appear) /
take-out (disappear): each clip of one verb, played backwards, is a clip of its partner, so a
model that ignores frame order cannot tell them apart. ``shake`` is symmetric in time.

Narrations come from templates with synonyms ("slide red square left", "push blue bar and
green circle left"), so several sentences share a (verb, noun set) and relevance
(docs/design.md, Relevance) is graded exactly as in EK-100: the CSVs carry verb_class /
noun_class / all_noun_classes.

Frame stamp. With ``stamp_frame_index`` the top strip of every frame holds the frame's index in
the video as 12 black / white blocks (`read_frame_index` decodes it after resizing and JPEG),
so tests can check which frames a pipeline really took.

Layouts (as published and as used by AVION):
  mp4:     <root>/<participant>/videos/<video_id>.MP4
  chunked: <root>/<participant>/videos/<video_id>.MP4/<start_sec>.MP4  (chunk_seconds each)
  frames:  <root>/<participant>/rgb_frames/<video_id>/frame_0000000001.jpg  (1-based)
Annotations go to <root>/annotations/ under EK-100's file names. Everything is a deterministic
function of the config (seed included).
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
import string

import numpy as np
from PIL import Image

from tempret_jax import atomic
from tempret_jax.data import ek100, encode

STAMP_BITS = 12  # frame indices up to 4095 (136 s at 30 fps)
ANNOTATION_DIR = "annotations"  # under the data set root, as the EK-100 annotations repository
# EK-100's names of the class tables and video list that `write_annotations` adds to the CSVs.
VERB_CLASSES_FILE = "EPIC_100_verb_classes.csv"  # id, key, instances (words), category (motion)
NOUN_CLASSES_FILE = "EPIC_100_noun_classes.csv"  # id, key, instances, category (the shape)
VIDEO_INFO_FILE = "EPIC_100_video_info.csv"  # video_id, duration (s), fps, resolution


@dataclasses.dataclass(frozen=True)
class Verb:
    key: str
    motion: str  # how the acted-on objects change over the clip, see `object_state`
    words: tuple[str, ...]  # synonyms used in narrations
    particle: str = ""  # written after the nouns ("left", "in", ...)


VERBS = (
    Verb("move-left", "left", ("move", "slide", "push"), "left"),
    Verb("move-right", "right", ("move", "slide", "push"), "right"),
    Verb("lift", "up", ("lift", "raise"), "up"),
    Verb("lower", "down", ("lower", "drop"), "down"),
    Verb("open", "grow", ("open", "unfold", "expand")),
    Verb("close", "shrink", ("close", "fold", "squeeze")),
    Verb("put-in", "appear", ("put", "place"), "in"),
    Verb("take-out", "disappear", ("take", "remove", "pull"), "out"),
    Verb("shake", "shake", ("shake", "wiggle", "jiggle")),
)
MIRRORED_VERBS = (("move-left", "move-right"), ("lift", "lower"), ("open", "close"),
                  ("put-in", "take-out"))
SHAPES = ("square", "circle", "triangle", "bar")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230),
           "yellow": (235, 210, 40), "purple": (150, 60, 200)}
NOUNS = tuple(f"{shape}:{colour}" for shape in SHAPES for colour in COLOURS)  # class id = index
VOCAB_FILE = "synthkitchens_vocab.txt"  # packaged beside this module: `wordpiece_vocab()`


def wordpiece_vocab() -> list[str]:
    """A BERT vocabulary (vocab.txt lines, id = line) for SynthKitchens' narrations, for
    EgoVLP's DistilBERT tower at demo size: [PAD] first (its id must be 0), the other BERT
    specials, every narration word whole, then letters and digits plain and as '##'
    continuations and ASCII punctuation, so any other lower-case text (a search query)
    splits into pieces instead of [UNK]."""
    words = {w for verb in VERBS for w in (*verb.words, verb.particle) if w}
    words |= set(SHAPES) | set(COLOURS) | {"and"}
    chars = string.ascii_lowercase + string.digits
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words), *chars,
            *(f"##{c}" for c in chars), *string.punctuation]


def vocab_path() -> pathlib.Path:
    """The packaged `wordpiece_vocab()` file."""
    return pathlib.Path(__file__).with_name(VOCAB_FILE)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Sizes of a SynthKitchens data set. The defaults generate and prepare in well under a minute."""

    seed: int = 0  # with each video's index or id, seeds all that is drawn for that video
    num_train_videos: int = 6
    num_test_videos: int = 3
    num_participants: int = 3  # videos are dealt out to P01, P02, ... in turn
    clips_per_video: int = 8
    width: int = 192  # pixels of the generated frames (even: yuv420p)
    height: int = 112
    fps: int = 30  # frames per second of the generated videos
    clip_seconds: tuple[float, float] = (1.0, 2.5)  # range of a clip's duration
    gap_seconds: tuple[float, float] = (0.2, 0.8)  # range of the idle time between clips
    max_nouns: int = 2  # acted-on objects per clip
    num_nouns: int = len(NOUNS)  # objects are drawn from the first num_nouns of NOUNS
    num_verbs: int = len(VERBS)  # verbs are drawn from the first num_verbs of VERBS
    object_size: tuple[float, float] = (0.12, 0.2)  # object size range, fraction of the height
    travel: float = 0.25  # distance moved by move / lift / lower, fraction of the frame
    num_distractors: int = 2  # static objects per clip whose nouns the narration leaves out
    num_clutter: int = 8  # muted rectangles of the table, the same in every frame of a video
    jitter_pixels: float = 2.0  # largest camera shake, pixels
    stamp_frame_index: bool = True  # see `stamp_frame_index`
    layout: str = "mp4"  # mp4 | chunked | frames
    chunk_seconds: int = 15  # chunked layout only
    gop: int = 30  # keyframe interval of the MP4s, so that seeking matters

    def __post_init__(self):
        if self.layout not in ("mp4", "chunked", "frames"):
            raise ValueError(f"layout {self.layout!r}: expected mp4, chunked or frames")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width x height {self.width}x{self.height} must be even (yuv420p)")
        if not 1 <= self.max_nouns <= 3:
            raise ValueError(f"max_nouns {self.max_nouns} must be in [1, 3]")
        if not 1 <= self.num_verbs <= len(VERBS):
            raise ValueError(f"num_verbs {self.num_verbs} must be in [1, {len(VERBS)}]")
        if not self.max_nouns + self.num_distractors <= self.num_nouns <= len(NOUNS):
            raise ValueError(f"num_nouns {self.num_nouns} must be in [max_nouns + num_distractors "
                             f"= {self.max_nouns + self.num_distractors}, {len(NOUNS)}]")


@dataclasses.dataclass(frozen=True)
class Clip:
    narration_id: str
    start: float  # seconds, multiple of 0.01 (EK-100 writes centiseconds)
    stop: float
    verb: int
    nouns: tuple[int, ...]  # acted-on objects, narration order
    narration: str
    objects: tuple[tuple[int, float, float, float], ...]  # (noun, x, y, size) at the start
    distractors: tuple[tuple[int, float, float, float], ...]
    reveal: float  # fraction of the clip at which put-in / take-out objects switch


@dataclasses.dataclass(frozen=True)
class Video:
    video_id: str
    participant_id: str
    split: str
    num_frames: int
    clips: tuple[Clip, ...]


def generate(root, config: SynthConfig = SynthConfig()) -> pathlib.Path:
    """Writes a SynthKitchens data set under ``root``; returns the annotation directory."""
    root = pathlib.Path(root)
    videos = plan(config)
    for video in videos:
        write_video(root, video, config)
    return write_annotations(root, videos, config)


def plan(config: SynthConfig) -> list[Video]:
    """The videos and clips of a data set (no pixels), deterministic in ``config``."""
    videos = []
    for v in range(config.num_train_videos + config.num_test_videos):
        split = "train" if v < config.num_train_videos else "test"
        participant = f"P{v % config.num_participants + 1:02d}"
        video_id = f"{participant}_{v // config.num_participants + 1:02d}"
        clips, seconds = plan_clips(np.random.default_rng([config.seed, v]), video_id, config)
        videos.append(Video(video_id, participant, split, int(np.ceil(seconds * config.fps)), clips))
    return videos


def plan_clips(rng: np.random.Generator, video_id: str, config: SynthConfig):
    """``config.clips_per_video`` clips '<video_id>_<k>' drawn from ``rng``, each after an idle
    gap; returns (clips, seconds): the clips and the end of the gap after the last one."""
    clips, t = [], _centi(rng.uniform(*config.gap_seconds))
    for k in range(config.clips_per_video):
        duration = _centi(rng.uniform(*config.clip_seconds))
        clips.append(_plan_clip(rng, f"{video_id}_{k}", t, t + duration, config))
        t = _centi(t + duration + rng.uniform(*config.gap_seconds))
    return tuple(clips), t


def _centi(x: float) -> float:
    return round(float(x), 2)


def _plan_clip(rng, narration_id, start, stop, config) -> Clip:
    verb = int(rng.integers(config.num_verbs))
    picked = rng.choice(config.num_nouns, config.max_nouns + config.num_distractors, replace=False)
    n_nouns = int(rng.integers(1, config.max_nouns + 1))
    nouns, distractors = picked[:n_nouns], picked[config.max_nouns:]
    low, high = config.object_size
    place = lambda n: (int(n), *rng.uniform([0.25, 0.35, low], [0.75, 0.8, high]))  # noqa: E731
    return Clip(narration_id, start, stop, verb, tuple(int(n) for n in nouns),
                _narration(rng, VERBS[verb], nouns), tuple(place(n) for n in nouns),
                tuple(place(n) for n in distractors), float(rng.uniform(0.3, 0.7)))


def _narration(rng, verb: Verb, nouns) -> str:
    """Template narration: '<synonym> <colour shape> [and <colour shape>] [particle]'."""
    names = [" ".join(reversed(NOUNS[n].split(":"))) for n in nouns]
    words = [verb.words[rng.integers(len(verb.words))], " and ".join(names)]
    return " ".join(words + ([verb.particle] if verb.particle else []))


# ---------------------------------------------------------------------------------------------
# Pixels.


def object_state(motion: str, u: float, reveal: float, x: float, y: float, size: float,
                  travel: float = 0.25):
    """(x, y, size, visible) of an acted-on object at clip progress u in [0, 1].

    ``motion`` is a `Verb`'s; x, y (fractions of the frame), size (of the height) are the
    object's at the start; ``reveal``, the progress at which put-in / take-out switch it.
    Mirrored motions are exact time reversals of each other: state(partner, u) = state(m, 1 - u)
    up to where the motion starts, which is what makes frame order necessary.
    """
    d = travel
    if motion == "left":
        return x + d / 2 - d * u, y, size, True
    if motion == "right":
        return x - d / 2 + d * u, y, size, True
    if motion == "up":
        return x, y + d / 2 - d * u, size, True
    if motion == "down":
        return x, y - d / 2 + d * u, size, True
    if motion == "grow":
        return x, y, size * (0.5 + u), True
    if motion == "shrink":
        return x, y, size * (1.5 - u), True
    if motion == "appear":
        return x, y, size, u >= reveal
    if motion == "disappear":
        return x, y, size, u < 1 - reveal
    if motion == "shake":
        return x + 0.04 * np.sin(6 * np.pi * u), y, size, True
    raise ValueError(f"unknown motion {motion!r}")


def _shape_mask(shape: str, xx, yy, cx, cy, r):
    """Boolean mask of a shape centred at (cx, cy) with half-size r (pixel units)."""
    dx, dy = xx - cx, yy - cy
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "triangle":
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "bar":
        return (np.abs(dx) <= 1.6 * r) & (np.abs(dy) <= 0.35 * r)
    raise ValueError(f"unknown shape {shape!r}")


class _Painter:
    """Renders the frames of one video (background, clutter, jitter, objects, frame stamp)."""

    def __init__(self, video: Video, config: SynthConfig):
        self.video, self.config = video, config
        rng = np.random.default_rng([config.seed, 1 << 20, *video.video_id.encode()])
        self.margin = int(np.ceil(config.jitter_pixels)) + 1
        h, w = config.height + 2 * self.margin, config.width + 2 * self.margin
        base = rng.integers(90, 150, 3)
        self.background = np.empty((h, w, 3), np.uint8)
        self.background[:] = base
        for _ in range(config.num_clutter):
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            dh, dw = rng.integers(4, max(5, h // 4)), rng.integers(4, max(5, w // 4))
            self.background[y0:y0 + dh, x0:x0 + dw] = np.clip(base + rng.integers(-40, 40, 3), 0, 255)
        # A smooth random walk for the camera shake.
        steps = rng.normal(0, 0.5, (video.num_frames, 2)).cumsum(0)
        self.jitter = np.clip(steps, -config.jitter_pixels, config.jitter_pixels)
        self.yy, self.xx = np.mgrid[0:config.height, 0:config.width].astype(np.float32)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` of the video: (height, width, 3) uint8."""
        c = self.config
        t = index / c.fps
        oy, ox = (self.margin + np.round(self.jitter[index])).astype(int)
        img = self.background[oy:oy + c.height, ox:ox + c.width].copy()
        for clip in self.video.clips:
            if clip.start <= t < clip.stop:
                u = (t - clip.start) / (clip.stop - clip.start)
                for noun, x, y, size in clip.distractors:
                    self._draw(img, noun, x, y, size)
                motion = VERBS[clip.verb].motion
                for noun, x, y, size in clip.objects:
                    x, y, size, visible = object_state(motion, u, clip.reveal, x, y, size, c.travel)
                    if visible:
                        self._draw(img, noun, x, y, size)
        if c.stamp_frame_index:
            stamp_frame_index(img, index)
        return img

    def _draw(self, img, noun: int, x: float, y: float, size: float):
        shape, colour = NOUNS[noun].split(":")
        h, w = img.shape[:2]
        img[_shape_mask(shape, self.xx, self.yy, x * w, y * h, size * h / 2)] = COLOURS[colour]


def stamp_frame_index(img: np.ndarray, index: int) -> None:
    """Paints ``index`` into the top eighth of ``img`` (H, W, 3) as STAMP_BITS black/white blocks."""
    h, w = img.shape[:2]
    edges = np.linspace(0, w, STAMP_BITS + 1).round().astype(int)
    for b in range(STAMP_BITS):
        img[:h // 8, edges[b]:edges[b + 1]] = 255 if (index >> (STAMP_BITS - 1 - b)) & 1 else 0


def read_frame_index(img: np.ndarray) -> int:
    """Inverse of `stamp_frame_index` on a resized / JPEG-compressed frame (H, W, 3) uint8."""
    h, w = img.shape[:2]
    edges = np.linspace(0, w, STAMP_BITS + 1)
    strip = img[h // 32:h // 8 - h // 32].astype(np.float32).mean(axis=(0, 2))
    bits = [strip[int(lo + (hi - lo) / 4):int(np.ceil(hi - (hi - lo) / 4))].mean() > 127
            for lo, hi in zip(edges[:-1], edges[1:])]
    return int("".join("1" if b else "0" for b in bits), 2)


# ---------------------------------------------------------------------------------------------
# Files.


def write_video(root, video: Video, config: SynthConfig) -> None:
    """Writes one video in ``config.layout`` (see the module docstring)."""
    root = pathlib.Path(root)
    frames = video_frames(video, config)
    if config.layout == "frames":
        folder = root / video.participant_id / "rgb_frames" / video.video_id
        for i, img in enumerate(frames):
            with atomic.writer(folder / f"frame_{i + 1:010d}.jpg", "wb") as f:
                Image.fromarray(img).save(f, format="JPEG", quality=90)
        return
    path = root / video.participant_id / "videos" / f"{video.video_id}.MP4"
    if config.layout == "mp4":
        path.parent.mkdir(parents=True, exist_ok=True)
        encode.write_mp4(path, frames, config.fps, config.gop)
    else:
        encode.write_chunks(path, frames, config.fps, config.gop, config.chunk_seconds,
                            "{second}.MP4")


def video_frames(video: Video, config: SynthConfig):
    """The frames of ``video`` in order, each (height, width, 3) uint8, painted as they are taken."""
    painter = _Painter(video, config)
    return (painter.frame(i) for i in range(video.num_frames))


def _timestamp(seconds: float) -> str:
    centis = int(round(seconds * 100))
    return f"{centis // 360000:02d}:{centis // 6000 % 60:02d}:{centis // 100 % 60:02d}.{centis % 100:02d}"


def write_csv(path: pathlib.Path, header, rows, **dialect) -> None:
    """Writes a header and rows with `csv.writer` (``dialect``: its format parameters)."""
    with atomic.writer(path, "w", newline="") as f:
        writer = csv.writer(f, **dialect)
        writer.writerow(header)
        writer.writerows(rows)


def clip_rows(videos, split: str, fps: int) -> list[list]:
    """The EK-100 clip CSV rows (15 columns, `ek100.CLIP_COLUMNS`) of one split."""
    rows = []
    for video in videos:
        if video.split != split:
            continue
        for c in video.clips:
            nouns = [NOUNS[n] for n in c.nouns]
            rows.append([
                c.narration_id, video.participant_id, video.video_id, _timestamp(c.start),
                _timestamp(c.start), _timestamp(c.stop), int(c.start * fps) + 1,
                int(c.stop * fps) + 1, c.narration, VERBS[c.verb].key, c.verb, nouns[0], c.nouns[0],
                str(nouns), str(list(c.nouns))])
    return rows


def write_annotations(root, videos, config: SynthConfig) -> pathlib.Path:
    """Writes the clip, sentence, class and video-info CSVs; returns their directory."""
    out = pathlib.Path(root) / ANNOTATION_DIR
    out.mkdir(parents=True, exist_ok=True)
    for split, clips_file, sentences_file in (
            ("train", ek100.TRAIN_CLIPS_FILE, ek100.TRAIN_SENTENCES_FILE),
            ("test", ek100.TEST_CLIPS_FILE, ek100.TEST_SENTENCES_FILE)):
        rows = clip_rows(videos, split, config.fps)
        write_csv(out / clips_file, ek100.CLIP_COLUMNS, rows)
        # One sentence per distinct narration, represented by its first clip (as in EK-100).
        first = {}
        for r in rows:
            first.setdefault(r[8], r)
        if split == "test":
            sentences = [[r[0], r[8]] for r in first.values()]
            write_csv(out / sentences_file, ek100.TEST_SENTENCE_COLUMNS, sentences)
        else:
            sentences = [[r[0], r[8], r[10], r[14], r[9], r[13]] for r in first.values()]
            write_csv(out / sentences_file, ek100.TRAIN_SENTENCE_COLUMNS, sentences)
    write_csv(out / VERB_CLASSES_FILE, ("id", "key", "instances", "category"),
              [[i, v.key, str([f"{w}-{v.particle}" if v.particle else w for w in v.words]), v.motion]
               for i, v in enumerate(VERBS)])
    write_csv(out / NOUN_CLASSES_FILE, ("id", "key", "instances", "category"),
              [[i, n, str([n]), n.split(":")[0]] for i, n in enumerate(NOUNS)])
    write_csv(out / VIDEO_INFO_FILE, ("video_id", "duration", "fps", "resolution"),
              [[v.video_id, v.num_frames / config.fps, config.fps, f"{config.width}x{config.height}"]
               for v in videos])
    return out


def synthesize_train_csv(path, sentence_csv, num_clips: int = 67_217, seed: int = 0) -> None:
    """A full-size EK-100 train clip CSV with the real class statistics, for memory benchmarks.

    Rows are drawn with replacement from a real train sentence CSV (6 columns: its verb_class /
    noun_classes / nouns), so the joint (verb, noun set) distribution is EK-100's; timestamps
    and ids are synthetic but valid.
    """
    sentences = ek100.read_sentences(sentence_csv)
    if not sentences.has_classes:
        raise ValueError(f"{sentence_csv}: expected a train sentence CSV with class columns")
    rng = np.random.default_rng(seed)
    with_nouns = np.flatnonzero([len(c) > 0 for c in sentences.noun_classes])  # a clip needs a noun
    picks = rng.choice(with_nouns, size=num_clips)
    rows = []
    for i, j in enumerate(picks):
        video_id = f"P{i // 5000 + 1:02d}_{i // 500 % 10 + 1:02d}"
        start = (i % 500) * 4.0
        nouns, classes = sentences.nouns[j], sentences.noun_classes[j]
        rows.append([f"{video_id}_{i % 500}", video_id[:3], video_id, _timestamp(start),
                     _timestamp(start), _timestamp(start + 3.0), int(start * 60) + 1,
                     int((start + 3.0) * 60) + 1, sentences.narration[j], sentences.verb[j],
                     int(sentences.verb_class[j]), nouns[0], classes[0], str(list(nouns)),
                     str(list(classes))])
    write_csv(pathlib.Path(path), ek100.CLIP_COLUMNS, rows)
