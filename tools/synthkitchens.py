"""Generates SynthKitchens (`tempret_jax.data.synthetic`) in EK-100's formats, or its world in
Ego4D's EgoClip / EgoMCQ and Charades-Ego formats (`tempret_jax.data.synthetic_ego`).

    python tools/synthkitchens.py --out DIR [--format ek100|ego] [--size demo|test|default]
        [--layout mp4|chunked|frames|egovlp|avion] [--chunk-seconds S] [--seed 0]

--format ek100 (default): videos and EK-100 annotations. --size demo / test: the data of
`configs/synthetic.py` (what `make demo` and the tests train on); default: `SynthConfig()`'s
sizes. --layout mp4 (default) | chunked | frames. Then prepare it like EK-100:
    python tools/prepare_ek100.py --annotations DIR/annotations --videos DIR --output OUT

--format ego: DIR/ego4d/egoclip.csv, DIR/ego4d/egomcq.json and the Ego4D videos in
DIR/ego4d/videos (--layout egovlp (default): <video_uid>/<i>.mp4 | avion:
<video_uid>.mp4/<start_sec>.mp4, chunks of --chunk-seconds, 600 by default), and
DIR/charades_ego/ (CharadesEgo_v1_{train,test}_only1st.csv, Charades_v1_classes.txt,
videos/<id>.mp4). --size demo / default: `EgoConfig()`'s sizes; test: `synthetic_ego.TEST_SIZES`.
"""

import argparse
import dataclasses
import importlib.util
import pathlib
import sys
import time

from tempret_jax.data import synthetic, synthetic_ego

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "synthetic.py"
LAYOUTS = {"ek100": ("mp4", "chunked", "frames"), "ego": tuple(synthetic_ego.CHUNK_LAYOUTS)}


def sizes(size: str) -> dict:
    """The SynthConfig fields of a size: configs/synthetic.py's ``synthetic`` block, or none."""
    if size == "default":
        return {}
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(size).synthetic.to_dict()


def ek100(out: pathlib.Path, size: str, options: dict):
    """Writes SynthKitchens in EK-100's formats; returns (its SynthConfig, a summary)."""
    config = synthetic.SynthConfig(**{**sizes(size), **options})
    annotations = synthetic.generate(out, config)
    videos = config.num_train_videos + config.num_test_videos
    return config, (f"SynthKitchens ({size}, {config.layout}): {videos} videos x "
                    f"{config.clips_per_video} clips; annotations in {annotations}")


def ego(out: pathlib.Path, size: str, options: dict):
    """Writes EgoClip, EgoMCQ and Charades-Ego; returns (their EgoConfig, a summary)."""
    config = synthetic_ego.EgoConfig(**{**(synthetic_ego.TEST_SIZES if size == "test" else {}),
                                        **options})
    files = synthetic_ego.generate(out, config)
    return config, (f"SynthKitchens as EgoClip, EgoMCQ and Charades-Ego ({size}, {config.layout}): "
                    + ", ".join(str(getattr(files, f.name)) for f in dataclasses.fields(files)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--format", default="ek100", choices=tuple(LAYOUTS))
    p.add_argument("--size", default="demo", choices=("demo", "test", "default"))
    p.add_argument("--layout", choices=sum(LAYOUTS.values(), ()),
                   help="ek100: mp4 (default), chunked, frames; ego: egovlp (default), avion")
    p.add_argument("--chunk-seconds", type=int, help="length of a video chunk (chunked layouts)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = pathlib.Path(a.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: --out {out}: expected a new or empty folder", file=sys.stderr)
        return 2
    if a.layout is not None and a.layout not in LAYOUTS[a.format]:
        print(f"error: --layout {a.layout}: expected one of {LAYOUTS[a.format]} for --format "
              f"{a.format}", file=sys.stderr)
        return 2
    options = {"seed": a.seed, "layout": a.layout or LAYOUTS[a.format][0]}
    if a.chunk_seconds is not None:
        options["chunk_seconds"] = a.chunk_seconds
    start = time.perf_counter()
    config, summary = (ek100 if a.format == "ek100" else ego)(out, a.size, options)
    print(f"{summary} (in {time.perf_counter() - start:.1f} s)")
    print("fields: " + ", ".join(f"{f.name}={getattr(config, f.name)}"
                                 for f in dataclasses.fields(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
