"""Synthetic EgoClip, EgoMCQ and Charades-Ego in their released formats, in SynthKitchens' world.

So that the readers of the real files (EgoVLP's EgoClip_EgoMCQ_dataset.py and
CharadesEgo_dataset.py at showlab/EgoVLP 928406c, and ours) and the preparation after them run
end to end without Ego4D's 3,670 hours of video. The videos are SynthKitchens' (`synthetic`):
verbs are motions of objects, nouns are shape x colour, with the same painter, so pretraining
on this EgoClip is pretraining for SynthKitchens' EK-100.

Files under the root (`generate`; everything is a function of `EgoConfig`, seed included):
  ego4d/egoclip.csv      EgoClip: tab-separated, the columns of EgoVLP's README (lines 40-60):
                         narrations '#C C lifts the red square up'; tag_verb / tag_noun list
                         literals ('[93]', '[192, 115, 12]') of indices into Ego4D's 118 verbs
                         and 582 nouns (`VERB_TAGS`, `NOUN_TAGS`); some narrations join two
                         adjacent actions ('... and shakes the blue bar'), so two verbs.
  ego4d/egomcq.json      EgoMCQ on held-out videos: {"<i>": {"query": row, "choices": {"0".."4":
                         row}, "answer": 0-4, "types": 1 (inter: five videos) | 2 (intra: one)}},
                         rows with EgoClip's columns; the answer is the query's own clip.
  ego4d/videos/<video_uid>/<i>.mp4          EgoVLP's chunks (utils/video_chunk.py), chunk i
                                            from i * chunk_seconds; or, with layout "avion":
  ego4d/videos/<video_uid>.mp4/<start>.mp4  AVION's chunks, named by their start second
  charades_ego/CharadesEgo_v1_{train,test}_only1st.csv   one row a video (`CHARADES_COLUMNS`),
                         actions 'c012 0.40 2.10;c031 2.60 4.00' (class, start, end in seconds)
  charades_ego/Charades_v1_classes.txt   157 lines 'c000 <name>': class verb x shape
                         ('lift square up'), the rest padding that no video uses
  charades_ego/videos/<id>.mp4           <id> as Charades-Ego's first-person ids ('AB12CEGO')
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import string
import uuid

import numpy as np

from tempret_jax import atomic
from tempret_jax.data import encode, synthetic

EGO4D_DIR = "ego4d"
EGOCLIP_FILE = "egoclip.csv"
EGOMCQ_FILE = "egomcq.json"
CHARADES_DIR = "charades_ego"
CHARADES_TRAIN_FILE = "CharadesEgo_v1_train_only1st.csv"
CHARADES_TEST_FILE = "CharadesEgo_v1_test_only1st.csv"
CHARADES_CLASSES_FILE = "Charades_v1_classes.txt"
VIDEO_DIR = "videos"  # under EGO4D_DIR and CHARADES_DIR
EGOCLIP_COLUMNS = ("clip_idx", "video_uid", "video_dur", "narration_source", "narration_ind",
                   "narration_time", "clip_start", "clip_end", "clip_text", "tag_verb", "tag_noun")
# Charades' columns (EgoVLP reads 'id', 'actions' and the script by position, 6), then
# Charades-Ego's two: whether the video is first-person and its third-person pair.
CHARADES_COLUMNS = ("id", "subject", "scene", "quality", "relevance", "verified", "script",
                    "objects", "descriptions", "actions", "length", "egocentric", "charades_video")
NUM_EGO4D_VERBS, NUM_EGO4D_NOUNS = 118, 582  # EgoVLP's verb_dim / noun_dim
NUM_CHARADES_CLASSES = 157
# Fixed tag indices of the synthetic verbs and nouns, spread over Ego4D's ranges (a step prime
# to the range gives distinct indices) so that code assuming small or dense indices fails here.
VERB_TAGS = tuple((5 + 13 * i) % NUM_EGO4D_VERBS for i in range(len(synthetic.VERBS)))
NOUN_TAGS = tuple((7 + 29 * i) % NUM_EGO4D_NOUNS for i in range(len(synthetic.NOUNS)))
# (folder, chunk file) of a video's chunks under ego4d/videos, by layout (`encode.write_chunks`).
CHUNK_LAYOUTS = {"egovlp": ("{uid}", "{index}.mp4"), "avion": ("{uid}.mp4", "{second}.mp4")}
TEST_SIZES = dict(num_clip_videos=6, num_mcq_videos=5, clips_per_video=6, num_mcq_questions=10,
                  num_charades_train=3, num_charades_test=3)  # seconds to write, for tests
_EGO4D, _CHARADES, _MCQ = 1 << 21, 1 << 22, 1 << 23  # seed streams apart from SynthKitchens'


@dataclasses.dataclass(frozen=True)
class EgoConfig:
    """Sizes of the synthetic data sets. The defaults write in seconds."""

    seed: int = 0
    num_clip_videos: int = 24  # Ego4D videos of EgoClip
    num_mcq_videos: int = 8  # held-out videos of EgoMCQ (an inter question needs five)
    clips_per_video: int = 9  # actions per Ego4D video
    two_verb_fraction: float = 0.15  # chance that an action's narration takes in the next one
    num_mcq_questions: int = 40  # alternately inter-video (types 1) and intra-video (2)
    num_charades_train: int = 20
    num_charades_test: int = 10
    charades_actions: tuple[int, int] = (1, 3)  # range of action segments per Charades-Ego video
    size: int = 64  # frame width and height, pixels (even: yuv420p)
    fps: int = 15
    chunk_seconds: int = 600  # Ego4D chunk length (EgoVLP's chunk_sec)
    layout: str = "egovlp"  # egovlp | avion: the chunk layout of the Ego4D videos
    stamp_frame_index: bool = False  # see `synthetic.stamp_frame_index`

    def __post_init__(self):
        if self.layout not in CHUNK_LAYOUTS:
            raise ValueError(f"layout {self.layout!r}: expected one of {sorted(CHUNK_LAYOUTS)}")
        if self.num_mcq_questions and self.num_mcq_videos < 5:
            raise ValueError(f"num_mcq_videos {self.num_mcq_videos}: expected at least 5 (the "
                             "five videos of an inter-video question)")
        if not 0 <= self.two_verb_fraction <= 1:
            raise ValueError(f"two_verb_fraction {self.two_verb_fraction}: expected in [0, 1]")
        low, high = self.charades_actions
        if not 1 <= low <= high:
            raise ValueError(f"charades_actions {self.charades_actions}: expected 1 <= low <= high")
        if self.chunk_seconds < 1:
            raise ValueError(f"chunk_seconds {self.chunk_seconds}: expected a positive integer")
        self.world()  # SynthConfig's checks of size and the rest

    def world(self, **changes) -> synthetic.SynthConfig:
        """The SynthKitchens config that plans and paints the videos: the demo's look
        (configs/synthetic.py) at ``size`` x ``size``, up to two acted-on objects."""
        return dataclasses.replace(synthetic.SynthConfig(
            seed=self.seed, clips_per_video=self.clips_per_video, width=self.size,
            height=self.size, fps=self.fps, clip_seconds=(1.0, 2.0), gap_seconds=(0.2, 0.5),
            gop=self.fps, max_nouns=2, num_distractors=0, num_clutter=4,
            stamp_frame_index=self.stamp_frame_index, chunk_seconds=self.chunk_seconds), **changes)


@dataclasses.dataclass(frozen=True)
class Narration:
    """An Ego4D narration of one action, or of two adjacent ones joined by 'and'."""

    clips: tuple[synthetic.Clip, ...]
    text: str
    tag_verb: tuple[int, ...]  # `VERB_TAGS` of its verbs, in order, each once
    tag_noun: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class EgoVideo:
    video: synthetic.Video  # video_id is the Ego4D video_uid; split "egoclip" or "egomcq"
    narrations: tuple[Narration, ...]
    source: str  # narration_pass_1 | narration_pass_2 (Ego4D's two annotators)


@dataclasses.dataclass(frozen=True)
class Files:
    """Where `generate` wrote each part."""

    egoclip: pathlib.Path
    egomcq: pathlib.Path
    ego4d_videos: pathlib.Path
    charades_train: pathlib.Path
    charades_test: pathlib.Path
    charades_classes: pathlib.Path
    charades_videos: pathlib.Path


def generate(root, config: EgoConfig = EgoConfig()) -> Files:
    """Writes the three synthetic data sets under ``root`` (see the module docstring)."""
    root = pathlib.Path(root)
    files = Files(root / EGO4D_DIR / EGOCLIP_FILE, root / EGO4D_DIR / EGOMCQ_FILE,
                  root / EGO4D_DIR / VIDEO_DIR, root / CHARADES_DIR / CHARADES_TRAIN_FILE,
                  root / CHARADES_DIR / CHARADES_TEST_FILE,
                  root / CHARADES_DIR / CHARADES_CLASSES_FILE, root / CHARADES_DIR / VIDEO_DIR)
    _write_ego4d(files, config)
    _write_charades(files, config)
    return files


def _write_ego4d(files: Files, config: EgoConfig) -> None:
    world, videos = config.world(), plan_ego4d(config)
    rows = egoclip_rows(videos, config.fps)
    questions = egomcq([r for r in rows if r["split"] == "egomcq"], config)  # fails before videos
    folder, name = CHUNK_LAYOUTS[config.layout]
    for ego in videos:
        encode.write_chunks(files.ego4d_videos / folder.format(uid=ego.video.video_id),
                            synthetic.video_frames(ego.video, world), config.fps, world.gop,
                            config.chunk_seconds, name, reproducible=True)
    synthetic.write_csv(files.egoclip, EGOCLIP_COLUMNS,
                        [[r[c] for c in EGOCLIP_COLUMNS] for r in rows if r["split"] == "egoclip"],
                        delimiter="\t", lineterminator="\n")
    atomic.write_json(files.egomcq, questions, indent=None)


def _write_charades(files: Files, config: EgoConfig) -> None:
    world, videos = config.world(), plan_charades(config)
    files.charades_videos.mkdir(parents=True, exist_ok=True)
    for video in videos:
        encode.write_mp4(files.charades_videos / f"{video.video_id}.mp4",
                         synthetic.video_frames(video, world), config.fps, world.gop,
                         reproducible=True)
    for split, path in (("train", files.charades_train), ("test", files.charades_test)):
        synthetic.write_csv(path, CHARADES_COLUMNS, [charades_row(v, config.fps) for v in videos
                                                     if v.split == split], lineterminator="\n")
    atomic.write_text(files.charades_classes,
                      "".join(f"c{i:03d} {name}\n" for i, name in enumerate(charades_classes())))


# ---------------------------------------------------------------------------------------------
# Ego4D: EgoClip and EgoMCQ.


def plan_ego4d(config: EgoConfig) -> list[EgoVideo]:
    """The Ego4D videos: EgoClip's (split 'egoclip') then the held-out EgoMCQ ones ('egomcq')."""
    world, videos = config.world(), []
    for v in range(config.num_clip_videos + config.num_mcq_videos):
        rng = np.random.default_rng([config.seed, _EGO4D, v])
        uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        clips, seconds = synthetic.plan_clips(rng, uid, world)
        split = "egoclip" if v < config.num_clip_videos else "egomcq"
        video = synthetic.Video(uid, "", split, int(np.ceil(seconds * config.fps)), clips)
        videos.append(EgoVideo(video, _narrate(rng, clips, config.two_verb_fraction),
                               f"narration_pass_{rng.integers(1, 3)}"))
    return videos


