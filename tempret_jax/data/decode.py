"""The frames of EK-100 clips, taken from their source video (file, chunk folder or frames folder).

Sources, looked up per video in this order under ``video_root`` (`find_source`, EK-100's;
other corpora have their own, `tempret_jax.data.corpora`):
  <participant>/videos/<video_id>.MP4            the published videos ('mp4')
  <participant>/videos/<video_id>.MP4/<s>.MP4     AVION's chunks of ``chunk_seconds`` starting at s
                                                  ('chunked')
  <participant>/rgb_frames/<video_id>/frame_%010d.jpg   the published frames (1-based numbers)
A fourth kind, 'indexed', is a folder of chunks numbered by index (EgoVLP's Ego4D chunks:
``<i>.mp4`` holds [i, i + 1) * ``chunk_seconds``).
From a video, the frame shown at time t is taken (the last frame with pts <= t; seeking to the
keyframe before the first time and decoding forward, so it is frame-accurate); from a frames
folder, frame ``start_frame + floor((i + 0.5) * F / N)`` with F = stop_frame - start_frame + 1.
A frame that cannot be decoded (a damaged packet, chunk or JPEG) costs only the clips that need
it: `clip_jpegs` gives the reason for each of them and the frames of the others.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pathlib
from collections.abc import Iterator, Sequence

import av
import numpy as np
from PIL import Image

_SEEK_GAP = 2.0  # seconds


def sample_times(start: float, stop: float, n: int) -> np.ndarray:
    """The n frame times of a clip: centres of n equal segments of [start, stop], (n,) float64."""
    return start + (np.arange(n) + 0.5) * (stop - start) / n


def sample_frame_numbers(start_frame: int, stop_frame: int, n: int) -> np.ndarray:
    """The n frame numbers of a clip in a 1-based frames folder: (n,) int64."""
    count = stop_frame - start_frame + 1
    return start_frame + np.floor((np.arange(n) + 0.5) * count / n).astype(np.int64)


class SkipVideo(Exception):
    """Every clip of this video is skipped, for the reason in the message."""


def find_source(video_root, participant_id: str, video_id: str) -> tuple[str, pathlib.Path]:
    """(kind, path) of a video: kind is 'mp4', 'chunked' or 'frames'; raises SkipVideo if none."""
    videos = pathlib.Path(video_root) / participant_id / "videos"
    for ext in (".MP4", ".mp4"):
        path = videos / f"{video_id}{ext}"
        if path.is_file():
            return "mp4", path
        if path.is_dir():
            return "chunked", path
    frames = pathlib.Path(video_root) / participant_id / "rgb_frames" / video_id
    if frames.is_dir():
        return "frames", frames
    raise SkipVideo(f"missing video: neither {videos / video_id}.MP4 (file or chunk folder) "
                    f"nor the frames folder {frames}")


# What PyAV raises on a file it cannot open or a packet it cannot demux or decode.
DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, IndexError)


def source_identity(kind: str, path) -> str:
    """What a source's frames depend on, cheaply: the path with the size and mtime_ns of the file,
    or of every file of the chunk or frames folder (digested). Replacing, touching, adding or
    removing a file changes it; `prepare` rebuilds a video's shard when it does."""
    path = os.path.abspath(path)
    if kind == "mp4":
        st = os.stat(path)
        return f"{kind}:{path}:{st.st_size}:{st.st_mtime_ns}"
    with os.scandir(path) as entries:
        listing = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                         for e in entries if e.is_file())
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    return f"{kind}:{path}:{len(listing)}:{digest}"


