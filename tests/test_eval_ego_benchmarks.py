"""The EgoMCQ and Charades-Ego evaluators: their numbers are the metric functions applied to
cosines computed here from the model's own embeddings; each reads the data set its key names,
of its corpus; zero-shot is one command per benchmark; a training run selects by EgoMCQ."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import stamped_videos as videos
from tempret_jax import config as config_lib
from tempret_jax import evaluate, evaluators, main, run_config, state, train, zero_shot
from tempret_jax.data import charades_ego as charades_data
from tempret_jax.data import ego4d, pipeline, prepare
from tempret_jax.data.text_tokens import TextTokenizer
from tempret_jax.evaluators import charades_ego, egomcq
from test_zero_shot import _converted as converted_checkpoint
from tiny_run import REPO, make_dataset, tiny_config

DATA = pathlib.Path(__file__).parent / "data"
EGO4D_SECONDS = {"vid-a": 6.0, "vid-b": 4.0}  # the fixtures' video_dur
CHARADES_SECONDS = {"CCC3G": 3.0, "DDD4H": 2.5}  # the test videos' length


def _prepared(tmp_path_factory, corpus: str, fixtures: str, seconds: dict) -> str:
    """The 'test' split of a corpus's fixtures, with a stamped video <id>.mp4 per video, at
    the tiny model's 4 frames."""
    root = tmp_path_factory.mktemp(corpus)
    shutil.copytree(DATA / fixtures, root / "annotations")
    for vid, length in seconds.items():
        videos.write(root / "videos" / f"{vid}.mp4", 0, round(length * videos.FPS))
    return prepare.prepare(prepare.PrepareConfig(
        annotation_dir=str(root / "annotations"), video_root=str(root / "videos"),
        output_dir=str(root / "out"), corpus=corpus, num_frames=4, short_side=36,
        splits=("test",), num_workers=1, progress=False))["dataset_dir"]


@pytest.fixture(scope="module")
def egomcq_data(tmp_path_factory):
    return _prepared(tmp_path_factory, "ego4d", "ego4d", EGO4D_SECONDS)


@pytest.fixture(scope="module")
def charades_data_dir(tmp_path_factory):
    return _prepared(tmp_path_factory, "charades_ego", "charades_ego", CHARADES_SECONDS)


@pytest.fixture(scope="module")
def ek100_data(tmp_path_factory):
    return make_dataset(tmp_path_factory)


def _setup(dataset_dir, evaluator: str):
    c = tiny_config(dataset_dir, evals=(evaluator,))
    c.checkpoint.best_metric = config_lib.EVALUATORS[evaluator][-1]
    setup = state.TrainSetup(c)
    return c, setup.model, setup.init_state().params, setup.mesh


def _unit_videos(model, params, dataset_dir) -> dict[int, np.ndarray]:
    """{clip_index: (E,) unit embedding} of every record of the test split, straight from the
    model's encode_video and embed_video (one clip at a time)."""
    out = {}
    for batch in pipeline.eval_pipeline(dataset_dir, 1, num_frames=4, resolution=32,
                                        process_index=0, process_count=1):
        features = model.apply({"params": params}, batch["video"][:, 0],
                               method=model.encode_video)["features"]
        out[int(batch["clip_index"][0])] = np.asarray(
            model.apply({"params": params}, features, method=model.embed_video))[0]
    return out


def _unit_texts(model, params, texts) -> np.ndarray:
    features = model.apply({"params": params}, TextTokenizer.of(model.config.text)(texts),
                           method=model.encode_text)["features"]
    return np.asarray(model.apply({"params": params}, features, method=model.embed_text))


# ---------------------------------------------------------------------------------------------
# The evaluators.


