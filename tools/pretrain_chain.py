"""Does pretraining help? The papers' chain at tiny size on synthetic data in the real formats:

    pretrain on EgoClip (EgoNCE) -> keep the best checkpoint by EgoMCQ intra accuracy
      -> fine-tune on EK-100 MIR from it  vs  the same fine-tune from scratch -> evaluate

    python tools/pretrain_chain.py --workdir runs/chain [--size test|demo] [--seed 0]

The data are SynthKitchens' world (`data.synthetic`): EgoClip and EgoMCQ written by
`data.synthetic_ego` (Ego4D's files, EgoVLP's chunked videos), EK-100 MIR by `data.synthetic`,
each prepared with tools/prepare.py's code; the EK-100 fine-tune sees few steps, as a
fine-tune on a small data set does. The model is configs/synthetic.py's per-frame ViT with the
temporal transformer (CLIP-shaped text tower, rows of 16 tokens: EgoClip's '#C C' narrations
are longer than SynthKitchens'). Each stage is `main.run`, so a stage that finished is found
finished when the command runs again. Prints a table and writes <workdir>/chain.json.
"""

import argparse
import importlib.util
import json
import pathlib
import sys

import jax

from tempret_jax import atomic, checkpoint, main
from tempret_jax.data import prepare, synthetic, synthetic_ego

CONFIG = pathlib.Path(__file__).parent.parent / "configs" / "synthetic.py"
# size -> (EgoClip videos, EK-100 train videos, pretraining steps, fine-tuning steps, batch).
SIZES = {"test": (16, 12, 100, 30, 16), "demo": (48, 32, 600, 120, 64)}
CONTEXT = 16  # tokens per text row: '#C C lifts the red square up and shakes the blue bar'


def _data(workdir: pathlib.Path, size: str, seed: int) -> tuple[str, str]:
    """(Ego4D data set, EK-100 data set) generated and prepared under ``workdir``."""
    ego_videos, ek_videos = SIZES[size][:2]
    ego_root, ek_root = workdir / "ego_source", workdir / "ek100_source"
    ego = synthetic_ego.EgoConfig(seed=seed, num_clip_videos=ego_videos, num_mcq_videos=8,
                                  num_mcq_questions=40, num_charades_train=0,
                                  num_charades_test=0)
    if not (ego_root / synthetic_ego.EGO4D_DIR / synthetic_ego.EGOMCQ_FILE).is_file():
        synthetic_ego.generate(ego_root, ego)
    ek = ego.world(num_train_videos=ek_videos, num_test_videos=6, num_participants=4,
                   max_nouns=1, seed=seed + 1)
    if not (ek_root / "annotations").is_dir():
        synthetic.generate(ek_root, ek)
    prepared = {}
    for corpus, annotations, videos in (
            ("ego4d", ego_root / synthetic_ego.EGO4D_DIR,
             ego_root / synthetic_ego.EGO4D_DIR / synthetic_ego.VIDEO_DIR),
            ("ek100_mir", ek_root / "annotations", ek_root)):
        summary = prepare.prepare(prepare.PrepareConfig(
            annotation_dir=str(annotations), video_root=str(videos),
            output_dir=str(workdir / "prepared" / corpus), corpus=corpus, num_frames=4,
            short_side=40, num_workers=1, progress=False))
        prepared[corpus] = summary["dataset_dir"]
    return prepared["ego4d"], prepared["ek100_mir"]


def _config(size: str, seed: int, dataset: str, steps: int):
    """configs/synthetic.py's demo model at ``size``'s batch for ``steps`` steps on ``dataset``."""
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tempret,info_nce,demo")
    del c.synthetic, c.prepare  # the data are prepared here
    c.seed, c.dataset_dir, c.total_steps = seed, dataset, steps
    c.global_batch_size = c.eval.batch_size = SIZES[size][4]
    c.model.text.update(context_length=CONTEXT, max_positions=CONTEXT)
    c.optim.warmup_steps = min(c.optim.warmup_steps, steps // 4)
    c.checkpoint.update(every_steps=steps, keep=1, keep_best=1)
    return c


def pretrain(workdir: pathlib.Path, size: str, seed: int, ego: str):
    """EgoNCE on EgoClip, EgoMCQ every quarter of the run, the best kept by intra accuracy."""
    steps = SIZES[size][2]
    c = _config(size, seed, ego, steps)
    c.name = "chain_pretrain"
    c.loss.update(name="egonce", hparams={})
    c.evals = ("egomcq",)
    c.eval.every_steps = c.checkpoint.every_steps = steps // 4
    c.checkpoint.update(best_metric="egomcq_intra", keep=1, keep_best=1)
    return c


def fine_tune(size: str, seed: int, ek100: str, start: str):
    """InfoNCE on EK-100 MIR (the demo's loss and positives), from ``start`` ('' = scratch)."""
    c = _config(size, seed, ek100, SIZES[size][3])
    c.name = "chain_fine_tune"
    if start:
        c.init_from.update(path=start, best_metric="egomcq_intra")
    return c


def _metrics(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "metrics.json").read_text())


def run(workdir, size: str = "test", seed: int = 0) -> dict:
    """The chain (module docstring); returns the numbers it prints."""
    workdir = pathlib.Path(workdir)
    ego, ek100 = _data(workdir, size, seed)
    runs = {"pretrain": pretrain(workdir, size, seed, ego),
            "from_pretrained": fine_tune(size, seed, ek100, str(workdir / "pretrain")),
            "from_scratch": fine_tune(size, seed, ek100, "")}
    for name, config in runs.items():
        if main.run(config, workdir / name, "train_and_eval") != 0:
            raise RuntimeError(f"{workdir / name}: the {name} run failed")
    # The step the fine-tune loaded (init_from.best_metric), and its EgoMCQ scores.
    best = checkpoint.best_step(workdir / "pretrain", "egomcq_intra")
    scores = json.loads((workdir / "pretrain" / checkpoint.CHECKPOINTS /
                         checkpoint.SCORES_FILE).read_text())
    result = {"size": size, "seed": seed, "pretrain_best_step": best,
              "egomcq": {k: scores[str(best)][k] for k in ("egomcq_inter", "egomcq_intra")},
              **{name: _metrics(workdir / name)["mAP"] for name in ("from_pretrained",
                                                                    "from_scratch")}}
    if jax.process_index() == 0:
        atomic.write_json(workdir / "chain.json", result)
    return result


def table(result: dict) -> str:
    """The chain's numbers as a Markdown table."""
    mcq = result["egomcq"]
    lines = [f"pretrained on EgoClip: best EgoMCQ at step {result['pretrain_best_step']}: "
             f"inter {mcq['egomcq_inter']:.1f} / intra {mcq['egomcq_intra']:.1f}", "",
             "| EK-100 fine-tune | mAP v2t | mAP t2v | mAP avg |", "|---|---|---|---|"]
    for name in ("from_pretrained", "from_scratch"):
        m = result[name]
        lines.append(f"| {name.replace('_', ' ')} | {m['v2t']:.2f} | {m['t2v']:.2f} | "
                     f"{m['avg']:.2f} |")
    return "\n".join(lines)


def main_(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(table(run(args.workdir, args.size, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main_())