def decode_video_at(path, times, threads: int = 1, seek_gap: float = _SEEK_GAP,
                    as_array: bool = False,
                    errors: dict[int, str] | None = None) -> list[Image.Image | np.ndarray | None]:
    """The frames shown at ``times`` (seconds, any order) of a video file; None past its end.

    ``threads``: decoder threads (1: one core per worker process, as `prepare` runs them).
    ``as_array``: (H, W, 3) uint8 arrays (as decord gives them) instead of PIL images.
    ``errors``: where decoding fails (a damaged packet), decoding starts again with a seek to
    the next time not yet reached; if that fails before reaching it, the time gets
    ``errors[i] = reason`` (its entry stays None) and the next one is tried: only the times
    whose frames need the damaged stretch are lost. Without it the error is raised. An error
    opening the file is always raised.

    Seeks to the keyframe before each run of times (a new run starts when the next time is
    more than ``seek_gap`` seconds past the last decoded frame) and decodes forward. With a
    gap of at least the keyframe interval a seek never lands before the current position.
    """
    times = np.asarray(times, np.float64)
    order = np.argsort(times, kind="stable")
    out: list[Image.Image | np.ndarray | None] = [None] * len(times)
    convert = (lambda f: f.to_ndarray(format="rgb24")) if as_array else (lambda f: f.to_image())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        if threads != 1:
            stream.thread_type = "AUTO"
        k = 0
        while k < len(order):
            start = k  # each run seeks to the keyframe before times[order[start]]
            try:
                k = _decode_run(container, stream, times, order, k, out, convert, seek_gap)
            except DECODE_ERRORS as e:
                if errors is None:
                    raise
                while k < len(order) and out[order[k]] is not None:  # filled before the error
                    k += 1
                if k == start:  # not even its own time: that frame needs the damaged stretch
                    errors[int(order[k])] = f"{type(e).__name__}: {e}"
                    k += 1
    return out


def _decode_run(container, stream, times, order, k: int, out: list, convert,
                seek_gap: float) -> int:
    """Seeks to the keyframe before ``times[order[k]]`` and fills ``out`` for the times shown
    until the next one is more than ``seek_gap`` ahead; returns the position in ``order``
    reached (len(order) at the end of the stream: the times after it have no frame)."""
    eps = 1e-4  # float slack when a time falls exactly on a frame's pts
    sought = times[order[k]]
    container.seek(max(0, int(sought / stream.time_base)), stream=stream, backward=True,
                   any_frame=False)
    prev, prev_image, prev_time = None, None, -math.inf
    for frame in container.decode(stream):
        ft = float(frame.time)
        # Times before this frame are shown by the previous frame.
        while k < len(order) and prev is not None and times[order[k]] < ft - eps:
            prev_image = convert(prev) if prev_image is None else prev_image
            out[order[k]] = prev_image
            k += 1
        if k == len(order) or times[order[k]] > max(ft, sought) + seek_gap:
            return k  # done, or seeking there is cheaper than decoding the gap
        prev, prev_image, prev_time = frame, None, ft
    # End of stream: the last frame is shown for one frame duration.
    rate = float(stream.average_rate or stream.guessed_rate or 30)
    while k < len(order) and prev is not None and times[order[k]] < prev_time + 1 / rate:
        prev_image = convert(prev) if prev_image is None else prev_image
        out[order[k]] = prev_image
        k += 1
    return len(order)


def decode_at(kind: str, path, times, chunk_seconds: int = 15, seek_gap: float = _SEEK_GAP,
              as_array: bool = False,
              errors: dict[int, str] | None = None) -> list[Image.Image | np.ndarray | None]:
    """The frames shown at ``times`` (seconds of the video, any shape, flattened) of a source.

    ``kind``, ``path`` as `find_source` returns them: 'mp4', a video file; 'chunked', AVION's
    folder of ``<start_sec>.MP4`` chunks of ``chunk_seconds``; 'indexed', a folder of
    ``<i>.mp4`` chunks starting at i * ``chunk_seconds``. None where there is no frame
    (past the end, a missing chunk). Raises SkipVideo for a chunk folder without chunks or a
    video file that cannot be opened. ``errors``: gets {i: reason} for the times whose frame
    could not be decoded (`decode_video_at`; with a chunk that cannot be opened, all of its
    times); without it any decode error raises SkipVideo. ``as_array``: see `decode_video_at`.
    """
    times = np.asarray(times, np.float64).ravel()
    if kind == "mp4":
        sources = {path: (times, np.ones(times.shape, bool))}
    else:
        step = chunk_seconds if kind == "indexed" else 1  # a chunk's name -> its start
        chunks = {}
        for f in pathlib.Path(path).iterdir():
            if f.is_file() and f.stem.isdigit():
                chunks[int(f.stem) * step] = f
        if not chunks:
            raise SkipVideo(f"chunk folder {path} holds no "
                            f"{'<i>.mp4' if kind == 'indexed' else '<start_sec>.MP4'} files")
        starts = times // chunk_seconds * chunk_seconds
        sources = {}
        for s in np.unique(starts):
            chunk = chunks.get(int(s))
            if chunk is not None:  # else its frames stay None
                sources[chunk] = (times - s, starts == s)
    out: list[Image.Image | np.ndarray | None] = [None] * len(times)
    for source, (local, mask) in sources.items():
        index, local = np.flatnonzero(mask), local[mask]
        failed: dict[int, str] | None = None if errors is None else {}
        try:
            decoded = decode_video_at(source, local, seek_gap=seek_gap, as_array=as_array,
                                      errors=failed)
        except DECODE_ERRORS as e:
            reason = f"cannot decode {source}: {type(e).__name__}: {e}"
            if errors is None or kind == "mp4":
                raise SkipVideo(reason) from None
            errors.update(dict.fromkeys(index.tolist(), reason))  # one chunk: its times only
            continue
        for i, img in zip(index, decoded):
            out[i] = img
        for j, reason in (failed or {}).items():
            errors[int(index[j])] = f"cannot decode {source} at {local[j]:.3f} s: {reason}"
    return out