def _narrate(rng, clips, two_verb_fraction: float) -> tuple[Narration, ...]:
    """Narrations in time order; an action joins the next when their verbs differ, by chance."""
    narrations, k = [], 0
    while k < len(clips):
        joined = (k + 1 < len(clips) and clips[k].verb != clips[k + 1].verb
                  and rng.random() < two_verb_fraction)
        narrations.append(narration(clips[k:k + 2 if joined else k + 1]))
        k += 2 if joined else 1
    return tuple(narrations)


def narration(clips) -> Narration:
    """Ego4D's form of SynthKitchens' actions: '#C C <verb>s the <colour> <shape> [particle]',
    the verb word the synonym that SynthKitchens drew for the clip, actions joined by 'and'."""
    verbs = dict.fromkeys(VERB_TAGS[c.verb] for c in clips)
    nouns = dict.fromkeys(NOUN_TAGS[n] for c in clips for n in c.nouns)
    return Narration(tuple(clips), "#C C " + " and ".join(map(_phrase, clips)), tuple(verbs),
                     tuple(nouns))


def _phrase(clip: synthetic.Clip) -> str:
    """'lifts the red square and the blue bar up': the synonym that SynthKitchens drew for the
    clip (its narration's first word) in the third person, the objects, the particle."""
    verb = synthetic.VERBS[clip.verb]
    objects = []
    for noun in clip.nouns:
        shape, colour = synthetic.NOUNS[noun].split(":")
        objects.append(f"the {colour} {shape}")
    return " ".join([_third_person(clip.narration.split()[0]), " and ".join(objects)]
                    + ([verb.particle] if verb.particle else []))


