"""Free-text search over a run's prepared test split: the clips best matching a query.

    searcher = Searcher.open(workdir)            # or Searcher.open(workdir, config)
    searcher.search("cut the onion", top=10)     # [Hit(rank, score, narration_id, ...), ...]

(tools/search.py and the Colab demo call exactly this.) The clips are embedded once into an
index saved under ``<workdir>/search/`` (index.npz: unit embeddings and the unnormalised
features the query's refinement attends over; index.json: config name, checkpoint step, split)
and reused while the run's checkpoint step is the same; a newer checkpoint rebuilds it. Clips
are embedded as the evaluation does (`evaluate.embed_split`: the config's test-time views, and
refinement over the split's sentences when the model has it). No relevance is involved.

The config is the one given, else the one saved by `evaluate.run` (<workdir>/eval/config.json)
or by an earlier index build (<workdir>/search/config.json).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np

from tempret_jax import evaluate
from tempret_jax import sharding as sharding_lib
from tempret_jax.data import prepare

INDEX_DIR = "search"
INDEX_ARRAYS = "index.npz"
INDEX_META = "index.json"


@dataclasses.dataclass(frozen=True)
class Hit:
    """One result: rank (1 = best), cosine score, and the clip's annotation."""

    rank: int
    score: float
    narration_id: str
    narration: str
    clip_row: int  # row of the split's clip CSV


@dataclasses.dataclass
class Index:
    """video (n, E) unit embeddings; video_features (n, E) unnormalised (the gallery a query's
    refinement attends over); clip_rows, narration_ids, narrations (n,); meta: config, step,
    split."""

    video: np.ndarray
    video_features: np.ndarray
    clip_rows: np.ndarray
    narration_ids: np.ndarray
    narrations: np.ndarray
    meta: dict

    def save(self, folder: pathlib.Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{INDEX_ARRAYS}.tmp.npz"
        np.savez(tmp, video=self.video, video_features=self.video_features,
                 clip_rows=self.clip_rows, narration_ids=self.narration_ids.astype(str),
                 narrations=self.narrations.astype(str))
        tmp.replace(folder / INDEX_ARRAYS)
        (folder / INDEX_META).write_text(json.dumps(self.meta, indent=2))  # last: marks complete

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
    """``config``, else the one saved in the workdir by training, an evaluation or an index build."""
    if config is not None:
        return config
    workdir = pathlib.Path(workdir)
    for path in (workdir / evaluate.CONFIG_FILE,
                 workdir / evaluate.EVAL_DIR / evaluate.CONFIG_FILE,
                 workdir / INDEX_DIR / evaluate.CONFIG_FILE):
        if path.is_file():
            return ml_collections.ConfigDict(json.loads(path.read_text()))
    raise evaluate.EvaluationError(
        f"{workdir} has no saved config (eval/config.json or search/config.json): pass the "
        f"run's config (--config configs/X.py) once")


class Searcher:
    """A run's model and its clip index; `search` embeds a query and ranks the clips."""

    def __init__(self, config, model, mesh, params, index: Index, rebuilt: bool):
        self.config, self.model, self.mesh, self.params = config, model, mesh, params
        self.index, self.rebuilt = index, rebuilt

    @classmethod
    def open(cls, workdir, config: ml_collections.ConfigDict | None = None, *,
             step: int | None = None, split: str | None = None) -> Searcher:
        """Loads the run's checkpoint (latest or ``step``) and its index of ``split`` (default
        the config's eval split), building the index if it is missing or stale."""
        workdir = pathlib.Path(workdir)
        config = load_config(workdir, config)
        model, mesh, params, number = evaluate.load_model(config, workdir, step=step)
        split = split or config.eval.split
        folder = workdir / INDEX_DIR
        meta = {"config": config.name, "step": number, "split": split}
        index = Index.load(folder)
        rebuilt = index is None or index.meta != meta
        if rebuilt:
            index = build_index(model, params, mesh, config, split, meta)
            index.save(folder)
            (folder / evaluate.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
        return cls(config, model, mesh, params, index, rebuilt)

    def embed_query(self, query: str) -> np.ndarray:
        """A query's unit embedding (E,); refinement attends over the indexed clips."""
        batch = sharding_lib.batch_devices(self.mesh)
        texts = evaluate.text_features(self.model, self.params,
                                       evaluate.sentence_batches([query], batch, 0, 1), self.mesh)
        return evaluate.embed(self.model, self.params, texts["features"],
                              self.index.video_features, "text")[0]

    def search(self, query: str, top: int = 10) -> list[Hit]:
        """The ``top`` clips for ``query``, best first (ties: the earlier clip first)."""
        if not query.strip():
            raise ValueError("search: the query is empty")
        scores = self.index.video @ self.embed_query(query)
        order = np.argsort(-scores, kind="stable")[:top]
        return [Hit(rank=r + 1, score=float(scores[i]),
                    narration_id=str(self.index.narration_ids[i]),
                    narration=str(self.index.narrations[i]),
                    clip_row=int(self.index.clip_rows[i])) for r, i in enumerate(order)]


def build_index(model, params, mesh, config, split: str, meta: dict) -> Index:
    """Embeds the prepared ``split``'s clips as the evaluation does (see the module docstring)."""
    embedded = evaluate.embed_split(model, params, mesh, config.dataset_dir, split=split,
                                    **evaluate.embed_kwargs(config))
    clips, _ = prepare.load_annotations(config.dataset_dir, split)
    return Index(video=embedded.video, video_features=embedded.video_features,
                 clip_rows=embedded.clip_rows,
                 narration_ids=clips.narration_id[embedded.clip_rows].astype(str),
                 narrations=clips.narration[embedded.clip_rows].astype(str), meta=meta)


def search(workdir, query: str, top: int = 10,
           config: ml_collections.ConfigDict | None = None) -> list[Hit]:
    """One-shot `Searcher.open(workdir, config).search(query, top)`."""
    return Searcher.open(workdir, config).search(query, top)
