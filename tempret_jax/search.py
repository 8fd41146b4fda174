"""Free-text search over a run's prepared test split: the clips best matching a query.

    searcher = Searcher.open(workdir)            # or Searcher.open(workdir, config)
    searcher.search("cut the onion", top=10)     # [Hit(rank, score, narration_id, ...), ...]

(`main --mode search` and the Colab demo call exactly this.) The clips are embedded once into an
index saved under ``<workdir>/search/`` (index.npz: the clips' scoring embeddings and the
unnormalised features the query's refinement attends over; index.json: config name,
checkpoint step, split) and reused while the run's checkpoint step is the same; a newer
checkpoint rebuilds it. Clips are embedded as the evaluation does (`embedding.embed_split`: the
config's test-time views, and refinement over the split's sentences, each sentence's text
being its clip's narration, when the model has it). A query is scored as an evaluation
sentence without dual-softmax (which needs every query at once). No relevance is involved.

The config is the one given, else the one the run saved: by training (<workdir>/config.json),
an evaluation (<workdir>/eval/config.json) or an earlier index build
(<workdir>/search/config.json).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np

from tempret_jax import atomic, embedding, run_config, state
from tempret_jax import config as config_lib
from tempret_jax import sharding as sharding_lib
from tempret_jax.data import prepare
from tempret_jax.data.text_tokens import TextTokenizer

INDEX_DIR = "search"
INDEX_ARRAYS = "index.npz"
INDEX_META = "index.json"


class SearchError(ValueError):
    """The run cannot be searched: no saved config, or an empty query."""


@dataclasses.dataclass(frozen=True)
class Hit:
    """One result: rank (1 = best), score (clip embedding . query embedding: the cosine, or
    with test-time views the views' mean), and the clip's annotation."""

    rank: int
    score: float
    narration_id: str
    narration: str
    clip_row: int  # row of the split's clip CSV


@dataclasses.dataclass
class Index:
    """video (n, E) the scoring embeddings (`embedding.Embedded.video`); video_features
    (n, D_v) unnormalised (the gallery a query's refinement attends over); clip_rows,
    narration_ids, narrations (n,); meta: config, step, split."""

    video: np.ndarray
    video_features: np.ndarray
    clip_rows: np.ndarray
    narration_ids: np.ndarray
    narrations: np.ndarray
    meta: dict

    def save(self, folder: pathlib.Path) -> None:
        with atomic.writer(folder / INDEX_ARRAYS, "wb") as f:
            np.savez(f, video=self.video, video_features=self.video_features,
                     clip_rows=self.clip_rows, narration_ids=self.narration_ids.astype(str),
                     narrations=self.narrations.astype(str))
        atomic.write_json(folder / INDEX_META, self.meta)  # last: marks the index complete

    @classmethod
    def load(cls, folder: pathlib.Path) -> Index | None:
        """The saved index, or None if there is none (or an incomplete one)."""
        if not (folder / INDEX_META).is_file() or not (folder / INDEX_ARRAYS).is_file():
            return None
        with np.load(folder / INDEX_ARRAYS, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        return cls(meta=json.loads((folder / INDEX_META).read_text()), **arrays)


def load_config(workdir, config: ml_collections.ConfigDict | None = None
                ) -> ml_collections.ConfigDict:
    """``config``, else the one saved in the workdir by training, an evaluation or an index build
    (`run_config.load`: its paths found again if the run was moved)."""
    if config is not None:
        return config
    try:
        return run_config.load(workdir)
    except config_lib.ConfigError as e:
        raise SearchError(str(e)) from None


class Searcher:
    """A run's model and its clip index; `search` embeds a query and ranks the clips."""

    def __init__(self, config, model, mesh, params, index: Index, rebuilt: bool):
        self.config, self.model, self.mesh, self.params = config, model, mesh, params
        self.index, self.rebuilt = index, rebuilt

    @classmethod
    def open(cls, workdir, config: ml_collections.ConfigDict | None = None, *,
             step: int | None = None, split: str | None = None,
             checkpoint: str = "") -> Searcher:
        """Loads the run's checkpoint (latest or ``step``), or a converted one (``checkpoint``:
        zero-shot search), and its index of ``split`` (default the config's eval split) kept in
        ``workdir``, building the index if it is missing or stale."""
        workdir = pathlib.Path(workdir)
        config = load_config(workdir, config)
        setup = state.TrainSetup(config)
        model, mesh = setup.model, setup.mesh
        params, number = setup.load_eval_params(checkpoint or workdir, step,
                                                expect_config=None if checkpoint else config.name)
        split = split or config.eval.split
        folder = workdir / INDEX_DIR
        meta = {"config": config.name, "step": number, "split": split}
        if checkpoint:
            meta["checkpoint"] = str(pathlib.Path(checkpoint).absolute())
        index = Index.load(folder)
        rebuilt = index is None or index.meta != meta
        if rebuilt:
            index = build_index(model, params, mesh, config, split, meta)
            index.save(folder)
            run_config.save(config, folder / config_lib.CONFIG_FILE, workdir)
        return cls(config, model, mesh, params, index, rebuilt)

    def embed_query(self, query: str) -> np.ndarray:
        """A query's unit embedding (E,); refinement attends over the indexed clips."""
        batch = sharding_lib.batch_devices(self.mesh)
        texts = embedding.text_features(self.model, self.params,
                                        embedding.sentence_batches(
                                            [query], batch, 0, 1,
                                            TextTokenizer.of(self.model.config.text)),
                                        self.mesh)
        return embedding.embed(self.model, self.params, texts["features"],
                               self.index.video_features, "text")[0]

    def search(self, query: str, top: int = 10) -> list[Hit]:
        """The ``top`` clips for ``query``, best first (ties: the earlier clip first)."""
        if not query.strip():
            raise SearchError("search: the query is empty")
        scores = self.index.video @ self.embed_query(query)
        order = np.argsort(-scores, kind="stable")[:top]
        return [Hit(rank=r + 1, score=float(scores[i]),
                    narration_id=str(self.index.narration_ids[i]),
                    narration=str(self.index.narrations[i]),
                    clip_row=int(self.index.clip_rows[i])) for r, i in enumerate(order)]


def build_index(model, params, mesh, config, split: str, meta: dict) -> Index:
    """Embeds the prepared ``split``'s clips as the evaluation does (see the module docstring)."""
    embedded = embedding.embed_split(model, params, mesh, config.dataset_dir, split=split,
                                     **embedding.split_settings(config))
    clips, _ = prepare.load_annotations(config.dataset_dir, split)
    return Index(video=embedded.video, video_features=embedded.video_features,
                 clip_rows=embedded.clip_rows,
                 narration_ids=clips.narration_id[embedded.clip_rows].astype(str),
                 narrations=clips.narration[embedded.clip_rows].astype(str), meta=meta)
