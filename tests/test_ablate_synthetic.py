"""tools/ablate_synthetic.py: the mirror accuracy and the order probes it reports."""

import numpy as np
import pytest

from tempret_jax import main
from tempret_jax.data import synthetic


@pytest.fixture(scope="module")
def ablate(load_tool):
    return load_tool("ablate_synthetic")


def _verb(key):
    return next(i for i, v in enumerate(synthetic.VERBS) if v.key == key)


def test_mirror_accuracy_compares_own_verb_with_its_partner_on_the_same_nouns(ablate):
    left, right, shake = _verb("move-left"), _verb("move-right"), _verb("shake")
    red, blue = frozenset({0}), frozenset({1})
    # Sentences: left/red, right/red, shake/red, left/blue.
    text_verb = np.array([left, right, shake, left])
    text_nouns = [red, red, red, blue]
    clip_verb = np.array([left, right, shake, left])
    clip_nouns = [red, red, red, blue]
    sim = np.array([[0.9, 0.1, 0.0, 0.0],    # left clip prefers "left": right
                    [0.8, 0.2, 0.0, 0.0],    # right clip prefers "left": wrong
                    [0.0, 0.0, 1.0, 0.0],    # shake has no partner: not counted
                    [0.0, 0.0, 0.0, 1.0]])   # blue has no "right" sentence: not counted
    accuracy, count = ablate.mirror_accuracy(sim, clip_verb, clip_nouns, text_verb, text_nouns)
    assert (accuracy, count) == (0.5, 2)


def test_data_variants_are_valid_synthkitchens(ablate):
    for name in ablate.DATA:
        config = ablate.load_config("mean,sms", name)
        synthetic.SynthConfig(**config.synthetic.to_dict())
    assert ablate.load_config("mean,sms", "motion").synthetic.num_nouns == 4


def test_frame_averaging_is_blind_to_order_in_the_probes(ablate, tmp_path):
    config = ablate.load_config("mean,sms,test")
    with config.unlocked():
        config.eval.every_steps = -1
        # Only move-left / move-right of one noun, so that the test clips have mirror partners.
        config.synthetic.update(num_nouns=1, num_verbs=2)
    assert main.run(config, tmp_path, "train") == 0
    result = ablate.score(config, tmp_path)
    assert result["mirror_clips"] > 0
    assert result["order_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result["mirror_accuracy_reversed"] == result["mirror_accuracy"]
    assert {"mAP", "nDCG", "mirror_clips", "step"} <= set(result)


def test_a_run_stopped_early_is_not_recorded(ablate, tmp_path, monkeypatch, capsys):
    """SIGTERM makes the trainer checkpoint and return early; the tool must not file that run
    as finished (rerunning the command resumes it)."""
    monkeypatch.setattr(ablate.main, "synthetic_dataset", lambda config, workdir: "data")
    monkeypatch.setattr(ablate.main, "run", lambda config, workdir, mode: 0)
    monkeypatch.setattr(ablate, "score", lambda config, workdir: {"step": 3})
    ablate.main_(["--workdir", str(tmp_path), "--steps", "10", "--runs", "mean,joint"])
    assert not (tmp_path / "ablation.jsonl").exists()
    assert "mean: stopped at step 3 of 10; not recorded" in capsys.readouterr().out