def test_egomcq_is_the_accuracy_of_the_highest_cosine_among_five_clips(egomcq_data, tmp_path):
    config, model, params, mesh = _setup(egomcq_data, "egomcq")
    result = egomcq.evaluate(model, params, mesh, config, out=tmp_path)
    mcq = ego4d.read_egomcq(pathlib.Path(egomcq_data) / "annotations" / ego4d.EGOMCQ_FILE)
    video, text = _unit_videos(model, params, egomcq_data), _unit_texts(model, params,
                                                                         list(mcq.query))
    scores = np.asarray([[text[q] @ video[c] for c in mcq.choices[q]]
                         for q in range(len(mcq.query))])
    expected = egomcq.accuracy(scores, mcq.answer, mcq.type)
    assert set(expected) == {"inter", "intra"}  # the fixtures have one question of each
    assert result.scalars == {f"egomcq_{k}": v for k, v in expected.items()}
    assert result.record["egomcq"] == {**expected, "questions": 2, "skipped": 0}
    predictions = json.loads((tmp_path / egomcq.PREDICTIONS).read_text())
    assert predictions == [{"question_id": str(mcq.question_id[q]),
                            "chosen": int(np.argmax(scores[q])), "answer": int(mcq.answer[q]),
                            "type": int(mcq.type[q])} for q in range(len(mcq.query))]


def test_egomcq_leaves_out_a_question_whose_clip_was_not_prepared():
    mcq = ego4d.read_egomcq(DATA / "ego4d" / ego4d.EGOMCQ_FILE)
    embedded = np.asarray([0, 1, 2, 3, 4, 6, 7])  # clip 5 (a choice of question 1) skipped
    rng = np.random.default_rng(0)
    video, text = rng.standard_normal((7, 3)), rng.standard_normal((2, 3))
    scores, kept = egomcq.choice_scores(video, text, embedded, mcq)
    assert list(kept) == [0]
    position = {int(c): i for i, c in enumerate(embedded)}
    np.testing.assert_allclose(scores, [[text[0] @ video[position[int(c)]]
                                         for c in mcq.choices[0]]])


def test_charades_ego_is_the_class_map_of_video_to_class_name_cosines(charades_data_dir,
                                                                      tmp_path):
    config, model, params, mesh = _setup(charades_data_dir, "charades_ego")
    result = charades_ego.evaluate(model, params, mesh, config, out=tmp_path)
    folder = pathlib.Path(charades_data_dir) / "annotations"
    table = charades_data.read_charades_ego(folder, "test")
    video = _unit_videos(model, params, charades_data_dir)
    scores = np.stack([video[i] for i in range(len(table.clips))]) @ _unit_texts(
        model, params, list(table.class_names)).T
    expected = charades_ego.class_map(scores, table.multi_hot())
    assert result.scalars["charades_ego_mAP"] == pytest.approx(expected, abs=1e-4)
    assert result.record["charades_ego"] == {"mAP": result.scalars["charades_ego_mAP"],
                                             "videos": 2, "classes": 2}
    np.testing.assert_allclose(np.load(tmp_path / charades_ego.SCORES), scores, atol=1e-5)


@pytest.mark.parametrize("evaluator, key", [("egomcq", "eval.egomcq_dir"),
                                            ("charades_ego", "eval.charades_ego_dir")])
def test_a_data_set_of_another_corpus_is_an_error_naming_the_key(ek100_data, evaluator, key):
    config = tiny_config(ek100_data, evals=(evaluator,))
    with pytest.raises(config_lib.ConfigError, match=(
            rf"config: dataset_dir: evaluator '{evaluator}' expected a prepared .* data set "
            rf".*or set {key}\), got '{ek100_data}': a data set of corpus ek100_mir")):
        evaluators.check_datasets(config)
    config.eval[key.split(".")[1]] = ek100_data
    with pytest.raises(config_lib.ConfigError, match=rf"config: {key}: evaluator"):
        evaluators.dataset(config, evaluator)


def test_the_evaluators_key_names_a_data_set_beside_the_training_one(ek100_data, egomcq_data):
    config = tiny_config(ek100_data, evals=("ek100_mir", "egomcq"))
    config.eval.egomcq_dir = str(pathlib.Path(egomcq_data).parents[2])  # prepare's --output
    assert evaluators.dataset(config, "egomcq") == egomcq_data
    assert evaluators.dataset(config, "ek100_mir") == ek100_data