def clip_jpegs(kind: str, path, clips: Sequence, *, num_frames: int, short_side: int,
               quality: int, chunk_seconds: int = 15) -> Iterator[tuple[object, list[bytes] | str]]:
    """Yields (clip, frames) for every clip of one source: frames are the clip's ``num_frames``
    JPEG byte strings with short side ``short_side``, or a string, the reason it is skipped.

    ``kind``, ``path`` as `find_source` returns them; a clip is anything with ``start``,
    ``stop`` (seconds) and ``start_frame``, ``stop_frame`` (1-based) attributes, such as
    `tasks.ClipTask`. Raises SkipVideo as `decode_at` does.
    """
    if kind == "frames":
        return _folder_clips(path, clips, num_frames, short_side, quality)
    return _video_clips(kind, path, clips, num_frames, short_side, quality, chunk_seconds)


def _video_clips(kind, path, clips, num_frames: int, short_side: int, quality: int,
                 chunk_seconds: int):
    """Yields (clip, JPEG bytes or reason) for every clip of a video file or chunk folder."""
    n = num_frames
    times = np.stack([sample_times(c.start, c.stop, n) for c in clips])
    errors: dict[int, str] = {}
    images = decode_at(kind, path, times, chunk_seconds, errors=errors)
    for k, clip in enumerate(clips):
        row = images[k * n:(k + 1) * n]
        missing = [t for t, img in zip(times[k], row) if img is None]
        failed = [errors[i] for i in range(k * n, (k + 1) * n) if i in errors]
        if failed:
            yield clip, failed[0]
        elif missing:
            yield clip, (f"clip [{clip.start:.2f}, {clip.stop:.2f}] s is outside the video "
                         f"{path}: no frame at {missing[0]:.3f} s")
        else:
            yield clip, [_resize_jpeg(img, short_side, quality) for img in row]


def _folder_clips(path: pathlib.Path, clips, num_frames: int, short_side: int, quality: int):
    """Yields (clip, JPEG bytes or reason) for every clip of a frames folder."""
    for clip in clips:
        numbers = sample_frame_numbers(clip.start_frame, clip.stop_frame, num_frames)
        files = [path / f"frame_{n:010d}.jpg" for n in numbers]
        missing = [f for f in files if not f.is_file()]
        if missing:
            yield clip, (f"frames {clip.start_frame}-{clip.stop_frame} are outside the frames "
                         f"folder: missing {missing[0]}")
            continue
        frames = []
        for f in files:
            try:
                frames.append(_folder_jpeg(f, short_side, quality))
            except (OSError, SyntaxError, ValueError) as e:  # what PIL raises on a damaged file
                frames = f"cannot read {f}: {type(e).__name__}: {e}"
                break
        yield clip, frames


def _folder_jpeg(path: pathlib.Path, short_side: int, quality: int) -> bytes:
    """A frame file as JPEG bytes with short side ``short_side`` (its own bytes when it already
    has it and is RGB or greyscale, which `pipeline.decode_jpeg` reads). Decoded either way, so
    a damaged file is an error here and not a record that fails in training."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if (min(img.size) == short_side and img.format == "JPEG"
                and img.mode in ("RGB", "L")):
            return data
        return _resize_jpeg(img.convert("RGB"), short_side, quality)


def _resize_jpeg(img: Image.Image, short_side: int, quality: int) -> bytes:
    w, h = img.size
    k = short_side / min(w, h)
    if k != 1:
        img = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.BILINEAR,
                         reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
