"""Ablation on SynthKitchens: temporal modelling and losses, on all verbs and on mirrored verbs.

    python tools/ablate_synthetic.py --workdir runs/ablation [--steps 300] [--runs mean,joint]

Each run trains configs/synthetic.py with one variant (same data, seed and budget) and scores
the test split: avg mAP / nDCG on all clips, and the *mirror accuracy*: for each test clip of a
time-mirrored verb (move left/right, lift/lower, open/close, put in/take out), whether its
mean similarity to the sentences of its own (verb, nouns) beats that to the sentences of the
mirrored verb with the same nouns. A model that ignores frame order (frame averaging) cannot
exceed chance (50%) there: the reversed clip of one verb is a clip of its partner. Two probes of
order use: the mirror accuracy of the same clips played backwards (an order-aware model moves
towards 100% minus its forward accuracy; frame averaging does not move), and the mean cosine
between a clip's embedding and its reversed clip's (1.0: order ignored).

--data picks the SynthKitchens variant: 'demo' (the demo's data: 20 nouns, small objects) or
'motion' (4 nouns, larger objects travelling further), where verbs, not nouns, carry most of
the contrastive signal. Results are appended to <workdir>/ablation.jsonl (a finished run is not
trained again) and printed.
"""

import argparse
import importlib.util
import json
import pathlib

import numpy as np

from tempret_jax import embedding, main, metrics, state
from tempret_jax.data import ek100, pipeline, prepare, synthetic

RUNS = {  # name -> configs/synthetic.py arg
    "mean": "mean,sms", "joint": "joint,sms", "rope": "rope,sms", "tempret": "tempret,sms",
    "tempret_mi_mm": "tempret,mi_mm", "tempret_adaptive": "tempret,adaptive_mi_mm",
    # Time-reversed hard negatives (loss.reversed_negatives) for the mirrored verb pairs.
    "mean_rev": "mean,sms,reversed", "joint_rev": "joint,sms,reversed",
    "rope_rev": "rope,sms,reversed", "tempret_rev": "tempret,sms,reversed",
}
CONFIG = pathlib.Path(__file__).parent.parent / "configs" / "synthetic.py"
DATA = {  # name -> overrides of config.synthetic (tempret_jax.data.synthetic.SynthConfig)
    "demo": {},
    "motion": {"num_nouns": 4, "object_size": (0.3, 0.4), "travel": 0.4},
}


def load_config(arg: str, data: str = "demo"):
    """configs/synthetic.py with variant ``arg`` on the SynthKitchens variant ``data`` (DATA)."""
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.results_setup(module.get_config(arg))  # RESULTS.md's setup
    config.synthetic.update(DATA[data])
    return config


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


def reversed_clip_embeddings(model, params, mesh, config, embedded: embedding.Embedded) -> np.ndarray:
    """Unit embeddings (n_clips, E) of the test clips with their frames in reverse order.

    A reversed clip of a mirrored verb shows its partner verb, so a model that uses frame order
    must change its mind on it; frame averaging gives exactly the same embedding.
    """
    batches = embedding.clip_batches(config.dataset_dir, "test", config.eval.batch_size,
                                     num_frames=config.data.num_frames,
                                     resolution=config.data.resolution, views=(pipeline.View(),))
    backwards = ({**b, "video": b["video"][:, :, ::-1]} for b in batches)  # (B, V, T, ...)
    features = embedding.video_features(model, params, backwards, mesh)
    if not np.array_equal(features["ids"], embedded.clip_rows):
        raise AssertionError("reversed clips came back in a different order")
    return embedding.embed(model, params, features["features"], embedded.text_features, "video")


def score(config, workdir: pathlib.Path) -> dict:
    """Metrics of a trained run on the test split; the mirror rows are explained in the docstring."""
    setup = state.TrainSetup(config)
    model, mesh = setup.model, setup.mesh
    params, step = setup.load_eval_params(workdir, expect_config=config.name)
    embedded = embedding.embed_split(model, params, mesh, config.dataset_dir,
                                     batch_size=config.eval.batch_size,
                                     num_frames=config.data.num_frames,
                                     resolution=config.data.resolution)
    sim = embedded.similarity()
    reversed_video = reversed_clip_embeddings(model, params, mesh, config, embedded)
    clips, sentences = prepare.load_annotations(config.dataset_dir, "test")
    labels = clips.labels().take(embedded.clip_rows)
    text_labels = sentences.labels(clips).take(embedded.sentence_rows)
    as_sets = lambda nouns: [frozenset(np.flatnonzero(n)) for n in nouns]  # noqa: E731
    mirror = lambda s: mirror_accuracy(s, labels.verb, as_sets(labels.nouns), text_labels.verb,  # noqa: E731
                                       as_sets(text_labels.nouns))
    accuracy, count = mirror(sim)
    reversed_accuracy, _ = mirror(reversed_video @ embedded.text.T)
    result = metrics.mir_metrics(sim, embedded.rel)
    return {"step": step, "mAP": result["mAP"]["avg"], "nDCG": result["nDCG"]["avg"],
            "mirror_accuracy": 100 * accuracy, "mirror_clips": count,
            "mirror_accuracy_reversed": 100 * reversed_accuracy,
            "order_cosine": float(np.mean(np.sum(embedded.video * reversed_video, axis=1)))}


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"some of {list(RUNS)}")
    parser.add_argument("--data", default="demo", choices=list(DATA))
    args = parser.parse_args(argv)
    log = args.workdir / "ablation.jsonl"
    done = {r["run"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    data = main.synthetic_dataset(load_config(RUNS["mean"], args.data), args.workdir)  # all runs
    for name in args.runs.split(","):
        if name not in RUNS:
            raise SystemExit(f"--runs: unknown run {name!r}; expected some of {list(RUNS)}")
        if name in done:
            continue
        config = load_config(RUNS[name], args.data)
        with config.unlocked():
            config.total_steps = args.steps
            config.eval.every_steps = -1
            config.dataset_dir = data
        run_dir = args.workdir / name
        main.run(config, run_dir, "train")
        record = {"run": name, "arg": RUNS[name], "data": args.data, "steps": args.steps,
                  **score(config, run_dir)}
        if record["step"] < args.steps:  # preempted (SIGTERM): the checkpoint resumes it
            print(f"{name}: stopped at step {record['step']} of {args.steps}; not recorded, "
                  f"rerun the same command to resume")
            return
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
        done[name] = record
    clips, sentences = prepare.load_annotations(data, "test")
    rel = ek100.relevance(clips.labels(), sentences.labels(clips))
    random = metrics.mir_metrics(np.random.default_rng(0).standard_normal(rel.shape), rel)
    print(f"{'run':<18}{'variant':<24}{'avg mAP':>9}{'avg nDCG':>10}{'mirror acc':>12}"
          f"{'reversed':>10}{'order cos':>11}")
    for name, r in done.items():
        print(f"{name:<18}{r['arg']:<24}{r['mAP']:>9.2f}{r['nDCG']:>10.2f}"
              f"{r['mirror_accuracy']:>11.1f}%{r['mirror_accuracy_reversed']:>9.1f}%"
              f"{r['order_cosine']:>11.4f}")
    print(f"{'random':<18}{'':<24}{random['mAP']['avg']:>9.2f}{random['nDCG']['avg']:>10.2f}"
          f"{50:>11.1f}%{50:>9.1f}%{'':>11}")


if __name__ == "__main__":
    main_()
