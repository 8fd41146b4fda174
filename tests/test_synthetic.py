"""SynthKitchens' content knobs: which nouns and verbs appear, how big objects are, how far they move."""

import dataclasses

import numpy as np
import pytest

from tempret_jax.data import ek100, synthetic

SMALL = synthetic.SynthConfig(num_train_videos=4, num_test_videos=2, clips_per_video=12)


def _clips(config):
    return [c for v in synthetic.plan(config) for c in v.clips]


def test_defaults_draw_from_every_noun_and_verb():
    clips = _clips(dataclasses.replace(SMALL, num_train_videos=20))
    assert {c.verb for c in clips} == set(range(len(synthetic.VERBS)))
    assert len({n for c in clips for n in c.nouns}) > len(synthetic.NOUNS) // 2


def test_num_nouns_and_num_verbs_restrict_to_the_first_classes():
    config = dataclasses.replace(SMALL, num_nouns=4, num_verbs=2, max_nouns=1, num_distractors=1)
    clips = _clips(config)
    assert {c.verb for c in clips} == {0, 1}  # move-left, move-right: a mirrored pair
    assert {n for c in clips for n in c.nouns + tuple(d[0] for d in c.distractors)} <= set(range(4))


def test_object_size_sets_the_range_of_sizes():
    sizes = [o[3] for c in _clips(dataclasses.replace(SMALL, object_size=(0.3, 0.4))) for o in c.objects]
    assert 0.3 <= min(sizes) and max(sizes) <= 0.4


@pytest.mark.parametrize("travel", [0.25, 0.4])
def test_travel_is_the_distance_moved_and_mirrored_motions_reverse_time(travel):
    for a, b in synthetic.MIRRORED_VERBS[:2]:
        motion = {v.key: v.motion for v in synthetic.VERBS}
        start = synthetic.object_state(motion[a], 0.0, 0.5, 0.5, 0.5, 0.2, travel)
        end = synthetic.object_state(motion[a], 1.0, 0.5, 0.5, 0.5, 0.2, travel)
        assert np.hypot(end[0] - start[0], end[1] - start[1]) == pytest.approx(travel)
        for u in (0.0, 0.3, 1.0):
            assert synthetic.object_state(motion[b], u, 0.5, 0.5, 0.5, 0.2, travel) == \
                pytest.approx(synthetic.object_state(motion[a], 1 - u, 0.5, 0.5, 0.5, 0.2, travel))


@pytest.mark.parametrize("change, message", [
    (dict(num_nouns=3), "num_nouns 3 must be in .max_nouns \\+ num_distractors = 4, 20."),
    (dict(num_nouns=21), "num_nouns 21"),
    (dict(num_verbs=0), "num_verbs 0 must be in \\[1, 9\\]"),
])
def test_bad_sizes_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **change)


def test_the_tool_generates_the_configs_data_and_refuses_a_used_folder(load_tool, tmp_path,
                                                                       capsys):
    tool = load_tool("synthkitchens")
    assert tool.main(["--out", str(tmp_path / "s"), "--size", "test", "--layout", "frames"]) == 0
    clips = ek100.read_clips(tmp_path / "s" / "annotations" / ek100.TRAIN_CLIPS_FILE)
    size = tool.sizes("test")
    assert len(clips) == size["num_train_videos"] * size["clips_per_video"]
    assert list((tmp_path / "s").glob("P01/rgb_frames/*/frame_0000000001.jpg"))
    assert "SynthKitchens (test, frames)" in capsys.readouterr().out
    assert tool.main(["--out", str(tmp_path / "s")]) == 2
    assert "expected a new or empty folder" in capsys.readouterr().err