def _third_person(verb: str) -> str:
    return verb + ("es" if verb.endswith(("s", "sh", "ch", "x", "z")) else "s")


def egoclip_rows(videos, fps: int) -> list[dict]:
    """One dict per narration with `EGOCLIP_COLUMNS` (values as written) and its 'split';
    clip_idx counts over all videos, so EgoMCQ's rows do not reuse EgoClip's indices."""
    rows = []
    for ego in videos:
        for k, n in enumerate(ego.narrations):
            start, stop = n.clips[0].start, n.clips[-1].stop
            rows.append(dict(
                clip_idx=len(rows), video_uid=ego.video.video_id,
                video_dur=round(ego.video.num_frames / fps, 6), narration_source=ego.source,
                narration_ind=k, narration_time=round((start + stop) / 2, 4),
                clip_start=round(start, 2), clip_end=round(stop, 2), clip_text=n.text,
                tag_verb=str(list(n.tag_verb)), tag_noun=str(list(n.tag_noun)),
                split=ego.video.split))
    return rows


def egomcq(rows: list[dict], config: EgoConfig) -> dict:
    """EgoMCQ's questions over ``rows`` (the held-out narrations), alternately inter- and
    intra-video: the query, five choices (its own clip and four whose narration differs from
    the query's: from four other videos, or from its own), the answer's position, the type.
    Each narration is asked at most once."""
    rng = np.random.default_rng([config.seed, _MCQ])
    by_video = {}
    for r in rows:
        by_video.setdefault(r["video_uid"], []).append(r)
    unasked, questions = [rows[q] for q in rng.permutation(len(rows))], {}
    for i in range(config.num_mcq_questions):
        intra = i % 2 == 1
        found = next(((query, pools) for query in unasked
                      if (pools := _choice_pools(query, by_video, intra))), None)
        if found is None:
            raise ValueError(f"EgoMCQ question {i} ({'intra' if intra else 'inter'}-video): no "
                             f"held-out narration left with four others to choose; expected "
                             f"fewer than {config.num_mcq_questions} questions or more videos")
        query, pools = found
        unasked.remove(query)
        if intra:
            distractors = [pools[0][j] for j in rng.choice(len(pools[0]), 4, replace=False)]
        else:
            picked = rng.choice(len(pools), 4, replace=False)
            distractors = [pools[j][rng.integers(len(pools[j]))] for j in picked]
        choices, order = [query, *distractors], rng.permutation(5)
        questions[str(i)] = {
            "query": _record(query), "answer": int(np.flatnonzero(order == 0)[0]),
            "choices": {str(j): _record(choices[o]) for j, o in enumerate(order)},
            "types": 2 if intra else 1}
    return questions


