"""Search over a run's test clips: the structure of the results, determinism, the cached index
and its rebuild when the checkpoint changes, the saved config, and clear errors.

The shared run is trained for 4 steps only, so its ranking is too weak to test relevance."""

import subprocess
import sys
import pathlib

import numpy as np
import pytest

from tempret_jax import embedding, search
from tempret_jax.data import prepare
from trained_run import trained_run

REPO = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config, workdir = trained_run(tmp_path_factory)
    index = workdir / search.INDEX_DIR
    if index.exists():  # another module's tests may have searched already
        for f in index.iterdir():
            f.unlink()
    return config, workdir


def test_search_returns_every_clip_ranked_with_its_narration(run):
    config, workdir = run
    searcher = search.Searcher.open(workdir, config)
    assert searcher.rebuilt and searcher.index.meta == {"config": config.name, "step": 4,
                                                         "split": "test"}
    clips, _ = prepare.load_annotations(config.dataset_dir, "test")
    query = str(clips.narration[0])
    hits = searcher.search(query, top=100)
    assert [h.rank for h in hits] == list(range(1, len(clips) + 1))
    assert sorted(h.clip_row for h in hits) == list(range(len(clips)))
    for h in hits:
        assert h.narration == clips.narration[h.clip_row]
        assert h.narration_id == clips.narration_id[h.clip_row]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert searcher.search(query, top=2) == hits[:2]  # deterministic


def test_query_scores_are_the_evaluation_similarity(run):
    config, workdir = run
    searcher = search.Searcher.open(workdir, config)
    embedded = embedding.embed_split(searcher.model, searcher.params, searcher.mesh,
                                     config.dataset_dir, **embedding.split_settings(config))
    _, sentences = prepare.load_annotations(config.dataset_dir, "test")
    sim = embedded.similarity()
    for j in range(len(sentences)):
        hits = searcher.search(str(sentences.narration[j]), top=len(sim))
        by_row = {h.clip_row: h.score for h in hits}
        np.testing.assert_allclose([by_row[r] for r in embedded.clip_rows], sim[:, j],
                                   rtol=1e-5, atol=1e-6)


def test_the_index_is_cached_and_rebuilt_when_the_checkpoint_changes(run):
    config, workdir = run
    search.Searcher.open(workdir, config)
    arrays = workdir / search.INDEX_DIR / search.INDEX_ARRAYS
    before = arrays.stat().st_mtime_ns
    again = search.Searcher.open(workdir, config)
    assert not again.rebuilt and arrays.stat().st_mtime_ns == before
    older = search.Searcher.open(workdir, config, step=2)  # another checkpoint: rebuilt
    assert older.rebuilt and older.index.meta["step"] == 2
    assert not np.allclose(older.index.video, again.index.video)
    latest = search.Searcher.open(workdir)  # the config saved with the index
    assert latest.rebuilt and latest.index.meta["step"] == 4
    np.testing.assert_allclose(latest.index.video, again.index.video, rtol=1e-6)


def test_an_empty_query_and_a_workdir_without_config_are_errors(run, tmp_path):
    config, workdir = run
    with pytest.raises(ValueError, match="query is empty"):
        search.Searcher.open(workdir, config).search("  ")
    with pytest.raises(search.SearchError, match="no saved config"):
        search.Searcher.open(tmp_path)


def test_the_search_mode_prints_the_top_clips(run):
    config, workdir = run
    search.Searcher.open(workdir, config)  # the index and the config are saved
    out = subprocess.run([sys.executable, "-m", "tempret_jax.main", "--mode", "search",
                          "--workdir", str(workdir), "--top", "2", "--query",
                          "lift the green bar"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "index cached" in lines[0] and lines[1].split()[:3] == ["rank", "score",
                                                                   "narration_id"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2"]
