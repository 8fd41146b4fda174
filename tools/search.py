"""Free-text search over a run's test clips: prints the best clips with their narration.

    python tools/search.py --workdir DIR "cut the onion" [--top 10] [--config configs/X.py]

The first search of a run embeds its prepared test split into <workdir>/search/ (reused until
the checkpoint changes). --config is needed only if the workdir has no saved config yet (an
evaluation, `python -m tempret_jax.evaluate`, or an earlier search saves it).
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from tempret_jax import checkpoint, evaluate, search

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config (optional).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_TOP = flags.DEFINE_integer("top", 10, "How many clips to print.")
flags.mark_flags_as_required(["workdir"])


def main(argv) -> None:
    if len(argv) != 2:
        raise app.UsageError('expected one query, e.g. tools/search.py --workdir DIR "cut the onion"')
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        searcher = search.Searcher.open(pathlib.Path(_WORKDIR.value), _CONFIG.value)
        hits = searcher.search(argv[1], _TOP.value)
    except (evaluate.EvaluationError, checkpoint.CheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    meta = searcher.index.meta
    print(f"{meta['config']} step {meta['step']}, {meta['split']} split "
          f"({len(searcher.index.clip_rows)} clips, index {'built' if searcher.rebuilt else 'cached'})")
    print(f"{'rank':>4}  {'score':>7}  {'narration_id':<16} narration")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:7.4f}  {h.narration_id:<16} {h.narration}")


if __name__ == "__main__":
    app.run(main)