def _choice_pools(query: dict, by_video: dict, intra: bool) -> list[list[dict]]:
    """The narrations that may stand beside ``query`` (their text differs from its): [those of
    its video] if it has four (intra), else [those of each other video that has one] if there
    are four such videos (inter); [] where the question cannot be asked."""
    differ = {uid: [r for r in video if r["clip_text"] != query["clip_text"]]
              for uid, video in by_video.items()}
    if intra:
        pool = differ[query["video_uid"]]
        return [pool] if len(pool) >= 4 else []
    pools = [pool for uid, pool in differ.items() if uid != query["video_uid"] and pool]
    return pools if len(pools) >= 4 else []


def _record(row: dict) -> dict:
    return {c: row[c] for c in EGOCLIP_COLUMNS}


# ---------------------------------------------------------------------------------------------
# Charades-Ego.


def charades_classes() -> list[str]:
    """The 157 class names: verb x shape in order ('move square left', ...), then padding."""
    names = [" ".join([v.words[0], shape] + ([v.particle] if v.particle else []))
             for v in synthetic.VERBS for shape in synthetic.SHAPES]
    return names + [f"unused class {i}" for i in range(len(names), NUM_CHARADES_CLASSES)]


def charades_class(clip: synthetic.Clip) -> int:
    """The class of a one-object action: its verb x the shape of its object."""
    return clip.verb * len(synthetic.SHAPES) + synthetic.SHAPES.index(
        synthetic.NOUNS[clip.nouns[0]].split(":")[0])


