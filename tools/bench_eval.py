"""Evaluation speed on SynthKitchens: embedding, scoring, reranking, metrics; rerank cost per K.

    python tools/bench_eval.py [--test_videos 8] [--repeats 3]

Generates and prepares a SynthKitchens test split (the demo's size: 8 videos x 16 clips), builds
the demo model (configs/synthetic.py, the 'demo' size) with a cross-encoder on frame tokens,
untrained (timings do not depend on the weights), and times each stage of the EK-100 MIR evaluation on it:
embedding (towers + refinement-free unit embeddings, tokens cached), scoring (cosine and
dual-softmax), reranking (top-K of both directions through the cross-encoder) and metrics.
Prints medians over --repeats runs (after one warm-up run that compiles).
"""

import argparse
import importlib.util
import pathlib
import statistics
import tempfile
import time

from tempret_jax import embedding, metrics, rerank, state
from tempret_jax.data import prepare, synthetic

REPO = pathlib.Path(__file__).parent.parent


def demo_config():
    spec = importlib.util.spec_from_file_location("synthetic_config", REPO / "configs/synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("demo")
    config.model.cross_encoder.update(enabled=True, video_tokens="frame")
    return config


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test_videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = demo_config()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        synth = synthetic.SynthConfig(**{**config.synthetic.to_dict(), "num_train_videos": 1,
                                         "num_test_videos": args.test_videos})
        synthetic.generate(root / "synth", synth)
        config.dataset_dir = prepare.prepare(prepare.PrepareConfig(
            annotation_dir=str(root / "synth" / synthetic.ANNOTATION_DIR),
            video_root=str(root / "synth"), output_dir=str(root / "data"),
            num_frames=config.prepare.num_frames, short_side=config.prepare.short_side,
            progress=False))["dataset_dir"]
        setup = state.TrainSetup(config)
        params = setup.init_state().params
        model, mesh = setup.model, setup.mesh
        stages: dict[str, list[float]] = {}
        per_query: dict[int, list[float]] = {}
        for repeat in range(args.repeats + 1):  # the first run compiles
            times = {}
            embedded, times["embedding"] = timed(lambda: embedding.embed_split(
                model, params, mesh, config.dataset_dir, tokens=True,
                **embedding.split_settings(config)))
            sim, times["scoring (cosine)"] = timed(embedded.similarity)
            _, times["scoring (dual-softmax)"] = timed(lambda: embedded.similarity("egovlp"))
            reranker, times["reranking K=10"] = timed(
                lambda: rerank.Reranker.score(model, params, mesh, embedded, sim, 10))
            _, times["metrics"] = timed(lambda: metrics.mir_metrics(sim, embedded.rel))
            _, times["metrics (reranked, 2 directions)"] = timed(lambda: reranker.metrics(1.0))
            for k in (10, 50, 100):
                cands = rerank.top_k(sim, k, "t2v")
                _, seconds = timed(lambda: rerank.itm_scores(model, params, mesh, embedded,
                                                             cands, "t2v"))
                if repeat:
                    per_query.setdefault(k, []).append(seconds / len(cands))
            if repeat:
                for name, seconds in times.items():
                    stages.setdefault(name, []).append(seconds)
        n_clips, n_sentences = sim.shape
        print(f"SynthKitchens test split: {n_clips} clips x {n_sentences} sentences, demo model "
              f"({config.model.vision.width} wide, {config.model.vision.layers} layers, "
              f"{config.data.num_frames} frames, {config.data.resolution} px), "
              f"{len(mesh.devices.flat)} device(s); medians of {args.repeats} runs")
        print(f"{'stage':<36}{'seconds':>10}")
        for name, values in stages.items():
            print(f"{name:<36}{statistics.median(values):10.4f}")
        print(f"total (embedding + cosine + rerank K=10 + reranked metrics)"
              f" {sum(statistics.median(stages[n]) for n in ('embedding', 'scoring (cosine)', 'reranking K=10', 'metrics (reranked, 2 directions)')):.3f} s")
        print(f"\n{'K':>4}{'pairs/query':>13}{'ms/query (T2V)':>16}")
        for k, values in per_query.items():
            print(f"{k:>4}{min(k, n_clips):>13}{1e3 * statistics.median(values):16.2f}")


if __name__ == "__main__":
    main()
