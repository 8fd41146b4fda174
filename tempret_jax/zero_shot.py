"""The zero-shot config of a converted checkpoint: its own model, a benchmark's eval protocol.

This file is a config file for ``--config``: ``--config tempret_jax/zero_shot.py:CONVERTED``
scores EK-100 MIR (`recipes.eval_recipe`, 16 frames at 224 px, the full evaluation protocol),
``...:CONVERTED,egomcq`` EgoMCQ and ``...:CONVERTED,charades_ego`` Charades-Ego (`BENCHMARKS`:
each at the frames its authors evaluate zero-shot with), with the model config saved in
CONVERTED (tools/convert_checkpoint.py output) and CONVERTED as the checkpoint to score; a
4-frame pretrained temporal embedding is inflated to 16 frames on load, as AVION evaluates its
pretrained models. Main uses it when ``--mode eval --checkpoint CONVERTED`` comes without
``--config``, the benchmark chosen by the corpus of ``--config.dataset_dir`` (`config_arg`), so
a zero-shot evaluation is one command on any of the three prepared data sets:

    python -m tempret_jax.main --mode eval --checkpoint CONVERTED --workdir runs/zero_shot \
        --config.dataset_dir=DATA

It writes <workdir>/eval/metrics.json as the eval mode of a fine-tuned run does. Compute runs
in float32 (a CPU default); on accelerators add --config.model.dtype=bfloat16.
"""

from __future__ import annotations

import dataclasses

from tempret_jax import convert, recipes
from tempret_jax.data import corpora, prepare

EGOVLP = "EgoVLP (Lin et al., NeurIPS 2022), showlab/EgoVLP 928406c"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A zero-shot protocol: the corpus it scores, its frames, and what it reproduces."""

    corpus: str  # `corpora` name of the data set it scores
    name: str  # of the config (metrics.json's "config")
    best_metric: str  # the scalar of its evaluator that ranks checkpoints
    frames: recipes.Value | None = None  # None: the EK-100 eval recipe's 16
    reproduces: str = ""


BENCHMARKS = {  # evaluator (config.EVALUATORS) -> its zero-shot protocol
    "ek100_mir": Benchmark(corpora.EK100_MIR.name, "ek100_zero_shot", "mAP_avg"),
    "egomcq": Benchmark(
        corpora.EGO4D.name, "egomcq_zero_shot", "egomcq_intra",
        recipes.Value(4, "showlab/EgoVLP 928406c configs/eval/egomcq.json "
                         "video_params.num_frames (EVA02-AT pretrains and selects at 4 too)"),
        "EgoVLP README: EgoMCQ of its pretrained checkpoint (EgoVLP_PT_BEST, 90.7 inter / "
        "57.2 intra)"),
    "charades_ego": Benchmark(
        corpora.CHARADES_EGO.name, "charades_ego_zero_shot", "charades_ego_mAP",
        recipes.Value(16, "showlab/EgoVLP 928406c README.md, Charades-Ego table, Zero-shot row: "
                          "# Frames 16 (configs/eval/charades.json num_frames 16)"),
        "EgoVLP README: Charades-Ego zero-shot (EgoVLP_PT_EPO1, 25.0 mAP)"),
}


def config_arg(converted: str, dataset_dir: str | None) -> str:
    """The argument of this config file for ``converted`` scored on ``dataset_dir``:
    'CONVERTED' (EK-100) or 'CONVERTED,<benchmark>' by the data set's corpus. A folder that is
    no prepared data set (or None) gives EK-100's, whose run then names what is wrong."""
    if not dataset_dir:
        return converted
    corpus = corpora.of_dataset(prepare.find_dataset(dataset_dir)).name
    name = next(n for n, b in BENCHMARKS.items() if b.corpus == corpus)
    return converted if name == "ek100_mir" else f"{converted},{name}"


def get_config(arg: str):
    """The config (module docstring); ``arg`` is 'CONVERTED[,benchmark]', CONVERTED the
    converted checkpoint's folder and benchmark one of `BENCHMARKS` (default ek100_mir)."""
    converted, _, name = arg.rpartition(",")
    if name not in BENCHMARKS:  # a plain path (which may hold a comma)
        converted, name = arg, "ek100_mir"
    if not converted:
        raise ValueError(f"zero_shot.py needs the converted checkpoint: --config "
                         f"tempret_jax/zero_shot.py:CONVERTED[,benchmark] with benchmark one of "
                         f"{', '.join(BENCHMARKS)}")
    c = _protocol(BENCHMARKS[name], name)
    model = convert.read_model_config(converted)
    frames = c.model.vision.num_frames
    model.update(dtype="float32", scan_layers=True)  # scanned: one compilation per tower
    model.vision.num_frames = frames
    c.model = model
    c.data.resolution = model.vision.image_size
    c.init_from.path = str(converted)
    return c


def _protocol(benchmark: Benchmark, evaluator: str):
    """The eval recipe (`recipes.eval_recipe`: centre crop, 224 px, no TTA) at the benchmark's
    frames, running its evaluator alone."""
    if benchmark.frames is None:
        return recipes.eval_recipe("vit_b16", benchmark.name)
    c = recipes.build(recipes.AVION_B.derive(
        benchmark.name, reproduces=benchmark.reproduces, expect="the checkpoint's",
        paper=EGOVLP, preset=recipes.Value("vit_b16", "the checkpoint's"),
        frames=benchmark.frames))
    c.evals = (evaluator,)
    c.checkpoint.best_metric = benchmark.best_metric
    return c
