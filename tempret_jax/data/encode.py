"""Frames to H.264 MP4 files: one file, or chunks of a fixed duration in a folder.

The chunk layouts of the published pipelines name a chunk by its start second (AVION:
<video>.MP4/<start_sec>.MP4) or by its index (EgoVLP's utils/video_chunk.py: <video_uid>/<i>.mp4,
600-s chunks); `write_chunks` takes the name as a format string with both. The bytes are a
deterministic function of the frames and options.
"""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Iterable

import av
import numpy as np

from tempret_jax import atomic


def write_mp4(path: pathlib.Path, frames: Iterable[np.ndarray], fps: int, gop: int,
              reproducible: bool = False) -> None:
    """Writes ``frames`` ((height, width, 3) uint8 each, height and width even; at least one)
    as one MP4 at ``fps`` frames per second with a keyframe every ``gop`` frames.

    x264's assembly gives other bytes now and then for the same frames (3 encodings in 150 of
    a 64x48 video, PyAV 18.1; the decoded frames differ too); ``reproducible`` encodes with its
    C code on one thread instead: the same bytes every time, about 1.4x the encoding time.
    """
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: expected at least one frame to encode")
    # format="mp4": the temporary's name does not end in .MP4 for FFmpeg to guess it from.
    with atomic.path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        options = {"crf": "18", "preset": "veryfast", "g": str(gop)}
        if reproducible:
            stream.codec_context.thread_count = 1
            options["x264-params"] = "asm=0"
        stream.options = options
        for img in itertools.chain([first], frames):
            # Converted here, not inside encode(), where PyAV's conversion made the bytes differ
            # more often (3 in 40 encodings); the usual bytes are the same either way.
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_chunks(folder: pathlib.Path, frames: Iterable[np.ndarray], fps: int, gop: int,
                 chunk_seconds: int, name: str, reproducible: bool = False) -> None:
    """Writes ``frames`` into ``folder`` as MP4s of ``chunk_seconds`` each (the last shorter);
    a chunk's file name is ``name`` formatted with its start ``second`` and its ``index``,
    e.g. "{second}.MP4" (AVION) or "{index}.mp4" (EgoVLP); ``reproducible`` as `write_mp4`."""
    if chunk_seconds < 1:
        raise ValueError(f"chunk_seconds {chunk_seconds}: expected a positive whole number")
    folder.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    for index in itertools.count():
        first = next(frames, None)
        if first is None:
            return
        chunk = itertools.chain([first], itertools.islice(frames, chunk_seconds * fps - 1))
        write_mp4(folder / name.format(second=index * chunk_seconds, index=index), chunk, fps, gop,
                  reproducible)