def test_a_runs_saved_config_finds_the_evaluators_data_set_after_a_move(tmp_path):
    run = tmp_path / "run"
    config = tiny_config(str(run / "data"), evals=("egomcq",))
    config.eval.egomcq_dir = str(run / "egomcq")
    run_config.save(config, run / config_lib.CONFIG_FILE, run)
    run.rename(tmp_path / "moved")
    assert run_config.load(tmp_path / "moved").eval.egomcq_dir == str(tmp_path / "moved" /
                                                                     "egomcq")


# ---------------------------------------------------------------------------------------------
# Zero-shot and selection.


def test_the_zero_shot_config_follows_the_data_sets_corpus(tmp_path, egomcq_data,
                                                           charades_data_dir, ek100_data):
    converted = str(converted_checkpoint(tmp_path / "converted"))
    assert zero_shot.config_arg(converted, egomcq_data) == f"{converted},egomcq"
    assert zero_shot.config_arg(converted, charades_data_dir) == f"{converted},charades_ego"
    assert zero_shot.config_arg(converted, ek100_data) == converted
    for name, frames in (("egomcq", 4), ("charades_ego", 16), ("ek100_mir", 16)):
        c = zero_shot.get_config(f"{converted},{name}")
        assert tuple(c.evals) == (name,) and c.data.num_frames == frames
        assert c.checkpoint.best_metric in config_lib.EVALUATORS[name]
        config_lib.validate(c, jax.device_count())


@pytest.mark.parametrize("benchmark, record_key", [("egomcq", "egomcq"),
                                                   ("charades_ego", "charades_ego")])
def test_zero_shot_evaluation_is_one_command_per_benchmark(tmp_path, benchmark, record_key,
                                                           request):
    dataset = request.getfixturevalue({"egomcq": "egomcq_data",
                                       "charades_ego": "charades_data_dir"}[benchmark])
    converted = converted_checkpoint(tmp_path / "converted")
    # The tiny data sets hold 4 frames a clip; the benchmarks' own are prepared at their frames.
    run = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--mode", "eval", "--checkpoint",
         str(converted), "--workdir", str(tmp_path / "zs"), f"--config.dataset_dir={dataset}",
         "--config.data.num_frames=4", "--config.model.vision.num_frames=4",
         "--config.eval.num_workers=0", "--config.eval.batch_size=8"],
        cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "zs" / evaluate.EVAL_DIR / "metrics.json").read_text())
    assert (record["config"], record["step"], record["checkpoint"]) == (
        f"{benchmark}_zero_shot", -1, str(converted))
    assert set(record) >= {record_key} and "mAP" not in record  # only its own evaluator ran


def test_training_selects_its_best_checkpoint_by_egomcq_intra(ek100_data, egomcq_data,
                                                              tmp_path):
    config = tiny_config(ek100_data, evals=("egomcq",))
    config.eval.update(every_steps=2, egomcq_dir=egomcq_data)
    config.checkpoint.best_metric = "egomcq_intra"
    config_lib.validate(config, jax.device_count())
    result = train.train_and_evaluate(config, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / train.EVAL_METRICS).read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert all(set(line["egomcq"]) >= {"inter", "intra"} for line in lines)
    assert result["metrics"]["egomcq"] == lines[-1]["egomcq"]


def test_main_checks_the_evaluators_data_sets_before_a_run_starts(ek100_data, tmp_path):
    config = tiny_config(ek100_data, evals=("egomcq",))
    config.checkpoint.best_metric = "egomcq_intra"
    with pytest.raises(config_lib.ConfigError, match="evaluator 'egomcq' expected"):
        main.run(config, tmp_path / "run", "train")
    assert not (tmp_path / "run" / "checkpoints").exists()
