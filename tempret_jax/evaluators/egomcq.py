"""EgoMCQ (EgoVLP's Ego4D multiple-choice benchmark): inter- and intra-video accuracy.

    query narration --text tower--> t (q, E)      five choice clips --video tower--> v (q, 5, E)
    score of choice k = t . v_k (cosines)  ->  chosen = argmax_k  ->  accuracy per question type

A question's type is 1 (inter-video: the five clips come from five videos) or 2 (intra-video:
all five from the query's own video, a much harder test), as ``egomcq.json`` and the dataset's
comment say (showlab/EgoVLP 928406c, data_loader/EgoClip_EgoMCQ_dataset.py `_get_val_item`).
EgoVLP's metric (model/metric.py `egomcq_accuracy_metrics`) names the sorted types
["Intra-video", "Inter-video"], i.e. type 1 "Intra": its logs swap the two names (EgoVLP issue
#19; its paper's 90.6 inter / 57.2 intra are the right way round). We name them by the json.

`evaluate` scores the prepared Ego4D data set's 'test' split (EgoMCQ's distinct choice clips,
each embedded once; `evaluators.dataset`: ``eval.egomcq_dir`` or ``dataset_dir``) as EgoVLP's
trainer/trainer_egoclip.py `_valid_epoch` does: sim_matrix of the query's text embedding with
its five clips' video embeddings, frames sampled uniformly (our stored frames) and centre
cropped. A question whose choice clip was skipped at preparation is left out and counted. The
eval mode also writes ``egomcq_predictions.json``: each question's id, chosen, answer, type.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from tempret_jax import atomic, embedding, evaluators
from tempret_jax.data import corpora, ego4d, prepare, verify

CORPUS = corpora.EGO4D  # `evaluators.dataset`
SPLIT = "test"  # the Ego4D data set's EgoMCQ split
PREDICTIONS = "egomcq_predictions.json"

TYPES = {1: "inter", 2: "intra"}  # egomcq.json's ``types`` -> our name


def accuracy(scores, answer, types) -> dict[str, float]:
    """Accuracy in percent of each question type present.

    Args:
      scores: (q, C) float, the score of each question's C choices (EgoVLP: C = 5 cosines).
      answer: (q,) int, the correct choice of each question.
      types: (q,) int, 1 (inter-video) or 2 (intra-video).
    Returns:
      {'inter': %, 'intra': %} for the types present. The choice is the first highest score
      (torch.argmax's rule, which EgoVLP uses, on ties as np.argmax).
    """
    scores, answer, types = np.asarray(scores), np.asarray(answer), np.asarray(types)
    if scores.ndim != 2 or answer.shape != scores.shape[:1] or types.shape != answer.shape:
        raise ValueError(f"scores (q, C), answer (q,) and types (q,) expected, got "
                         f"{scores.shape}, {answer.shape} and {types.shape}")
    unknown = sorted(set(types.tolist()) - set(TYPES))
    if unknown:
        raise ValueError(f"question types {unknown}: expected 1 (inter-video) or 2 (intra-video)")
    correct = np.argmax(scores, axis=1) == answer
    return {name: 100.0 * float(correct[types == t].mean())
            for t, name in TYPES.items() if (types == t).any()}


def read_questions(dataset_dir) -> ego4d.EgoMCQTable:
    """The questions of a prepared Ego4D data set (its egomcq.json copy, checked against the
    digest taken at preparation: verify.DatasetError naming it otherwise)."""
    folder = pathlib.Path(dataset_dir) / prepare.ANNOTATIONS
    verify.check_copies(folder, CORPUS.split_files[SPLIT])
    return ego4d.read_egomcq(folder / ego4d.EGOMCQ_FILE)


def choice_scores(video: np.ndarray, text: np.ndarray, clip_ids: np.ndarray,
                  mcq: ego4d.EgoMCQTable) -> tuple[np.ndarray, np.ndarray]:
    """(scores (q', 5) cosines of each answerable question's query with its choices, kept (q',)
    the question rows whose five clips were all embedded).

    Args: video (n, E) unit embeddings of the clips ``clip_ids`` (n,) (rows of ``mcq.clips``);
      text (q, E) unit embeddings of ``mcq.query``.
    """
    position = np.full(len(mcq.clips), -1)
    position[clip_ids] = np.arange(len(clip_ids))
    choice = position[mcq.choices]  # (q, 5)
    kept = np.flatnonzero((choice >= 0).all(axis=1))
    scores = np.einsum("qe,qce->qc", text[kept], video[choice[kept]])
    return scores, kept


def evaluate(model, params, mesh, config, out: pathlib.Path | None = None) -> evaluators.Result:
    """Inter- and intra-video accuracy (module docstring). Returns scalars 'egomcq_inter',
    'egomcq_intra' (percent); record {'egomcq': {'inter', 'intra', 'questions', 'skipped'}}."""
    dataset_dir = evaluators.dataset(config, "egomcq")
    mcq = read_questions(dataset_dir)
    clip_ids, video, text = embedding.embed_clips_and_texts(
        model, params, mesh, dataset_dir, SPLIT, [str(q) for q in mcq.query],
        **embedding.split_settings(config))
    scores, kept = choice_scores(video, text, clip_ids, mcq)
    if not len(kept):
        raise verify.DatasetError(f"{dataset_dir}: no EgoMCQ question has its five choice clips "
                                  f"prepared")
    result = accuracy(scores, mcq.answer[kept], mcq.type[kept])
    record = {"egomcq": {**result, "questions": int(len(kept)),
                         "skipped": int(len(mcq.answer) - len(kept))}}
    counts = {name: int((mcq.type[kept] == t).sum()) for t, name in TYPES.items()}
    table = (f"EgoMCQ ({len(kept)} questions of {len(mcq.answer)})\n" + "\n".join(
        f"  {name}-video accuracy {result[name]:6.2f} %  ({counts[name]} questions)"
        for name in result))
    if out is not None and jax.process_index() == 0:
        atomic.write_json(out / PREDICTIONS, [
            {"question_id": str(mcq.question_id[q]), "chosen": int(np.argmax(s)),
             "answer": int(mcq.answer[q]), "type": int(mcq.type[q])}
            for q, s in zip(kept, scores)])
    return evaluators.Result(record=record, scalars={f"egomcq_{k}": v for k, v in result.items()},
                             table=table)
