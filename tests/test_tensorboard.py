"""TensorBoard receives the training scalars (loss, learning rate, throughput) and every
evaluation scalar, each metric per direction, read back from the event files themselves."""

import struct

import pytest
from tensorboardX.proto import event_pb2

from tempret_jax import config as config_lib
from tempret_jax import train
from tiny_run import make_dataset, tiny_config


def read_scalars(folder) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every event file under ``folder`` (TFRecord framing: a uint64
    length, its masked CRC, the Event proto, its masked CRC)."""
    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory)


def test_training_and_evaluation_scalars_reach_tensorboard(dataset, tmp_path):
    config = tiny_config(dataset)
    config.eval.every_steps = 2
    result = train.train_and_evaluate(config, tmp_path)
    scalars = read_scalars(tmp_path / "tensorboard")
    for name in ("loss", "lr", "clips_per_s", "grad_norm"):
        assert sorted(scalars[f"train/{name}"]) == [1, 2, 3, 4], name
    for name in config_lib.EVALUATORS["ek100_mir"]:  # mAP_v2t, ..., nDCG_avg
        assert sorted(scalars[f"eval/{name}"]) == [2, 4], name
    assert scalars["eval/mAP_avg"][4] == pytest.approx(result["metrics"]["mAP"]["avg"], 1e-6)
