"""TensorBoard receives the training scalars (loss, learning rate, throughput), every
evaluation scalar, each metric per direction, and the per-verb AP figure of each evaluation,
read back from the event files themselves."""

import io
import struct

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from tempret_jax import config as config_lib
from tempret_jax import train
from tiny_run import make_dataset, tiny_config


def read_events(folder) -> list:
    """The Event protos of every event file under ``folder`` (TFRecord framing: a uint64
    length, its masked CRC, the Event proto, its masked CRC)."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            events.append(event_pb2.Event.FromString(data[at + 12:at + 12 + length]))
            at += 12 + length + 4
    return events


def read_scalars(folder) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the scalars under ``folder``."""
    scalars: dict[str, dict[int, float]] = {}
    for event in read_events(folder):
        for value in event.summary.value:
            if not value.HasField("image"):
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def read_images(folder) -> dict[str, dict[int, Image.Image]]:
    """{tag: {step: decoded image}} of the images under ``folder``."""
    images: dict[str, dict[int, Image.Image]] = {}
    for event in read_events(folder):
        for value in event.summary.value:
            if value.HasField("image"):
                image = Image.open(io.BytesIO(value.image.encoded_image_string))
                images.setdefault(value.tag, {})[event.step] = image
    return images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run of 4 steps evaluated at steps 2 and 4: (its config, result, workdir)."""
    config = tiny_config(make_dataset(tmp_path_factory))
    config.eval.every_steps = 2
    workdir = tmp_path_factory.mktemp("run")
    return config, train.train_and_evaluate(config, workdir), workdir


def test_training_and_evaluation_scalars_reach_tensorboard(run):
    config, result, workdir = run
    scalars = read_scalars(workdir / "tensorboard")
    for name in ("loss", "lr", "clips_per_s", "grad_norm"):
        assert sorted(scalars[f"train/{name}"]) == [1, 2, 3, 4], name
    for name in config_lib.EVALUATORS["ek100_mir"]:  # mAP_v2t, ..., nDCG_avg
        assert sorted(scalars[f"eval/{name}"]) == [2, 4], name
    assert scalars["eval/mAP_avg"][4] == pytest.approx(result["metrics"]["mAP"]["avg"], 1e-6)


def test_each_evaluation_logs_the_per_verb_ap_figure_as_an_image(run):
    _, _, workdir = run
    figures = read_images(workdir / "tensorboard")["eval/verb_ap"]
    assert sorted(figures) == [2, 4]
    for image in figures.values():
        assert image.mode == "RGB" and image.width > 300 and image.height > 100
        assert np.asarray(image).std() > 10  # a drawn chart, not a blank canvas
