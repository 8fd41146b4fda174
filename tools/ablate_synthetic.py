"""Ablation on SynthKitchens: temporal modelling and losses, on all verbs and on mirrored verbs.

    python tools/ablate_synthetic.py --workdir runs/ablation [--steps 300] [--runs mean,joint]

Each run trains configs/synthetic.py with one variant (same data, seed and budget) and scores
the test split: avg mAP / nDCG on all clips, and the *mirror accuracy*: for each test clip of a
time-mirrored verb (move left/right, lift/lower, open/close, put in/take out), whether its
mean similarity to the sentences of its own (verb, nouns) beats that to the sentences of the
mirrored verb with the same nouns. A model that ignores frame order (frame averaging) cannot
exceed chance (50%) there: the reversed clip of one verb is a clip of its partner. Results are
appended to <workdir>/ablation.jsonl (a finished run is not trained again) and printed.
"""

import argparse
import importlib.util
import json
import pathlib

import numpy as np

from tempret_jax import evaluate, main, metrics
from tempret_jax.data import ek100, prepare, synthetic

RUNS = {  # name -> configs/synthetic.py arg
    "mean": "mean,sms", "joint": "joint,sms", "rope": "rope,sms", "tempret": "tempret,sms",
    "tempret_mi_mm": "tempret,mi_mm", "tempret_adaptive": "tempret,adaptive_mi_mm",
}
CONFIG = pathlib.Path(__file__).parent.parent / "configs" / "synthetic.py"


def load_config(arg: str):
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def mirror_accuracy(sim: np.ndarray, clip_verb: np.ndarray, clip_nouns: list, text_verb: np.ndarray,
                    text_nouns: list) -> tuple[float, int]:
    """Fraction of mirrored-verb clips that prefer their own verb over its mirror (same nouns).

    sim (n_clips, n_texts); verbs are class ids; nouns are frozensets. Returns (accuracy, count).
    """
    partner = {}
    for a, b in synthetic.MIRRORED_VERBS:
        ia, ib = (next(i for i, v in enumerate(synthetic.VERBS) if v.key == k) for k in (a, b))
        partner[ia], partner[ib] = ib, ia
    correct = []
    for i, (verb, nouns) in enumerate(zip(clip_verb, clip_nouns)):
        if verb not in partner:
            continue
        same = [j for j, n in enumerate(text_nouns) if n == nouns]
        own = [j for j in same if text_verb[j] == verb]
        mirror = [j for j in same if text_verb[j] == partner[verb]]
        if own and mirror:
            correct.append(sim[i, own].mean() > sim[i, mirror].mean())
    return (float(np.mean(correct)) if correct else float("nan")), len(correct)


def score(config, workdir: pathlib.Path) -> dict:
    model, mesh, params, step = evaluate.load_model(config, workdir)
    embedded = evaluate.embed_split(model, params, mesh, config.dataset_dir, batch_size=config.eval.batch_size,
                                    num_frames=config.data.num_frames, resolution=config.data.resolution)
    sim = embedded.similarity()
    clips, sentences = prepare.load_annotations(config.dataset_dir, "test")
    labels = clips.labels().take(embedded.clip_rows)
    text_labels = sentences.labels(clips).take(embedded.sentence_rows)
    as_sets = lambda nouns: [frozenset(np.flatnonzero(n)) for n in nouns]  # noqa: E731
    accuracy, count = mirror_accuracy(sim, labels.verb, as_sets(labels.nouns), text_labels.verb,
                                      as_sets(text_labels.nouns))
    result = metrics.mir_metrics(sim, embedded.rel)
    return {"step": step, "mAP": result["mAP"]["avg"], "nDCG": result["nDCG"]["avg"],
            "mirror_accuracy": 100 * accuracy, "mirror_clips": count}


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"some of {list(RUNS)}")
    args = parser.parse_args(argv)
    log = args.workdir / "ablation.jsonl"
    done = {r["run"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    data = main.synthetic_dataset(load_config(RUNS["mean"]), args.workdir)  # shared by all runs
    for name in args.runs.split(","):
        if name not in RUNS:
            raise SystemExit(f"--runs: unknown run {name!r}; expected some of {list(RUNS)}")
        if name in done:
            continue
        config = load_config(RUNS[name])
        with config.unlocked():
            config.total_steps = args.steps
            config.eval.every_steps = -1
            config.dataset_dir = data
        run_dir = args.workdir / name
        main.run(config, run_dir, "train")
        record = {"run": name, "arg": RUNS[name], "steps": args.steps, **score(config, run_dir)}
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
        done[name] = record
    clips, sentences = prepare.load_annotations(data, "test")
    rel = ek100.relevance(clips.labels(), sentences.labels(clips))
    random = metrics.mir_metrics(np.random.default_rng(0).standard_normal(rel.shape), rel)
    print(f"{'run':<18}{'variant':<24}{'avg mAP':>9}{'avg nDCG':>10}{'mirror acc':>12}")
    for name, r in done.items():
        print(f"{name:<18}{r['arg']:<24}{r['mAP']:>9.2f}{r['nDCG']:>10.2f}"
              f"{r['mirror_accuracy']:>11.1f}%")
    print(f"{'random':<18}{'':<24}{random['mAP']['avg']:>9.2f}{random['nDCG']['avg']:>10.2f}{50:>11.1f}%")


if __name__ == "__main__":
    main_()
