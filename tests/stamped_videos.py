"""Tiny MP4 videos whose frames carry their index (synthetic.stamp_frame_index), written with
PyAV as tempret_jax/data/synthetic.py writes SynthKitchens', for the corpus preparation tests."""

import io
import pathlib

import av
import numpy as np
from PIL import Image

from tempret_jax.data import decode, synthetic

FPS, WIDTH, HEIGHT = 10, 128, 72


def write(path: pathlib.Path, first: int, count: int) -> None:
    """An MP4 of ``count`` frames at FPS whose frame j is stamped with ``first + j``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "g": "10"}
        for j in range(count):
            img = np.full((HEIGHT, WIDTH, 3), 96, np.uint8)
            synthetic.stamp_frame_index(img, first + j)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def write_chunks(folder: pathlib.Path, seconds: float, chunk_seconds: int, name) -> None:
    """A video of ``seconds`` cut into chunks of ``chunk_seconds`` in ``folder``, chunk k named
    ``name(k)``; frames keep their index in the whole video."""
    total, per_chunk = round(seconds * FPS), chunk_seconds * FPS
    for k, first in enumerate(range(0, total, per_chunk)):
        write(folder / name(k), first, min(per_chunk, total - first))


def stamps(record) -> list[int]:
    """The frame index stamped into each stored frame of a record."""
    return [synthetic.read_frame_index(np.asarray(Image.open(io.BytesIO(f))))
            for f in record["frames"]]


def expected_stamps(start: float, stop: float, num_frames: int) -> list[int]:
    """The index of the frame shown at each of a clip's sample times."""
    times = decode.sample_times(start, stop, num_frames)
    return list(np.floor(times * FPS + 1e-6).astype(int))