def plan_charades(config: EgoConfig) -> list[synthetic.Video]:
    """The Charades-Ego videos, split 'train' then 'test'; one object per action."""
    low, high = config.charades_actions
    videos, ids = [], set()
    for v in range(config.num_charades_train + config.num_charades_test):
        rng = np.random.default_rng([config.seed, _CHARADES, v])
        video_id = _charades_id(rng, ids)
        world = config.world(max_nouns=1, clips_per_video=int(rng.integers(low, high + 1)))
        clips, seconds = synthetic.plan_clips(rng, video_id, world)
        split = "train" if v < config.num_charades_train else "test"
        videos.append(synthetic.Video(video_id, "", split, int(np.ceil(seconds * config.fps)),
                                      clips))
    return videos


def _charades_id(rng, taken: set) -> str:
    """Five capitals or digits, as Charades' ids, + 'EGO' (first person); not in ``taken``."""
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    video_id = "".join(rng.choice(alphabet, 5)) + "EGO"
    while video_id in taken:
        video_id = "".join(rng.choice(alphabet, 5)) + "EGO"
    taken.add(video_id)
    return video_id


def charades_row(video: synthetic.Video, fps: int) -> list:
    """The `CHARADES_COLUMNS` of one video: script and descriptions tell its actions."""
    sentences = [f"A person {_phrase(c)}." for c in video.clips]
    shapes = dict.fromkeys(synthetic.NOUNS[c.nouns[0]].split(":")[0] for c in video.clips)
    actions = ";".join(f"c{charades_class(c):03d} {c.start:.2f} {c.stop:.2f}" for c in video.clips)
    return [video.video_id, video.video_id[:4], "Table", 7, 7, "Yes", " ".join(sentences),
            ";".join(shapes), ";".join(sentences), actions, f"{video.num_frames / fps:.2f}",
            "Yes", video.video_id.removesuffix("EGO")]
